// config.json parsing: the Llama family as Hugging Face writes it (Llama 2, Llama 3 with rope
// scaling, Mistral, Qwen2, transformers 5's rope_parameters), and clear refusals of the rest.
import t from 'tap';
import { parseModelConfig } from '../../worker/models/config.js';

const llama2 = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  vocab_size: 32000,
  hidden_size: 4096,
  intermediate_size: 11008,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  max_position_embeddings: 4096,
  rms_norm_eps: 1e-5,
  rope_scaling: null,
  tie_word_embeddings: false,
  torch_dtype: 'float16',
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
};

const llama3 = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  vocab_size: 128256,
  hidden_size: 2048,
  intermediate_size: 8192,
  num_hidden_layers: 16,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  head_dim: 64,
  max_position_embeddings: 131072,
  rms_norm_eps: 1e-5,
  rope_theta: 500000.0,
  rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
};

const mistral = {
  architectures: ['MistralForCausalLM'],
  model_type: 'mistral',
  vocab_size: 32768,
  hidden_size: 4096,
  intermediate_size: 14336,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  head_dim: 128,
  max_position_embeddings: 32768,
  rms_norm_eps: 1e-5,
  rope_theta: 1000000.0,
  sliding_window: null,
  dtype: 'bfloat16',
  bos_token_id: 1,
  eos_token_id: 2,
};

const qwen2 = {
  architectures: ['Qwen2ForCausalLM'],
  model_type: 'qwen2',
  vocab_size: 151936,
  hidden_size: 896,
  intermediate_size: 4864,
  num_hidden_layers: 24,
  num_attention_heads: 14,
  num_key_value_heads: 2,
  max_position_embeddings: 32768,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  use_sliding_window: false,
  max_window_layers: 21,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  bos_token_id: 151643,
  eos_token_id: 151645,
};

t.test('llama 2', async (t) => {
  t.same(parseModelConfig(llama2), {
    architecture: 'llama',
    vocabSize: 32000,
    hiddenSize: 4096,
    intermediateSize: 11008,
    numLayers: 32,
    numAttentionHeads: 32,
    numKeyValueHeads: 32,
    headDim: 128,
    maxPositionEmbeddings: 4096,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    rope: { kind: 'none' },
    attentionBias: false,
    tieWordEmbeddings: false,
    dtype: 'f16',
    bosTokenId: 1,
    eosTokenIds: [2],
  });
});

