// The normalised shape of a model, as every part of paraserve sees it: parsed once from a
// Hugging Face config.json (worker/models/config.ts) and passed around as plain data —
// to the native StageSpec, the stage planner, the gateway's context checks.
import type { DType, RopeScaling } from '../native/addon-types.js';

export type Architecture = 'llama' | 'mistral' | 'qwen2';

export interface ModelConfig {
  architecture: Architecture;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
  rope: RopeScaling;
  /** Qwen2: q/k/v projections carry biases. */
  attentionBias: boolean;
  tieWordEmbeddings: boolean;
  /** dtype the checkpoint declares (torch_dtype / dtype); weights may still differ per tensor. */
  dtype: DType;
  bosTokenId: number | null;
  eosTokenIds: number[];
}
