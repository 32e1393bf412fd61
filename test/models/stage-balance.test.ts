// Balanced stage plans: table-driven splits of real and skewed shapes, the byte rule shared
// with planStageTensors (tied embeddings counted where they are bound), and optimality against
// a brute force over every split of small models.
import t from 'tap';
import { parseModelConfig } from '../../worker/models/config.js';
import type { ModelConfig } from '../../worker/models/model-config.js';
import type { TensorInfo } from '../../worker/models/safetensors.js';
import {
  balanceStages,
  expectedTensorNames,
  heldStageBytes,
  planStages,
  profileStageBytes,
  stageByteProfile,
  stageBytes,
  wholeModelRange,
  type StageByteProfile,
  type StageRangeSpec,
} from '../../worker/models/stage-plan.js';
import { MODEL_PRESETS, presetConfigJson } from '../../worker/models/synthetic.js';

function createConfig(preset: string, o: Partial<ModelConfig> = {}): ModelConfig {
  const p = MODEL_PRESETS[preset];
  if (p === undefined) throw new Error(preset);
  return { ...parseModelConfig(presetConfigJson(p, p.defaultDType, 0, 1)), ...o };
}

/** Tensors laid end to end in one file, 2 bytes a parameter. */
function createTensors(config: ModelConfig): Map<string, TensorInfo> {
  let at = 0;
  const out = new Map<string, TensorInfo>();
  for (const [name, shape] of expectedTensorNames(config)) {
    const bytes = shape.reduce((a, b) => a * b, 1) * 2;
    out.set(name, { name, dtype: 'bf16', shape, file: 'model.safetensors', begin: at, end: at + bytes });
    at += bytes;
  }
  return out;
}

function createProfile(o: Partial<StageByteProfile> = {}): StageByteProfile {
  return { layerBytes: [10, 10, 10, 10], embeddingBytes: 0, headBytes: 0, tiedEmbeddings: false, ...o };
}

const sizes = (p: StageByteProfile, ranges: StageRangeSpec[]) => ranges.map((r) => profileStageBytes(p, r));
const bounds = (ranges: StageRangeSpec[]) => ranges.map((r) => [r.layerStart, r.layerEnd]);

/** Every split of L layers into k non-empty contiguous ranges. */
function* allSplits(L: number, k: number, start = 0): Generator<[number, number][]> {
  if (k === 1) {
    yield [[start, L]];
    return;
  }
  for (let end = start + 1; end <= L - (k - 1); end++) {
    for (const rest of allSplits(L, k - 1, end)) yield [[start, end], ...rest];
  }
}

function asRanges(L: number, split: [number, number][]): StageRangeSpec[] {
  return split.map(([a, b]) => ({ layerStart: a, layerEnd: b, hasEmbeddings: a === 0, hasHead: b === L }));
}

interface Row {
  name: string;
  profile: StageByteProfile;
  k: number;
  bounds: number[][];
  sizes: number[];
}

const rows: Row[] = [
  { name: 'uniform layers, k=2: halves', profile: createProfile(), k: 2, bounds: [[0, 2], [2, 4]], sizes: [20, 20] },
  { name: 'uniform layers, k=4: one each', profile: createProfile(), k: 4, bounds: [[0, 1], [1, 2], [2, 3], [3, 4]], sizes: [10, 10, 10, 10] },
  {
    name: 'heavy embeddings: stage 0 gets fewer layers',
    profile: createProfile({ layerBytes: [10, 10, 10, 10, 10, 10], embeddingBytes: 25 }),
    k: 2,
    bounds: [[0, 2], [2, 6]],
    sizes: [45, 40],
  },
  {
    name: 'heavy head: last stage gets fewer layers',
    profile: createProfile({ layerBytes: [10, 10, 10, 10, 10, 10], headBytes: 25 }),
    k: 2,
    bounds: [[0, 4], [4, 6]],
    sizes: [40, 45],
  },
  {
    name: 'tied: embeddings count on both ends',
    profile: createProfile({ layerBytes: [10, 10, 10, 10, 10, 10], embeddingBytes: 20, headBytes: 1, tiedEmbeddings: true }),
    k: 2,
    bounds: [[0, 3], [3, 6]],
    sizes: [50, 51],
  },
  {
    name: 'tied, k=1: embeddings once',
    profile: createProfile({ layerBytes: [10, 10], embeddingBytes: 20, headBytes: 1, tiedEmbeddings: true }),
    k: 1,
    bounds: [[0, 2]],
    sizes: [41],
  },
  {
    name: 'one huge layer: the rest balanced around it',
    profile: createProfile({ layerBytes: [5, 5, 100, 5, 5, 5, 5] }),
    k: 3,
    bounds: [[0, 2], [2, 3], [3, 7]],
    sizes: [10, 100, 20],
  },
  {
    name: 'tie on the largest stage: the most even split wins',
    profile: createProfile({ layerBytes: [1, 1, 1, 1, 1, 1, 100] }),
    k: 3,
    bounds: [[0, 3], [3, 6], [6, 7]],
    sizes: [3, 3, 100],
  },
];

t.test('balanced splits', async (t) => {
  for (const row of rows) {
    const ranges = balanceStages(row.profile, row.k);
    t.same(bounds(ranges), row.bounds, `${row.name}: bounds`);
    t.same(sizes(row.profile, ranges), row.sizes, `${row.name}: bytes`);
    t.same(ranges.map((r) => [r.hasEmbeddings, r.hasHead]), ranges.map((_, i) => [i === 0, i === ranges.length - 1]), `${row.name}: ends`);
  }
});

