// make-model: writes seeded random-weight checkpoints of real architectures and sizes, as a
// Hugging Face directory (config.json, safetensors, tokenizer files). Cold start and
// swapping depend on bytes and shapes, not on what the weights learned, so tests use tiny
// presets and benchmarks the 1B–13B shapes. The same preset, seed and dtype always give the
// same bytes. Weights are generated and written block by block — a 13B model never sits in
// memory — straight into f16/bf16 bit patterns from a lookup table.
import { type FileHandle, mkdir, open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type RandomGenerator, xoroshiro128plus } from 'pure-rand';
import type { DType, RopeScaling } from '../native/addon-types.js';
import { parseModelConfig } from './config.js';
import { toBFloat16Bits, toFloat16Bits } from './half.js';
import type { Architecture, ModelConfig } from './model-config.js';
import { CHECKPOINT_INDEX_FILE, DTYPE_BYTES, SAFETENSORS_DTYPE_NAMES, SINGLE_CHECKPOINT_FILE } from './safetensors.js';
import { expectedTensorNames } from './stage-plan.js';
import { BOS_TOKEN, buildSyntheticTokenizer, END_OF_TEXT_TOKEN, EOT_TOKEN } from './synthetic-tokenizer.js';

/** The shape of a synthetic model; becomes its config.json. */
export interface SyntheticPreset {
  description: string;
  architecture: Architecture;
  numLayers: number;
  hiddenSize: number;
  intermediateSize: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  vocabSize: number;
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
  rope: RopeScaling;
  tieWordEmbeddings: boolean;
  /** dtype when the caller names none: bf16 for Llama 3-style models, f16 for Llama 2-style. */
  defaultDType: DType;
}

const LLAMA3_ROPE: RopeScaling = { kind: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 };
const LLAMA32_ROPE: RopeScaling = { kind: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 };

const TINY = { numLayers: 2, hiddenSize: 64, intermediateSize: 128, numAttentionHeads: 4, vocabSize: 512 } as const;

