// Stage planning: expected tensor shapes per architecture, the tensors of each stage in fetch
// order, splits that cover the model exactly once, and the native StageSpec.
import t from 'tap';
import { parseModelConfig } from '../../worker/models/config.js';
import type { ModelConfig } from '../../worker/models/model-config.js';
import type { TensorInfo } from '../../worker/models/safetensors.js';
import { expectedTensorNames, planStageTensors, stageSpecFor, wholeModelRange } from '../../worker/models/stage-plan.js';
import { MODEL_PRESETS, presetConfigJson } from '../../worker/models/synthetic.js';

function configOf(preset: string): ModelConfig {
  const p = MODEL_PRESETS[preset];
  if (p === undefined) throw new Error(preset);
  return parseModelConfig(presetConfigJson(p, p.defaultDType, 0, 1));
}

function fakeTensors(config: ModelConfig): Map<string, TensorInfo> {
  let at = 0;
  const out = new Map<string, TensorInfo>();
  for (const [name, shape] of expectedTensorNames(config)) {
    const bytes = shape.reduce((a, b) => a * b, 1) * 2;
    out.set(name, { name, dtype: 'bf16', shape, file: 'model.safetensors', begin: at, end: at + bytes });
    at += bytes;
  }
  return out;
}

const params = (c: ModelConfig) => [...expectedTensorNames(c).values()].reduce((s, shape) => s + shape.reduce((a, b) => a * b, 1), 0);

t.test('expected tensors and shapes', async (t) => {
  const llama3 = configOf('tiny-llama3');
  const names = expectedTensorNames(llama3);
  t.equal(names.size, 1 + 2 * 9 + 2);
  t.same(names.get('model.embed_tokens.weight'), [512, 64]);
  t.same(names.get('model.layers.1.self_attn.q_proj.weight'), [64, 64]);
  t.same(names.get('model.layers.1.self_attn.k_proj.weight'), [32, 64], 'GQA: 2 kv heads of 16');
  t.same(names.get('model.layers.0.self_attn.o_proj.weight'), [64, 64]);
  t.same(names.get('model.layers.0.mlp.down_proj.weight'), [64, 128]);
  t.same(names.get('model.layers.0.mlp.gate_proj.weight'), [128, 64]);
  t.same(names.get('lm_head.weight'), [512, 64]);
  t.equal([...names.keys()][0], 'model.embed_tokens.weight');
  t.equal([...names.keys()].at(-1), 'lm_head.weight');

  const qwen = expectedTensorNames(configOf('tiny-qwen2'));
  t.same(qwen.get('model.layers.0.self_attn.k_proj.bias'), [32]);
  t.same(qwen.get('model.layers.0.self_attn.q_proj.bias'), [64]);
  t.notOk(qwen.has('lm_head.weight'), 'tied');
  t.notOk(expectedTensorNames(configOf('tiny-llama2')).has('model.layers.0.self_attn.q_proj.bias'));

  // Real parameter counts of the shapes the benchmark presets copy.
  t.equal(params(configOf('llama-7b')), 6_738_415_616);
  t.equal(params(configOf('llama-13b')), 13_015_864_320);
  t.equal(params(configOf('llama-1b')), 1_235_814_400);
  t.equal(params(configOf('llama-3b')), 3_212_749_824);
  t.equal(params(configOf('llama-8b')), 8_030_261_248);
  t.equal(params(configOf('llama-100m')), 100_092_672);
});

t.test('whole model plan in layer order', async (t) => {
  const config = configOf('tiny-llama2');
  const tensors = fakeTensors(config);
  const plan = planStageTensors(tensors, config, wholeModelRange(config));
  t.same(
    plan.map((i) => i.name),
    [...expectedTensorNames(config).keys()],
  );
  t.same(plan.slice(0, 3).map((i) => i.name), ['model.embed_tokens.weight', 'model.layers.0.input_layernorm.weight', 'model.layers.0.self_attn.q_proj.weight']);
  t.same(plan.slice(-2).map((i) => i.name), ['model.norm.weight', 'lm_head.weight']);
});