t.test('planStages on checkpoints: stageBytes agrees, k=1 is the whole model, k=L is one layer each', async (t) => {
  for (const [preset, o] of [
    ['tiny-llama3', {}],
    ['tiny-qwen2', {}],
    ['llama-7b', {}],
    ['tiny-llama2', { numLayers: 7, vocabSize: 8192 }],
    ['tiny-qwen2', { numLayers: 5, vocabSize: 8192 }],
  ] as const) {
    const config = createConfig(preset, o);
    const tensors = createTensors(config);
    const profile = stageByteProfile(tensors, config);
    const L = config.numLayers;
    const label = `${preset} L=${L} vocab=${config.vocabSize}`;
    t.same(planStages(tensors, config, 1), [wholeModelRange(config)], `${label}: k=1`);
    const total = [...tensors.values()].reduce((s, i) => s + i.end - i.begin, 0);
    t.equal(stageBytes(tensors, config, wholeModelRange(config)), total, `${label}: whole model binds every byte once`);
    const perLayer = planStages(tensors, config, L);
    t.same(bounds(perLayer), Array.from({ length: L }, (_, i) => [i, i + 1]), `${label}: k=L`);
    for (const k of new Set([2, 3, Math.min(4, L), L])) {
      if (k > L) continue;
      const ranges = planStages(tensors, config, k);
      t.equal(ranges.length, k);
      t.same(ranges.map((r) => stageBytes(tensors, config, r)), sizes(profile, ranges), `${label} k=${k}: profile bytes equal the tensors bound`);
      const sum = ranges.reduce((s, r) => s + stageBytes(tensors, config, r), 0);
      const tiedExtra = config.tieWordEmbeddings && k > 1 ? profile.embeddingBytes : 0;
      t.equal(sum, total + tiedExtra, `${label} k=${k}: stages cover the model (tied embeddings bound twice)`);
    }
  }
  const heavy = createConfig('tiny-llama2', { numLayers: 8, vocabSize: 8192 });
  t.same(bounds(planStages(createTensors(heavy), heavy, 3)), [[0, 1], [1, 7], [7, 8]], 'embeddings and head each outweigh 12 layers: the end stages keep one layer each');
});

t.test('optimal against brute force', async (t) => {
  let seed = 7;
  const next = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  let cases = 0;
  for (let trial = 0; trial < 60; trial++) {
    const L = 1 + next(7);
    const profile = createProfile({
      layerBytes: Array.from({ length: L }, () => 1 + next(trial % 3 === 0 ? 5 : 100)),
      embeddingBytes: next(150),
      headBytes: next(150),
      tiedEmbeddings: next(2) === 0,
    });
    for (let k = 1; k <= L; k++) {
      const plan = balanceStages(profile, k);
      const planMax = Math.max(...sizes(profile, plan));
      let bestMax = Infinity;
      let bestSpread = Infinity;
      for (const split of allSplits(L, k)) bestMax = Math.min(bestMax, Math.max(...sizes(profile, asRanges(L, split))));
      const total = profileStageBytes(profile, { layerStart: 0, layerEnd: L, hasEmbeddings: true, hasHead: true });
      const spread = (ranges: StageRangeSpec[]) => sizes(profile, ranges).reduce((s, x) => s + (x / total) ** 2, 0);
      for (const split of allSplits(L, k)) {
        const r = asRanges(L, split);
        if (Math.max(...sizes(profile, r)) === bestMax) bestSpread = Math.min(bestSpread, spread(r));
      }
      t.equal(planMax, bestMax, `L=${L} k=${k} ${JSON.stringify(profile)}: largest stage is optimal`);
      t.ok(Math.abs(spread(plan) - bestSpread) < 1e-12, `L=${L} k=${k}: most even among optimal splits`);
      t.ok(plan.every((r) => r.layerEnd > r.layerStart), 'every stage has a layer');
      cases += 1;
    }
  }
  t.ok(cases > 100, `${cases} cases`);
});

t.test('degree out of range', async (t) => {
  const config = createConfig('tiny-llama2');
  const tensors = createTensors(config);
  for (const k of [0, -1, config.numLayers + 1, 1.5, Number.NaN]) {
    t.throws(() => planStages(tensors, config, k), RangeError, `k=${k}`);
    t.throws(() => balanceStages(stageByteProfile(tensors, config), k), RangeError, `k=${k}`);
  }
  tensors.delete('model.layers.1.mlp.up_proj.weight');
  t.throws(() => planStages(tensors, config, 2), { name: 'ModelFormatError', message: /model\.layers\.1\.mlp\.up_proj\.weight/ });
});

t.test('heldStageBytes: the parts of a stage that kept host copies of other stages hold', async (t) => {
  const profile: StageByteProfile = { layerBytes: [1, 2, 4, 8], embeddingBytes: 100, headBytes: 1000, tiedEmbeddings: false };
  const range = (layerStart: number, layerEnd: number, hasEmbeddings: boolean, hasHead: boolean): StageRangeSpec => ({ layerStart, layerEnd, hasEmbeddings, hasHead });
  t.equal(heldStageBytes(profile, range(0, 4, true, true), []), 0, 'nothing held');
  t.equal(heldStageBytes(profile, range(1, 3, false, false), [range(0, 2, true, false)]), 2, 'layer 1 of layers 1-2');
  t.equal(heldStageBytes(profile, range(0, 4, true, true), [range(0, 2, true, false), range(2, 4, false, true)]), profileStageBytes(profile, range(0, 4, true, true)), 'two halves hold the whole');
  t.equal(heldStageBytes(profile, range(2, 4, false, true), [range(0, 2, true, false)]), 0, 'the other half holds none of it');
  const tied = { ...profile, headBytes: 10, tiedEmbeddings: true };
  t.equal(heldStageBytes(tied, range(2, 4, false, true), [range(0, 2, true, false)]), 100, 'a tied head needs the embeddings the front stage holds');
});