export const MODEL_PRESETS: Record<string, SyntheticPreset> = {
  'tiny-llama2': {
    ...TINY,
    description: 'Llama 2 layout, 2 layers, hidden 64 (tests)',
    architecture: 'llama',
    numKeyValueHeads: 4,
    maxPositionEmbeddings: 4096,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    rope: { kind: 'none' },
    tieWordEmbeddings: false,
    defaultDType: 'f16',
  },
  'tiny-llama3': {
    ...TINY,
    description: 'Llama 3.1 layout (GQA, llama3 rope scaling), 2 layers, hidden 64 (tests)',
    architecture: 'llama',
    numKeyValueHeads: 2,
    maxPositionEmbeddings: 131072,
    rmsNormEps: 1e-5,
    ropeTheta: 500000,
    rope: LLAMA3_ROPE,
    tieWordEmbeddings: false,
    defaultDType: 'bf16',
  },
  'tiny-mistral': {
    ...TINY,
    description: 'Mistral layout (GQA, no sliding window), 2 layers, hidden 64 (tests)',
    architecture: 'mistral',
    numKeyValueHeads: 2,
    maxPositionEmbeddings: 32768,
    rmsNormEps: 1e-5,
    ropeTheta: 1000000,
    rope: { kind: 'none' },
    tieWordEmbeddings: false,
    defaultDType: 'bf16',
  },
  'tiny-qwen2': {
    ...TINY,
    description: 'Qwen2 layout (q/k/v biases, tied embeddings), 2 layers, hidden 64 (tests)',
    architecture: 'qwen2',
    numKeyValueHeads: 2,
    maxPositionEmbeddings: 32768,
    rmsNormEps: 1e-6,
    ropeTheta: 1000000,
    rope: { kind: 'none' },
    tieWordEmbeddings: true,
    defaultDType: 'bf16',
  },
  demo: {
    description: 'Llama 3 layout, 4 layers, hidden 256 — quick on CPU',
    architecture: 'llama',
    numLayers: 4,
    hiddenSize: 256,
    intermediateSize: 768,
    numAttentionHeads: 8,
    numKeyValueHeads: 2,
    vocabSize: 2048,
    maxPositionEmbeddings: 131072,
    rmsNormEps: 1e-5,
    ropeTheta: 500000,
    rope: LLAMA3_ROPE,
    tieWordEmbeddings: false,
    defaultDType: 'bf16',
  },
  'llama-100m': {
    description: 'a ~100M-parameter Llama shape (tied embeddings), for runs with many models per GPU',
    architecture: 'llama',
    numLayers: 12,
    hiddenSize: 768,
    intermediateSize: 2048,
    numAttentionHeads: 12,
    numKeyValueHeads: 4,
    vocabSize: 32000,
    maxPositionEmbeddings: 4096,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    rope: { kind: 'none' },
    tieWordEmbeddings: true,
    defaultDType: 'bf16',
  },
  'llama-1b': {
    description: 'Llama 3.2 1B shape (tied embeddings)',
    architecture: 'llama',
    numLayers: 16,
    hiddenSize: 2048,
    intermediateSize: 8192,
    numAttentionHeads: 32,
    numKeyValueHeads: 8,
    vocabSize: 128256,
    maxPositionEmbeddings: 131072,
    rmsNormEps: 1e-5,
    ropeTheta: 500000,
    rope: LLAMA32_ROPE,
    tieWordEmbeddings: true,
    defaultDType: 'bf16',
  },
  'llama-3b': {
    description: 'Llama 3.2 3B shape (tied embeddings)',
    architecture: 'llama',
    numLayers: 28,
    hiddenSize: 3072,
    intermediateSize: 8192,
    numAttentionHeads: 24,
    numKeyValueHeads: 8,
    vocabSize: 128256,
    maxPositionEmbeddings: 131072,
    rmsNormEps: 1e-5,
    ropeTheta: 500000,
    rope: LLAMA32_ROPE,
    tieWordEmbeddings: true,
    defaultDType: 'bf16',
  },
  'llama-7b': {
    description: 'Llama 2 7B shape',
    architecture: 'llama',
    numLayers: 32,
    hiddenSize: 4096,
    intermediateSize: 11008,
    numAttentionHeads: 32,
    numKeyValueHeads: 32,
    vocabSize: 32000,
    maxPositionEmbeddings: 4096,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    rope: { kind: 'none' },
    tieWordEmbeddings: false,
    defaultDType: 'f16',
  },
  'llama-8b': {
    description: 'Llama 3 8B shape',
    architecture: 'llama',
    numLayers: 32,
    hiddenSize: 4096,
    intermediateSize: 14336,
    numAttentionHeads: 32,
    numKeyValueHeads: 8,
    vocabSize: 128256,
    maxPositionEmbeddings: 8192,
    rmsNormEps: 1e-5,
    ropeTheta: 500000,
    rope: { kind: 'none' },
    tieWordEmbeddings: false,
    defaultDType: 'bf16',
  },
  'llama-13b': {
    description: 'Llama 2 13B shape',
    architecture: 'llama',
    numLayers: 40,
    hiddenSize: 5120,
    intermediateSize: 13824,
    numAttentionHeads: 40,
    numKeyValueHeads: 40,
    vocabSize: 32000,
    maxPositionEmbeddings: 4096,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    rope: { kind: 'none' },
    tieWordEmbeddings: false,
    defaultDType: 'f16',
  },
};

const ARCHITECTURE_CLASSES: Readonly<Record<Architecture, string>> = {
  llama: 'LlamaForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
};

const TORCH_DTYPES: Readonly<Record<DType, string>> = { f32: 'float32', f16: 'float16', bf16: 'bfloat16' };

function ropeScalingJson(rope: RopeScaling): Record<string, unknown> | null {
  switch (rope.kind) {
    case 'none':
      return null;
    case 'linear':
      return { rope_type: 'linear', factor: rope.factor };
    case 'llama3':
      return {
        rope_type: 'llama3',
        factor: rope.factor,
        low_freq_factor: rope.lowFreqFactor,
        high_freq_factor: rope.highFreqFactor,
        original_max_position_embeddings: rope.originalMaxPositionEmbeddings,
      };
  }
}

/**
 * config.json as transformers writes it for the preset's architecture (rope settings in the
 * top-level rope_theta / rope_scaling form, which transformers 4 and 5 both read).
 */
