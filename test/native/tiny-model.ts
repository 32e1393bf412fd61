// Test helper (no tests of its own): a tiny seeded random-weight Llama-family model, built
// in memory, and the code to load a layer range of it into a native stage through a host
// buffer, the way the worker does with a checkpoint. Weight values are small multiples of
// powers of two, exactly representable in f32, f16 and bf16, so the same Float32Array
// values feed the reference forward whatever dtype the stage is loaded from.
import type { ModelConfig } from '../../worker/models/model-config.js';
import { stageSpecFor, wholeModelRange, type StageRangeSpec as StageRange } from '../../worker/models/stage-plan.js';
import type { DType, NativeAddon, StageHandle, StageSpec, TensorBinding } from '../../worker/native/addon-types.js';

/** The shape fields of a ModelConfig; the rest does not matter to the native stage. */
export type TinyConfig = Omit<ModelConfig, 'architecture' | 'maxPositionEmbeddings' | 'dtype' | 'bosTokenId' | 'eosTokenIds'>;

export interface TinyTensor {
  shape: number[];
  values: Float32Array;
}

export interface TinyModel {
  config: TinyConfig;
  /** Every tensor of the checkpoint by Hugging Face name (no lm_head.weight when tied). */
  tensors: Map<string, TinyTensor>;
}

/** Llama-3-like: grouped-query attention, llama3 rope scaling, separate head. */
export const GQA_LLAMA3: TinyConfig = {
  vocabSize: 64,
  hiddenSize: 32,
  intermediateSize: 48,
  numLayers: 2,
  numAttentionHeads: 4,
  numKeyValueHeads: 2,
  headDim: 8,
  rmsNormEps: 1e-5,
  ropeTheta: 500000,
  // originalMaxPositionEmbeddings 256 puts the 4 frequencies (wavelengths 6, 167, 4443, 118k)
  // in all three llama3 bands: kept, interpolated, divided by factor.
  rope: { kind: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 256 },
  attentionBias: false,
  tieWordEmbeddings: false,
};

/** Qwen2-like: q/k/v biases, tied embeddings, linear rope scaling, headDim != hidden/heads. */
export const BIAS_TIED_LINEAR: TinyConfig = {
  vocabSize: 48,
  hiddenSize: 24,
  intermediateSize: 40,
  numLayers: 2,
  numAttentionHeads: 2,
  numKeyValueHeads: 2,
  headDim: 16,
  rmsNormEps: 1e-6,
  ropeTheta: 10000,
  rope: { kind: 'linear', factor: 2 },
  attentionBias: true,
  tieWordEmbeddings: true,
};

/** Large enough that the native matmuls and attention take their multi-threaded paths; plain rope. */
export const MEDIUM_GQA: TinyConfig = {
  vocabSize: 256,
  hiddenSize: 128,
  intermediateSize: 320,
  numLayers: 2,
  numAttentionHeads: 8,
  numKeyValueHeads: 2,
  headDim: 16,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  rope: { kind: 'none' },
  attentionBias: false,
  tieWordEmbeddings: false,
};

/** Deterministic 32-bit generator (mulberry32); tests need reproducible weights, not quality. */
export function makeRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomInt(random: () => number, min: number, max: number): number {
  return min + Math.floor(random() * (max - min + 1));
}

function fill(shape: number[], value: () => number): TinyTensor {
  const values = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < values.length; i++) values[i] = value();
  return { shape, values };
}

export function makeTinyModel(config: TinyConfig, seed: number): TinyModel {
  const random = makeRandom(seed);
  const weight = (): number => randomInt(random, -64, 64) / 256;
  const norm = (): number => 1 + randomInt(random, -16, 16) / 128;
  const h = config.hiddenSize;
  const q = config.numAttentionHeads * config.headDim;
  const kv = config.numKeyValueHeads * config.headDim;
  const inter = config.intermediateSize;
  const tensors = new Map<string, TinyTensor>();
  tensors.set('model.embed_tokens.weight', fill([config.vocabSize, h], () => randomInt(random, -64, 64) / 64));
  for (let layer = 0; layer < config.numLayers; layer++) {
    const p = `model.layers.${layer}.`;
    tensors.set(`${p}input_layernorm.weight`, fill([h], norm));
    tensors.set(`${p}self_attn.q_proj.weight`, fill([q, h], weight));
    tensors.set(`${p}self_attn.k_proj.weight`, fill([kv, h], weight));
    tensors.set(`${p}self_attn.v_proj.weight`, fill([kv, h], weight));
    if (config.attentionBias) {
      tensors.set(`${p}self_attn.q_proj.bias`, fill([q], weight));
      tensors.set(`${p}self_attn.k_proj.bias`, fill([kv], weight));
      tensors.set(`${p}self_attn.v_proj.bias`, fill([kv], weight));
    }
    tensors.set(`${p}self_attn.o_proj.weight`, fill([h, q], weight));
    tensors.set(`${p}post_attention_layernorm.weight`, fill([h], norm));
    tensors.set(`${p}mlp.gate_proj.weight`, fill([inter, h], weight));
    tensors.set(`${p}mlp.up_proj.weight`, fill([inter, h], weight));
    tensors.set(`${p}mlp.down_proj.weight`, fill([h, inter], weight));
  }
  tensors.set('model.norm.weight', fill([h], norm));
  if (!config.tieWordEmbeddings) tensors.set('lm_head.weight', fill([config.vocabSize, h], weight));
  return { config, tensors };
}

