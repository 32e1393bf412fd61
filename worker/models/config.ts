// Turns a Hugging Face config.json into the normalised ModelConfig, and refuses — with a
// message that says which field and why — every config the native stages cannot run
// faithfully: other architectures, rope types other than default/linear/llama3, sliding-window
// attention, biases beyond Qwen2's q/k/v. Pure: no I/O, so every case is a table test.
import type { DType, RopeScaling } from '../native/addon-types.js';
import { ModelFormatError } from './errors.js';
import type { Architecture, ModelConfig } from './model-config.js';

const FILE = 'config.json';

/** Architecture class names (config.json "architectures") and their model_type. */
export const SUPPORTED_ARCHITECTURES: Readonly<Record<string, Architecture>> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
};

const MODEL_TYPES: ReadonlySet<string> = new Set(Object.values(SUPPORTED_ARCHITECTURES));

const DTYPES: Readonly<Record<string, DType>> = { float32: 'f32', float16: 'f16', bfloat16: 'bf16' };

type Json = Record<string, unknown>;

function fail(message: string, code: 'invalid' | 'unsupported' = 'invalid'): never {
  throw new ModelFormatError(`${FILE}: ${message}`, FILE, code);
}

function isRecord(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function absent(value: unknown): boolean {
  return value === undefined || value === null;
}

function positiveInt(json: Json, key: string, fallback: number | null = null): number {
  const value = json[key];
  if (absent(value) && fallback !== null) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    fail(`${key} must be a positive integer (got ${JSON.stringify(value)})`);
  }
  return value;
}

function positiveNumber(json: Json, key: string, fallback: number | null, label: string = key): number {
  const value = json[key];
  if (absent(value) && fallback !== null) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    fail(`${label} must be a positive number (got ${JSON.stringify(value)})`);
  }
  return value;
}

function tokenId(value: unknown, key: string, file: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new ModelFormatError(`${file}: ${key} must be a non-negative integer or a list of them (got ${JSON.stringify(value)})`, file, 'invalid');
  }
  return value;
}

/** bos_token_id / eos_token_id of config.json or generation_config.json: an int, a list of ints, or null. */
export function tokenIds(value: unknown, key: string, file: string = FILE): number[] {
  if (absent(value)) return [];
  if (Array.isArray(value)) return value.map((v) => tokenId(v, key, file));
  return [tokenId(value, key, file)];
}

function architectureOf(json: Json): Architecture {
  const archs = json.architectures;
  if (!absent(archs)) {
    if (!Array.isArray(archs) || archs.length === 0 || typeof archs[0] !== 'string') {
      fail(`architectures must be a non-empty list of class names (got ${JSON.stringify(archs)})`);
    }
    const name = archs[0] as string;
    const arch = SUPPORTED_ARCHITECTURES[name];
    if (arch === undefined) {
      fail(`unsupported architecture ${name} (supported: ${Object.keys(SUPPORTED_ARCHITECTURES).join(', ')})`, 'unsupported');
    }
    return arch;
  }
  const type = json.model_type;
  if (typeof type === 'string' && MODEL_TYPES.has(type)) return type as Architecture;
  fail(
    `unsupported model_type ${JSON.stringify(type)} and no architectures (supported: ${Object.keys(SUPPORTED_ARCHITECTURES).join(', ')})`,
    'unsupported',
  );
}

function dtypeOf(json: Json): DType {
  const names = ['dtype', 'torch_dtype'].filter((k) => !absent(json[k]));
  const found = names.map((k) => {
    const value = json[k];
    const dtype = typeof value === 'string' ? DTYPES[value] : undefined;
    if (dtype === undefined) fail(`${k} ${JSON.stringify(value)} is not supported (supported: ${Object.keys(DTYPES).join(', ')})`, 'unsupported');
    return dtype;
  });
  if (found.length === 2 && found[0] !== found[1]) fail(`dtype ${JSON.stringify(json.dtype)} and torch_dtype ${JSON.stringify(json.torch_dtype)} disagree`);
  return found[0] ?? 'f32';
}

/**
 * Rope settings live in rope_parameters (transformers 5: rope_theta and the scaling together)
 * or in top-level rope_theta plus rope_scaling (earlier configs); "type" is the old name of
 * "rope_type".
 */