export function presetConfigJson(preset: SyntheticPreset, dtype: DType, bosTokenId: number, eosTokenId: number): Record<string, unknown> {
  const common = {
    architectures: [ARCHITECTURE_CLASSES[preset.architecture]],
    model_type: preset.architecture,
    vocab_size: preset.vocabSize,
    hidden_size: preset.hiddenSize,
    intermediate_size: preset.intermediateSize,
    num_hidden_layers: preset.numLayers,
    num_attention_heads: preset.numAttentionHeads,
    num_key_value_heads: preset.numKeyValueHeads,
    hidden_act: 'silu',
    max_position_embeddings: preset.maxPositionEmbeddings,
    initializer_range: 0.02,
    rms_norm_eps: preset.rmsNormEps,
    use_cache: true,
    tie_word_embeddings: preset.tieWordEmbeddings,
    rope_theta: preset.ropeTheta,
    rope_scaling: ropeScalingJson(preset.rope),
    attention_dropout: 0.0,
    bos_token_id: bosTokenId,
    eos_token_id: eosTokenId,
    pad_token_id: null,
    torch_dtype: TORCH_DTYPES[dtype],
  };
  const headDim = preset.hiddenSize / preset.numAttentionHeads;
  switch (preset.architecture) {
    case 'llama':
      return { ...common, head_dim: headDim, attention_bias: false, mlp_bias: false, pretraining_tp: 1 };
    case 'mistral':
      return { ...common, head_dim: headDim, sliding_window: null };
    case 'qwen2':
      return {
        ...common,
        use_sliding_window: false,
        sliding_window: preset.maxPositionEmbeddings,
        max_window_layers: preset.numLayers,
      };
  }
}

/** How a tensor's values are drawn: normal(mean, std). */
interface Init {
  mean: number;
  std: number;
}

/**
 * Norm weights near 1, biases small, matrices with std 1/sqrt(fan_in) so activations keep
 * their scale through every layer and the logits are neither flat nor saturated.
 */
function initFor(name: string, shape: number[]): Init {
  if (name.endsWith('norm.weight')) return { mean: 1, std: 0.1 };
  if (name.endsWith('.bias')) return { mean: 0, std: 0.02 };
  return { mean: 0, std: 1 / Math.sqrt(shape[1] ?? 1) };
}

/** Acklam's rational approximation of the standard normal quantile function. */
function normalQuantile(p: number): number {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549671010115749, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const poly = (k: number[], x: number): number => k.reduce((acc, v) => acc * x + v, 0);
  const tail = (q: number): number => poly(c, q) / (poly(d, q) * q + 1);
  if (p < 0.02425) return tail(Math.sqrt(-2 * Math.log(p)));
  if (p > 1 - 0.02425) return -tail(Math.sqrt(-2 * Math.log(1 - p)));
  const q = p - 0.5;
  const r = q * q;
  return (poly(a, r) * q) / (poly(b, r) * r + 1);
}

/** 65536 equiprobable normal values, stored in the target dtype: a 16-bit random index picks one. */
function quantileTable(init: Init, dtype: DType): Uint16Array | Float32Array {
  const table = dtype === 'f32' ? new Float32Array(65536) : new Uint16Array(65536);
  const encode = dtype === 'f16' ? toFloat16Bits : dtype === 'bf16' ? toBFloat16Bits : (v: number) => v;
  for (let i = 0; i < 65536; i++) table[i] = encode(init.mean + init.std * normalQuantile((i + 0.5) / 65536));
  return table;
}

/** murmur3's finaliser: spreads every input bit over the output. */
function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h | 0;
}

function hashName(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h | 0;
}

/** Each tensor has its own generator, so its bytes do not depend on file layout or sharding. */
function tensorGenerator(seed: number, name: string): RandomGenerator {
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 2 ** 32) >>> 0;
  const h = hashName(name);
  return xoroshiro128plus.fromState([
    mix32(h ^ lo),
    mix32(h + 0x9e3779b9 + hi),
    mix32(lo + 0x7f4a7c15 ^ Math.imul(h, 3)),
    mix32(hi ^ 0x632be59b ^ mix32(h)) | 1,
  ]);
}

interface PlannedTensor {
  name: string;
  shape: number[];
  elements: number;
}

interface PlannedFile {
  path: string;
  header: Uint8Array;
  tensors: PlannedTensor[];
  size: number;
}