function asModelConfig(config: TinyConfig, maxContext: number): ModelConfig {
  return { ...config, architecture: 'llama', maxPositionEmbeddings: maxContext, dtype: 'f32', bosTokenId: null, eosTokenIds: [] };
}

export function wholeRange(config: TinyConfig): StageRange {
  return wholeModelRange(asModelConfig(config, 1));
}

export function stageSpecOf(config: TinyConfig, range: StageRange, maxContext: number): StageSpec {
  return stageSpecFor(asModelConfig(config, maxContext), range, 'cpu', 0, maxContext);
}

export function stageTensorNames(model: TinyModel, range: StageRange): string[] {
  const tied = model.config.tieWordEmbeddings;
  return [...model.tensors.keys()].filter((name) => {
    const layer = /^model\.layers\.(\d+)\./.exec(name);
    if (layer !== null) {
      const index = Number(layer[1]);
      return index >= range.layerStart && index < range.layerEnd;
    }
    if (name === 'model.embed_tokens.weight') return range.hasEmbeddings || (range.hasHead && tied);
    return range.hasHead;
  });
}

const scratch = new DataView(new ArrayBuffer(4));

function float32Bits(value: number): number {
  scratch.setFloat32(0, value, true);
  return scratch.getUint32(0, true);
}

/** IEEE half bits of a value that f16 holds exactly (the helper only makes such values). */
export function halfBits(value: number): number {
  const bits = float32Bits(value);
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  const mantissa = bits & 0x7fffff;
  if (exponent === 0 && mantissa === 0) return sign;
  const halfExponent = exponent - 127 + 15;
  if (halfExponent <= 0 || halfExponent >= 31 || (mantissa & 0x1fff) !== 0) {
    throw new Error(`${value} is not exactly representable as a normal f16`);
  }
  return sign | (halfExponent << 10) | (mantissa >>> 13);
}

export function bfloat16Bits(value: number): number {
  const bits = float32Bits(value);
  if ((bits & 0xffff) !== 0) throw new Error(`${value} is not exactly representable as bf16`);
  return bits >>> 16;
}

export function encodeTensor(values: Float32Array, dtype: DType): Uint8Array {
  if (dtype === 'f32') return new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength));
  const out = new Uint8Array(values.length * 2);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) {
    view.setUint16(i * 2, dtype === 'f16' ? halfBits(values[i] ?? 0) : bfloat16Bits(values[i] ?? 0), true);
  }
  return out;
}

/**
 * Creates a stage for range and binds its tensors from one host buffer (at deliberately
 * unaligned offsets), then frees the buffer: stages copy what they bind.
 */
export function loadStage(
  addon: NativeAddon,
  model: TinyModel,
  range: StageRange,
  dtype: DType,
  maxContext: number,
): StageHandle {
  const stage = addon.createStage(stageSpecOf(model.config, range, maxContext));
  const encoded = stageTensorNames(model, range).map((name) => {
    const tensor = model.tensors.get(name);
    if (tensor === undefined) throw new Error(`no tensor ${name}`);
    return { name, shape: tensor.shape, bytes: encodeTensor(tensor.values, dtype) };
  });
  const total = encoded.reduce((sum, t) => sum + t.bytes.length + 3, 0);
  const buffer = addon.allocHostBuffer(total, true);
  try {
    let offset = 0;
    const bindings: TensorBinding[] = [];
    for (const t of encoded) {
      offset += 3;
      addon.writeHostBuffer(buffer, offset, t.bytes);
      bindings.push({ name: t.name, dtype, shape: t.shape, buffer, offset });
      offset += t.bytes.length;
    }
    for (const binding of bindings) addon.bindTensor(stage, binding);
  } finally {
    addon.freeHostBuffer(buffer);
  }
  return stage;
}
