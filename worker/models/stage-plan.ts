// What a pipeline stage needs from a checkpoint: the Hugging Face tensors of its layer range
// in the order the worker fetches and binds them (embeddings, then layer by layer, then the
// final norm and LM head), and the native StageSpec that describes it. The expected shape of
// every tensor follows from config.json alone, which is how inspection catches a checkpoint
// that does not match its config. Pure functions over plain data.
import type { BackendName, StageSpec } from '../native/addon-types.js';
import { ModelFormatError } from './errors.js';
import type { ModelConfig } from './model-config.js';
import type { TensorInfo } from './safetensors.js';

/** Which part of the model a stage holds: layers [layerStart, layerEnd). */
export interface StageRangeSpec {
  layerStart: number;
  layerEnd: number;
  /** Stage 0: binds model.embed_tokens.weight. */
  hasEmbeddings: boolean;
  /** Last stage: binds model.norm.weight and lm_head.weight (embed_tokens when tied). */
  hasHead: boolean;
}

export const EMBED_TOKENS = 'model.embed_tokens.weight';
export const FINAL_NORM = 'model.norm.weight';
export const LM_HEAD = 'lm_head.weight';

export function wholeModelRange(config: ModelConfig): StageRangeSpec {
  return { layerStart: 0, layerEnd: config.numLayers, hasEmbeddings: true, hasHead: true };
}

/** Tensors of layer i with their shapes, in binding order. */
export function layerTensorShapes(config: ModelConfig, i: number): [string, number[]][] {
  const h = config.hiddenSize;
  const q = config.numAttentionHeads * config.headDim;
  const kv = config.numKeyValueHeads * config.headDim;
  const f = config.intermediateSize;
  const p = `model.layers.${i}.`;
  const out: [string, number[]][] = [
    [`${p}input_layernorm.weight`, [h]],
    [`${p}self_attn.q_proj.weight`, [q, h]],
    [`${p}self_attn.k_proj.weight`, [kv, h]],
    [`${p}self_attn.v_proj.weight`, [kv, h]],
  ];
  if (config.attentionBias) {
    out.push([`${p}self_attn.q_proj.bias`, [q]], [`${p}self_attn.k_proj.bias`, [kv]], [`${p}self_attn.v_proj.bias`, [kv]]);
  }
  out.push(
    [`${p}self_attn.o_proj.weight`, [h, q]],
    [`${p}post_attention_layernorm.weight`, [h]],
    [`${p}mlp.gate_proj.weight`, [f, h]],
    [`${p}mlp.up_proj.weight`, [f, h]],
    [`${p}mlp.down_proj.weight`, [h, f]],
  );
  return out;
}

/**
 * Every tensor the config implies, with its shape, in binding order: embeddings, layers,
 * final norm, LM head (absent when the embeddings are tied).
 */
export function expectedTensorNames(config: ModelConfig): Map<string, number[]> {
  const out = new Map<string, number[]>();
  out.set(EMBED_TOKENS, [config.vocabSize, config.hiddenSize]);
  for (let i = 0; i < config.numLayers; i++) {
    for (const [name, shape] of layerTensorShapes(config, i)) out.set(name, shape);
  }
  out.set(FINAL_NORM, [config.hiddenSize]);
  if (!config.tieWordEmbeddings) out.set(LM_HEAD, [config.vocabSize, config.hiddenSize]);
  return out;
}

function checkRange(config: ModelConfig, range: StageRangeSpec): void {
  const { layerStart, layerEnd } = range;
  if (!Number.isSafeInteger(layerStart) || !Number.isSafeInteger(layerEnd) || layerStart < 0 || layerEnd < layerStart || layerEnd > config.numLayers) {
    throw new RangeError(`stage layers [${layerStart}, ${layerEnd}) are not a range of the model's ${config.numLayers} layers`);
  }
  if (layerStart === layerEnd && !range.hasEmbeddings && !range.hasHead) {
    throw new RangeError('a stage must hold at least one layer, the embeddings or the head');
  }
}

/** Names a stage binds, in order. With tied embeddings a head stage binds embed_tokens, once. */
function stageTensorNames(config: ModelConfig, range: StageRangeSpec): string[] {
  const names: string[] = [];
  if (range.hasEmbeddings) names.push(EMBED_TOKENS);
  for (let i = range.layerStart; i < range.layerEnd; i++) {
    for (const [name] of layerTensorShapes(config, i)) names.push(name);
  }
  if (range.hasHead) {
    names.push(FINAL_NORM);
    if (!config.tieWordEmbeddings) names.push(LM_HEAD);
    else if (!range.hasEmbeddings) names.push(EMBED_TOKENS);
  }
  return names;
}

/**
 * The checkpoint tensors a stage binds, in layer order (the order to fetch them in).
 * Throws RangeError for a range outside the model, ModelFormatError when a tensor is missing.
 */
export function planStageTensors(tensors: Map<string, TensorInfo>, config: ModelConfig, range: StageRangeSpec): TensorInfo[] {
  checkRange(config, range);
  return stageTensorNames(config, range).map((name) => {
    const info = tensors.get(name);
    if (info === undefined) throw new ModelFormatError(`checkpoint has no tensor ${name}`, null, 'invalid');
    return info;
  });
}

/** The native StageSpec of a stage: weights are computed in f32 on CPU, in the model's dtype on CUDA. */
export function stageSpecFor(config: ModelConfig, range: StageRangeSpec, backend: BackendName, device: number, maxContext: number): StageSpec {
  checkRange(config, range);
  if (!Number.isSafeInteger(maxContext) || maxContext <= 0) throw new RangeError(`maxContext must be a positive integer (got ${maxContext})`);
  if (!Number.isSafeInteger(device) || device < 0) throw new RangeError(`device must be a non-negative integer (got ${device})`);
  return {
    backend,
    device,
    vocabSize: config.vocabSize,
    hiddenSize: config.hiddenSize,
    intermediateSize: config.intermediateSize,
    numAttentionHeads: config.numAttentionHeads,
    numKeyValueHeads: config.numKeyValueHeads,
    headDim: config.headDim,
    numLayers: config.numLayers,
    layerStart: range.layerStart,
    layerEnd: range.layerEnd,
    hasEmbeddings: range.hasEmbeddings,
    hasHead: range.hasHead,
    tieWordEmbeddings: config.tieWordEmbeddings,
    attentionBias: config.attentionBias,
    rmsNormEps: config.rmsNormEps,
    ropeTheta: config.ropeTheta,
    rope: config.rope,
    maxContext,
    computeDType: backend === 'cpu' ? 'f32' : config.dtype,
  };
}