t.test('llama 3 with llama3 rope scaling', async (t) => {
  const c = parseModelConfig(llama3);
  t.match(c, { architecture: 'llama', numKeyValueHeads: 8, headDim: 64, ropeTheta: 500000, tieWordEmbeddings: true, dtype: 'bf16', eosTokenIds: [128001, 128008, 128009] });
  t.same(c.rope, { kind: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
  const oldKey = parseModelConfig({ ...llama3, rope_scaling: { ...llama3.rope_scaling, rope_type: undefined, type: 'llama3' } });
  t.equal(oldKey.rope.kind, 'llama3', '"type" is the older name of rope_type');
  t.same(parseModelConfig({ ...llama2, rope_scaling: { type: 'linear', factor: 2 } }).rope, { kind: 'linear', factor: 2 });
});

t.test('transformers 5 rope_parameters', async (t) => {
  const { rope_theta: _theta, rope_scaling: _scaling, ...rest } = llama3;
  const c = parseModelConfig({ ...rest, rope_parameters: { rope_type: 'llama3', rope_theta: 500000, factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 } });
  t.equal(c.ropeTheta, 500000);
  t.same(c.rope, { kind: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
  const plain = parseModelConfig({ ...llama2, rope_parameters: { rope_type: 'default', rope_theta: 250000 } });
  t.same([plain.ropeTheta, plain.rope], [250000, { kind: 'none' }]);
});

t.test('mistral and qwen2', async (t) => {
  t.match(parseModelConfig(mistral), { architecture: 'mistral', headDim: 128, numKeyValueHeads: 8, dtype: 'bf16', attentionBias: false, tieWordEmbeddings: false });
  t.match(parseModelConfig({ ...mistral, sliding_window: 32768 }), { architecture: 'mistral' }, 'window covering the context is fine');
  t.match(parseModelConfig(qwen2), { architecture: 'qwen2', headDim: 64, attentionBias: true, tieWordEmbeddings: true, ropeTheta: 1e6, eosTokenIds: [151645] });
  t.match(parseModelConfig({ ...qwen2, architectures: null }), { architecture: 'qwen2' }, 'architectures null: model_type decides');
  const { architectures: _a, ...noArch } = mistral;
  t.match(parseModelConfig(noArch), { architecture: 'mistral' }, 'model_type alone');
});

const invalid: [string, Record<string, unknown>, RegExp][] = [
  ['unsupported architecture', { ...llama2, architectures: ['GPT2LMHeadModel'] }, /^config\.json: unsupported architecture GPT2LMHeadModel \(supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM\)$/],
  ['unknown model_type', { ...llama2, architectures: undefined, model_type: 'gpt2' }, /unsupported model_type "gpt2"/],
  ['sliding window', { ...mistral, sliding_window: 4096 }, /sliding_window 4096 < max_position_embeddings 32768: sliding-window attention is not supported yet/],
  ['qwen2 sliding window on', { ...qwen2, use_sliding_window: true, sliding_window: 4096 }, /sliding_window 4096/],
  ['zero layers', { ...llama2, num_hidden_layers: 0 }, /num_hidden_layers must be a positive integer \(got 0\)/],
  ['fractional hidden', { ...llama2, hidden_size: 4096.5 }, /hidden_size must be a positive integer \(got 4096\.5\)/],
  ['string vocab', { ...llama2, vocab_size: '32000' }, /vocab_size must be a positive integer \(got "32000"\)/],
  ['missing intermediate', { ...llama2, intermediate_size: undefined }, /intermediate_size must be a positive integer/],
  ['heads vs kv heads', { ...llama2, num_key_value_heads: 5 }, /num_attention_heads 32 is not a multiple of num_key_value_heads 5/],
  ['hidden vs heads', { ...llama2, hidden_size: 4100 }, /hidden_size 4100 is not a multiple of num_attention_heads 32 \(and no head_dim\)/],
  ['odd head_dim', { ...llama2, head_dim: 65 }, /head dimension 65 must be even/],
  ['negative eps', { ...llama2, rms_norm_eps: -1 }, /rms_norm_eps must be a positive number/],
  ['eos type', { ...llama2, eos_token_id: 'x' }, /eos_token_id must be a non-negative integer or a list of them/],
  ['eos past vocab', { ...llama2, eos_token_id: [2, 32000] }, /token id 32000 .* is not below vocab_size 32000/],
  ['dtype', { ...llama2, torch_dtype: 'int8' }, /torch_dtype "int8" is not supported/],
  ['dtype disagreement', { ...llama2, torch_dtype: 'float16', dtype: 'bfloat16' }, /disagree/],
  ['rope type', { ...llama3, rope_scaling: { rope_type: 'yarn', factor: 4 } }, /rope type "yarn" in rope_scaling is not supported/],
  ['llama3 rope field', { ...llama3, rope_scaling: { rope_type: 'llama3', factor: 8 } }, /rope_scaling\.low_freq_factor must be a positive number/],
  ['activation', { ...llama2, hidden_act: 'gelu' }, /hidden_act "gelu" is not supported/],
  ['llama attention bias', { ...llama2, attention_bias: true }, /attention_bias true is not supported/],
  ['not an object', [] as unknown as Record<string, unknown>, /must be a JSON object/],
];

t.test('refusals', async (t) => {
  for (const [what, json, message] of invalid) {
    t.throws(() => parseModelConfig(json), { name: 'ModelFormatError', file: 'config.json', message }, what);
  }
  t.throws(() => parseModelConfig({ ...llama2, architectures: ['GPT2LMHeadModel'] }), { code: 'unsupported' });
  t.throws(() => parseModelConfig({ ...llama2, num_hidden_layers: -2 }), { code: 'invalid' });
});

t.test('defaults', async (t) => {
  const { torch_dtype: _d, rms_norm_eps: _e, eos_token_id: _eos, bos_token_id: _bos, ...bare } = llama2;
  t.match(parseModelConfig(bare), { dtype: 'f32', rmsNormEps: 1e-6, ropeTheta: 10000, eosTokenIds: [], bosTokenId: null });
});