function ropeOf(json: Json): { theta: number; rope: RopeScaling } {
  let params: Json | null = null;
  let where = 'rope_scaling';
  if (!absent(json.rope_parameters)) {
    if (!isRecord(json.rope_parameters)) fail('rope_parameters must be an object');
    params = json.rope_parameters;
    where = 'rope_parameters';
  } else if (!absent(json.rope_scaling)) {
    if (!isRecord(json.rope_scaling)) fail('rope_scaling must be an object or null');
    params = json.rope_scaling;
  }
  const theta =
    params !== null && !absent(params.rope_theta)
      ? positiveNumber(params, 'rope_theta', null, `${where}.rope_theta`)
      : positiveNumber(json, 'rope_theta', 10000);
  if (params === null) return { theta, rope: { kind: 'none' } };

  const type = params.rope_type ?? params.type ?? 'default';
  const num = (key: string): number => positiveNumber(params, key, null, `${where}.${key}`);
  switch (type) {
    case 'default':
      return { theta, rope: { kind: 'none' } };
    case 'linear':
      return { theta, rope: { kind: 'linear', factor: num('factor') } };
    case 'llama3': {
      const rope: RopeScaling = {
        kind: 'llama3',
        factor: num('factor'),
        lowFreqFactor: num('low_freq_factor'),
        highFreqFactor: num('high_freq_factor'),
        originalMaxPositionEmbeddings: num('original_max_position_embeddings'),
      };
      if (rope.highFreqFactor <= rope.lowFreqFactor) fail(`${where}.high_freq_factor must exceed low_freq_factor`);
      return { theta, rope };
    }
    default:
      fail(`rope type ${JSON.stringify(type)} in ${where} is not supported (supported: default, linear, llama3)`, 'unsupported');
  }
}

function checkSlidingWindow(json: Json, arch: Architecture, maxPositions: number): void {
  const window = json.sliding_window;
  if (absent(window)) return;
  if (arch === 'qwen2' && json.use_sliding_window !== true) return;
  if (typeof window !== 'number' || !Number.isSafeInteger(window) || window <= 0) {
    fail(`sliding_window must be a positive integer or null (got ${JSON.stringify(window)})`);
  }
  if (window < maxPositions) {
    fail(`sliding_window ${window} < max_position_embeddings ${maxPositions}: sliding-window attention is not supported yet`, 'unsupported');
  }
}

/**
 * Parses a config.json (already JSON-decoded). Throws ModelFormatError (file "config.json").
 * A config without dtype/torch_dtype is taken as float32, as transformers loads it.
 */
export function parseModelConfig(json: unknown): ModelConfig {
  if (!isRecord(json)) fail('must be a JSON object');
  const architecture = architectureOf(json);

  const hiddenSize = positiveInt(json, 'hidden_size');
  const numAttentionHeads = positiveInt(json, 'num_attention_heads');
  const numKeyValueHeads = positiveInt(json, 'num_key_value_heads', numAttentionHeads);
  if (numAttentionHeads % numKeyValueHeads !== 0) {
    fail(`num_attention_heads ${numAttentionHeads} is not a multiple of num_key_value_heads ${numKeyValueHeads}`);
  }
  let headDim: number;
  if (absent(json.head_dim)) {
    if (hiddenSize % numAttentionHeads !== 0) {
      fail(`hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numAttentionHeads} (and no head_dim)`);
    }
    headDim = hiddenSize / numAttentionHeads;
  } else {
    headDim = positiveInt(json, 'head_dim');
  }
  if (headDim % 2 !== 0) fail(`head dimension ${headDim} must be even for rotary embeddings`);

  const maxPositionEmbeddings = positiveInt(json, 'max_position_embeddings');
  checkSlidingWindow(json, architecture, maxPositionEmbeddings);

  const act = json.hidden_act ?? 'silu';
  if (act !== 'silu') fail(`hidden_act ${JSON.stringify(act)} is not supported (supported: silu)`, 'unsupported');
  if (architecture !== 'qwen2' && json.attention_bias === true) fail('attention_bias true is not supported', 'unsupported');
  if (json.mlp_bias === true) fail('mlp_bias true is not supported', 'unsupported');

  const tie = json.tie_word_embeddings ?? false;
  if (typeof tie !== 'boolean') fail(`tie_word_embeddings must be a boolean (got ${JSON.stringify(tie)})`);

  const { theta, rope } = ropeOf(json);
  const vocabSize = positiveInt(json, 'vocab_size');
  const bos = tokenIds(json.bos_token_id, 'bos_token_id');
  if (bos.length > 1) fail(`bos_token_id must be a single id (got ${JSON.stringify(json.bos_token_id)})`);
  const eos = tokenIds(json.eos_token_id, 'eos_token_id');
  for (const id of [...bos, ...eos]) {
    if (id >= vocabSize) fail(`token id ${id} (bos_token_id/eos_token_id) is not below vocab_size ${vocabSize}`);
  }

  return {
    architecture,
    vocabSize,
    hiddenSize,
    intermediateSize: positiveInt(json, 'intermediate_size'),
    numLayers: positiveInt(json, 'num_hidden_layers'),
    numAttentionHeads,
    numKeyValueHeads,
    headDim,
    maxPositionEmbeddings,
    rmsNormEps: positiveNumber(json, 'rms_norm_eps', 1e-6),
    ropeTheta: theta,
    rope,
    attentionBias: architecture === 'qwen2',
    tieWordEmbeddings: tie,
    dtype: dtypeOf(json),
    bosTokenId: bos[0] ?? null,
    eosTokenIds: eos,
  };
}
