// What a pipeline stage needs from a checkpoint: the Hugging Face tensors of its layer range
// in the order the worker fetches and binds them (embeddings, then layer by layer, then the
// final norm and LM head), and the native StageSpec that describes it. The expected shape of
// every tensor follows from config.json alone, which is how inspection catches a checkpoint
// that does not match its config. Where to cut a model into k stages is decided here too:
// a cold start waits for its slowest stage, so the cuts minimise the largest stage's bytes.
// Pure functions over plain data.
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

/**
 * A checkpoint's bytes as the stage planner balances them: one figure per layer plus what the
 * first and last stages bind besides their layers. Small plain data, so the gateway can keep it
 * per model and plan any degree without the tensor table.
 */
export interface StageByteProfile {
  /** Bytes of each layer's tensors, by layer index. */
  layerBytes: number[];
  /** model.embed_tokens.weight: bound by stage 0, and by the head stage too when tied. */
  embeddingBytes: number;
  /** model.norm.weight plus lm_head.weight (the latter absent when tied): bound by the last stage. */
  headBytes: number;
  /** tie_word_embeddings: a head stage without the embeddings binds them as well. */
  tiedEmbeddings: boolean;
}

function tensorBytes(tensors: Map<string, TensorInfo>, name: string): number {
  const info = tensors.get(name);
  if (info === undefined) throw new ModelFormatError(`checkpoint has no tensor ${name}`, null, 'invalid');
  return info.end - info.begin;
}

/** The byte profile of a checkpoint; ModelFormatError when a tensor the config implies is missing. */
export function stageByteProfile(tensors: Map<string, TensorInfo>, config: ModelConfig): StageByteProfile {
  const layerBytes: number[] = [];
  for (let i = 0; i < config.numLayers; i++) {
    layerBytes.push(layerTensorShapes(config, i).reduce((sum, [name]) => sum + tensorBytes(tensors, name), 0));
  }
  return {
    layerBytes,
    embeddingBytes: tensorBytes(tensors, EMBED_TOKENS),
    headBytes: tensorBytes(tensors, FINAL_NORM) + (config.tieWordEmbeddings ? 0 : tensorBytes(tensors, LM_HEAD)),
    tiedEmbeddings: config.tieWordEmbeddings,
  };
}

/** Bytes a range binds, by the same rule as planStageTensors (tied embeddings counted where bound). */
export function profileStageBytes(profile: StageByteProfile, range: StageRangeSpec): number {
  let sum = 0;
  for (let i = range.layerStart; i < range.layerEnd; i++) sum += profile.layerBytes[i] ?? 0;
  if (range.hasEmbeddings) sum += profile.embeddingBytes;
  if (range.hasHead) {
    sum += profile.headBytes;
    if (profile.tiedEmbeddings && !range.hasEmbeddings) sum += profile.embeddingBytes;
  }
  return sum;
}

/**
 * Bytes of `stage` (as profileStageBytes counts them) that host copies of other stages of the
 * same model hold: layers inside a held range, the embeddings where a held stage has them (or
 * a tied head), the head where a held stage has it. A worker loading the stage copies those
 * instead of fetching them (worker/daemon/local-copies.ts).
 */
export function heldStageBytes(profile: StageByteProfile, stage: StageRangeSpec, held: readonly StageRangeSpec[]): number {
  if (held.length === 0) return 0;
  let sum = 0;
  for (let i = stage.layerStart; i < stage.layerEnd; i++) {
    if (held.some((h) => h.layerStart <= i && i < h.layerEnd)) sum += profile.layerBytes[i] ?? 0;
  }
  const needsEmbeddings = stage.hasEmbeddings || (stage.hasHead && profile.tiedEmbeddings);
  if (needsEmbeddings && held.some((h) => h.hasEmbeddings || (h.hasHead && profile.tiedEmbeddings))) sum += profile.embeddingBytes;
  if (stage.hasHead && held.some((h) => h.hasHead)) sum += profile.headBytes;
  return sum;
}

/** Bytes of the tensors a stage binds (what it fetches and places on its device). */
export function stageBytes(tensors: Map<string, TensorInfo>, config: ModelConfig, range: StageRangeSpec): number {
  return planStageTensors(tensors, config, range).reduce((sum, info) => sum + info.end - info.begin, 0);
}

/**
 * k contiguous ranges of at least one layer each, stage 0 with the embeddings and the last with
 * the head, whose largest stage in bytes is as small as any split allows. Among such splits
 * the most even one (least sum of squared stage sizes) is returned, the earliest cut on a tie.
 * Exact dynamic programming over cut points: O(k·L²), a few million steps at most for real
 * models. RangeError unless 1 ≤ k ≤ the number of layers.
 */
export function balanceStages(profile: StageByteProfile, k: number): StageRangeSpec[] {
  const L = profile.layerBytes.length;
  if (!Number.isSafeInteger(k) || k < 1 || k > L) {
    throw new RangeError(`pipeline degree must be an integer from 1 to the model's ${L} layers (got ${k})`);
  }
  const rangeOf = (a: number, b: number): StageRangeSpec => ({ layerStart: a, layerEnd: b, hasEmbeddings: a === 0, hasHead: b === L });
  const cost = (a: number, b: number): number => profileStageBytes(profile, rangeOf(a, b));

  // worst[j][b]: least possible largest stage when j stages cover layers [0, b).
  const worst: number[][] = [Array.from({ length: L + 1 }, (_, b) => (b === 0 ? 0 : Infinity))];
  for (let j = 1; j <= k; j++) {
    const prev = worst[j - 1] ?? [];
    const row = new Array<number>(L + 1).fill(Infinity);
    for (let b = j; b <= L; b++) {
      for (let a = j - 1; a < b; a++) row[b] = Math.min(row[b] ?? Infinity, Math.max(prev[a] ?? Infinity, cost(a, b)));
    }
    worst.push(row);
  }
  const cap = worst[k]?.[L] ?? Infinity;

  // Among splits whose stages all fit under `cap`, the least sum of squared stage shares.
  const total = Math.max(1, cost(0, L));
  const spread: number[][] = [Array.from({ length: L + 1 }, (_, b) => (b === 0 ? 0 : Infinity))];
  const cutAt: number[][] = [[]];
  for (let j = 1; j <= k; j++) {
    const prev = spread[j - 1] ?? [];
    const row = new Array<number>(L + 1).fill(Infinity);
    const cuts = new Array<number>(L + 1).fill(-1);
    for (let b = j; b <= L; b++) {
      for (let a = j - 1; a < b; a++) {
        const c = cost(a, b);
        if (c > cap) continue;
        const value = (prev[a] ?? Infinity) + (c / total) ** 2;
        if (value < (row[b] ?? Infinity)) {
          row[b] = value;
          cuts[b] = a;
        }
      }
    }
    spread.push(row);
    cutAt.push(cuts);
  }

  const ranges: StageRangeSpec[] = [];
  let end = L;
  for (let j = k; j >= 1; j--) {
    const start = cutAt[j]?.[end] ?? -1;
    ranges.push(rangeOf(start, end));
    end = start;
  }
  return ranges.reverse();
}

/**
 * k contiguous layer ranges of a checkpoint balanced by bytes (see balanceStages): what a
 * k-stage cold start fetches on each of its servers. k = 1 is wholeModelRange(config).
 */
export function planStages(tensors: Map<string, TensorInfo>, config: ModelConfig, k: number): StageRangeSpec[] {
  return balanceStages(stageByteProfile(tensors, config), k);
}