/**
 * A safetensors file as the reference writer lays it out: tensors sorted by name, header
 * with __metadata__ {"format":"pt"}, padded with spaces to a multiple of 8 bytes.
 */
function planSafetensorsFile(path: string, tensors: PlannedTensor[], dtype: DType): PlannedFile {
  const sorted = [...tensors].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let offset = 0;
  for (const t of sorted) {
    const bytes = t.elements * DTYPE_BYTES[dtype];
    header[t.name] = { dtype: SAFETENSORS_DTYPE_NAMES[dtype], shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const text = new TextEncoder().encode(json);
  const bytes = new Uint8Array(8 + text.length);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(text.length), true);
  bytes.set(text, 8);
  return { path, header: bytes, tensors: sorted, size: bytes.length + offset };
}

/** Splits the tensors (in model order) into two shards of about equal bytes. */
function planCheckpoint(config: ModelConfig, dtype: DType, sharded: boolean): PlannedFile[] {
  const tensors = [...expectedTensorNames(config)].map(([name, shape]) => ({ name, shape, elements: shape.reduce((a, b) => a * b, 1) }));
  if (!sharded) return [planSafetensorsFile(SINGLE_CHECKPOINT_FILE, tensors, dtype)];
  const total = tensors.reduce((sum, t) => sum + t.elements, 0);
  const first: PlannedTensor[] = [];
  const second: PlannedTensor[] = [];
  let seen = 0;
  for (const t of tensors) {
    (seen < total / 2 || first.length === 0 ? first : second).push(t);
    seen += t.elements;
  }
  return [
    planSafetensorsFile('model-00001-of-00002.safetensors', first, dtype),
    planSafetensorsFile('model-00002-of-00002.safetensors', second, dtype),
  ];
}

const BLOCK_ELEMENTS = 1 << 20;

/**
 * Writes one file from two alternating buffers: the next block is generated while the
 * previous one is being written, and at most one write is in flight.
 */
class BlockFileWriter {
  private inflight: Promise<unknown> | null = null;
  private which = 0;
  private readonly buffers = [new ArrayBuffer(BLOCK_ELEMENTS * 4), new ArrayBuffer(BLOCK_ELEMENTS * 4)];

  private constructor(private readonly handle: FileHandle) {}

  static async create(path: string): Promise<BlockFileWriter> {
    return new BlockFileWriter(await open(path, 'w'));
  }

  /** A buffer free to fill; valid until the second next call to write(). */
  nextBuffer(): ArrayBuffer {
    const buffer = this.buffers[this.which] ?? new ArrayBuffer(0);
    this.which ^= 1;
    return buffer;
  }

  async write(bytes: Uint8Array): Promise<void> {
    if (this.inflight !== null) await this.inflight;
    this.inflight = this.writeAll(bytes);
  }

  private async writeAll(bytes: Uint8Array): Promise<void> {
    for (let at = 0; at < bytes.length; ) {
      const { bytesWritten } = await this.handle.write(bytes, at, bytes.length - at);
      at += bytesWritten;
    }
  }

  async close(): Promise<void> {
    try {
      if (this.inflight !== null) await this.inflight;
    } finally {
      await this.handle.close();
    }
  }
}

async function writeTensor(
  out: BlockFileWriter,
  tensor: PlannedTensor,
  dtype: DType,
  seed: number,
  tables: Map<string, Uint16Array | Float32Array>,
  onBytes: (n: number) => void,
): Promise<void> {
  const init = initFor(tensor.name, tensor.shape);
  const key = `${init.mean}/${init.std}/${dtype}`;
  let table = tables.get(key);
  if (table === undefined) {
    table = quantileTable(init, dtype);
    tables.set(key, table);
  }
  const rng = tensorGenerator(seed, tensor.name);
  const width = DTYPE_BYTES[dtype];
  for (let done = 0; done < tensor.elements; done += BLOCK_ELEMENTS) {
    const n = Math.min(BLOCK_ELEMENTS, tensor.elements - done);
    const buffer = out.nextBuffer();
    const block = table instanceof Float32Array ? new Float32Array(buffer, 0, n) : new Uint16Array(buffer, 0, n);
    let i = 0;
    for (; i + 1 < n; i += 2) {
      const r = rng.unsafeNext();
      block[i] = table[r & 0xffff] ?? 0;
      block[i + 1] = table[r >>> 16] ?? 0;
    }
    if (i < n) block[i] = table[rng.unsafeNext() & 0xffff] ?? 0;
    await out.write(new Uint8Array(buffer, 0, n * width));
    onBytes(n * width);
  }
}

export interface SyntheticModelOptions {
  dir: string;
  preset: string;
  seed: number;
  /** null: the preset's default dtype. */
  dtype: DType | null;
  /** Two shards and model.safetensors.index.json instead of one model.safetensors. */
  sharded: boolean;
}

/**
 * Writes a synthetic model into dir (created if needed): config.json, generation_config.json,
 * tokenizer.json, tokenizer_config.json and the safetensors weights. onProgress gets the
 * bytes written so far and the total. Returns the files written (paths relative to dir).
 */
export async function writeSyntheticModel(
  opts: SyntheticModelOptions,
  onProgress: ((done: number, total: number) => void) | null,
): Promise<{ files: { path: string; size: number }[] }> {
  const preset = MODEL_PRESETS[opts.preset];
  if (preset === undefined) throw new RangeError(`unknown preset ${opts.preset} (presets: ${Object.keys(MODEL_PRESETS).join(', ')})`);
  if (!Number.isSafeInteger(opts.seed) || opts.seed < 0) throw new RangeError(`seed must be a non-negative integer (got ${opts.seed})`);
  const dtype = opts.dtype ?? preset.defaultDType;

  const tokenizer = buildSyntheticTokenizer(preset.vocabSize, preset.maxPositionEmbeddings, preset.architecture === 'qwen2' ? 'qwen2' : 'byte-level');
  const bos = tokenizer.specialIds[BOS_TOKEN];
  const eot = tokenizer.specialIds[EOT_TOKEN];
  const configJson = presetConfigJson(preset, dtype, bos, eot);
  const config = parseModelConfig(configJson);
  const generationConfig = { bos_token_id: bos, eos_token_id: [tokenizer.specialIds[END_OF_TEXT_TOKEN], eot], do_sample: false };

  const shards = planCheckpoint(config, dtype, opts.sharded);
  const small: [string, string][] = [
    ['config.json', JSON.stringify(configJson, null, 2)],
    ['generation_config.json', JSON.stringify(generationConfig, null, 2)],
    ['tokenizer.json', tokenizer.tokenizerJson],
    ['tokenizer_config.json', tokenizer.tokenizerConfigJson],
  ];
  if (opts.sharded) {
    const weightMap: Record<string, string> = {};
    for (const shard of shards) for (const t of shard.tensors) weightMap[t.name] = shard.path;
    const sortedMap = Object.fromEntries(Object.entries(weightMap).sort(([a], [b]) => (a < b ? -1 : 1)));
    const totalSize = shards.reduce((sum, s) => sum + s.size - s.header.length, 0);
    small.push([CHECKPOINT_INDEX_FILE, JSON.stringify({ metadata: { total_size: totalSize }, weight_map: sortedMap }, null, 2)]);
  }

  const encoded = small.map(([path, text]) => ({ path, bytes: new TextEncoder().encode(text) }));
  const total = encoded.reduce((sum, f) => sum + f.bytes.length, 0) + shards.reduce((sum, s) => sum + s.size, 0);
  let done = 0;
  const progress = (n: number): void => {
    done += n;
    onProgress?.(done, total);
  };

  await mkdir(opts.dir, { recursive: true });
  for (const f of encoded) {
    await writeFile(join(opts.dir, f.path), f.bytes);
    progress(f.bytes.length);
  }
  const tables = new Map<string, Uint16Array | Float32Array>();
  for (const shard of shards) {
    const out = await BlockFileWriter.create(join(opts.dir, shard.path));
    try {
      await out.write(shard.header);
      progress(shard.header.length);
      for (const tensor of shard.tensors) await writeTensor(out, tensor, dtype, opts.seed, tables, progress);
    } finally {
      await out.close();
    }
  }
  return {
    files: [...encoded.map((f) => ({ path: f.path, size: f.bytes.length })), ...shards.map((s) => ({ path: s.path, size: s.size }))],
  };
}