t.test('splits cover every tensor once', async (t) => {
  for (const preset of ['tiny-llama3', 'tiny-qwen2', 'llama-7b']) {
    const config = configOf(preset);
    const tensors = fakeTensors(config);
    const L = config.numLayers;
    const cuts = [0, Math.floor(L / 3), Math.floor((2 * L) / 3), L];
    const stages = cuts.slice(1).map((end, i) => ({ layerStart: cuts[i] ?? 0, layerEnd: end, hasEmbeddings: i === 0, hasHead: i === cuts.length - 2 }));
    const plans = stages.map((range) => planStageTensors(tensors, config, range));
    const all = plans.flat().map((i) => i.name);
    const expected = [...expectedTensorNames(config).keys()];
    if (config.tieWordEmbeddings) {
      t.equal(plans.at(-1)?.at(-1)?.name, 'model.embed_tokens.weight', `${preset}: tied head binds the embeddings`);
      t.same(all.slice(0, -1), expected, `${preset}: everything else once, in order`);
    } else {
      t.same(all, expected, `${preset}: each tensor once, in order`);
    }
    t.ok(plans[1]?.every((i) => i.name.startsWith('model.layers.')), `${preset}: middle stage holds only layers`);
    const layersOf = (p: TensorInfo[] | undefined) => new Set((p ?? []).map((i) => /^model\.layers\.(\d+)\./.exec(i.name)?.[1]).filter((x) => x !== undefined).map(Number));
    t.same([...layersOf(plans[1])], Array.from({ length: (cuts[2] ?? 0) - (cuts[1] ?? 0) }, (_, k) => (cuts[1] ?? 0) + k));
  }
  const tied = configOf('tiny-qwen2');
  const single = planStageTensors(fakeTensors(tied), tied, wholeModelRange(tied)).map((i) => i.name);
  t.equal(single.filter((n) => n === 'model.embed_tokens.weight').length, 1, 'one stage with embeddings and tied head binds them once');
});

t.test('bad ranges and missing tensors', async (t) => {
  const config = configOf('tiny-llama2');
  const tensors = fakeTensors(config);
  t.throws(() => planStageTensors(tensors, config, { layerStart: 1, layerEnd: 3, hasEmbeddings: false, hasHead: true }), RangeError);
  t.throws(() => planStageTensors(tensors, config, { layerStart: 2, layerEnd: 1, hasEmbeddings: false, hasHead: false }), RangeError);
  t.throws(() => planStageTensors(tensors, config, { layerStart: 1, layerEnd: 1, hasEmbeddings: false, hasHead: false }), RangeError);
  tensors.delete('model.layers.1.mlp.up_proj.weight');
  t.throws(() => planStageTensors(tensors, config, { layerStart: 1, layerEnd: 2, hasEmbeddings: false, hasHead: true }), { name: 'ModelFormatError', message: /no tensor model\.layers\.1\.mlp\.up_proj\.weight/ });
  t.equal(planStageTensors(tensors, config, { layerStart: 0, layerEnd: 1, hasEmbeddings: true, hasHead: false }).length, 10, 'other stages still plan');
});

t.test('stageSpecFor', async (t) => {
  const config = configOf('tiny-qwen2');
  const range = { layerStart: 1, layerEnd: 2, hasEmbeddings: false, hasHead: true };
  t.same(stageSpecFor(config, range, 'cpu', 0, 256), {
    backend: 'cpu',
    device: 0,
    vocabSize: 512,
    hiddenSize: 64,
    intermediateSize: 128,
    numAttentionHeads: 4,
    numKeyValueHeads: 2,
    headDim: 16,
    numLayers: 2,
    layerStart: 1,
    layerEnd: 2,
    hasEmbeddings: false,
    hasHead: true,
    tieWordEmbeddings: true,
    attentionBias: true,
    rmsNormEps: 1e-6,
    ropeTheta: 1e6,
    rope: { kind: 'none' },
    maxContext: 256,
    computeDType: 'f32',
  });
  t.equal(stageSpecFor(config, range, 'cuda', 1, 256).computeDType, 'bf16');
  t.same(stageSpecFor(configOf('tiny-llama3'), wholeModelRange(configOf('tiny-llama3')), 'cuda', 0, 64).rope, MODEL_PRESETS['tiny-llama3']?.rope);
  t.throws(() => stageSpecFor(config, range, 'cpu', 0, 0), RangeError);
});
