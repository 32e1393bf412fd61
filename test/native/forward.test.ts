// The CPU stage's forward pass on tiny random-weight models: numerically against the
// independent float64 reference (reference-forward.ts), and for the properties serving
// relies on — incremental decode equals one prefill, a 2-stage split equals one stage,
// sequences are independent and concurrent forwards are safe, KV bytes are accounted.
import t from 'tap';

import { loadNativeAddon } from '../../worker/native/addon.js';
import type { DType, StageHandle } from '../../worker/native/addon-types.js';
import { maxAbsDiff } from '../fixtures/whole-model.js';
import { referenceLogits } from './reference-forward.js';
import {
  BIAS_TIED_LINEAR,
  GQA_LLAMA3,
  MEDIUM_GQA,
  type TinyConfig,
  loadStage,
  makeRandom,
  makeTinyModel,
  wholeRange,
} from './tiny-model.js';

const addon = loadNativeAddon();
const MAX_CONTEXT = 32;

function randomTokens(seed: number, count: number, vocab: number): number[] {
  const random = makeRandom(seed);
  return Array.from({ length: count }, () => Math.floor(random() * vocab));
}

async function logitsOf(stage: StageHandle, sequence: number, position: number, tokens: number[]): Promise<Float32Array> {
  return addon.forward(stage, { sequence, position, tokens: Int32Array.from(tokens), hidden: null });
}

const cases: { label: string; config: TinyConfig; dtype: DType; tokens: number }[] = [
  { label: 'GQA + llama3 rope, f32 weights', config: GQA_LLAMA3, dtype: 'f32', tokens: 11 },
  { label: 'GQA + llama3 rope, bf16 weights', config: GQA_LLAMA3, dtype: 'bf16', tokens: 11 },
  { label: 'q/k/v bias + tied head + linear rope, f16 weights', config: BIAS_TIED_LINEAR, dtype: 'f16', tokens: 11 },
  { label: 'medium GQA on the multi-threaded kernels', config: MEDIUM_GQA, dtype: 'bf16', tokens: 24 },
];

for (const { label, config, dtype, tokens: count } of cases) {
  t.test(`${label}: logits match the float64 reference`, async (t) => {
    const model = makeTinyModel(config, 1234);
    const stage = loadStage(addon, model, wholeRange(config), dtype, MAX_CONTEXT);
    t.same(addon.missingTensors(stage), []);
    const tokens = randomTokens(7, count, config.vocabSize);
    const logits = await logitsOf(stage, 1, 0, tokens);
    const expected = referenceLogits(model, tokens);
    t.equal(logits.length, config.vocabSize);
    t.ok(expected.some((v) => Math.abs(v) > 0.1), 'reference logits are not trivially small');
    const diff = maxAbsDiff(logits, expected);
    t.ok(diff < 1e-4, `max |native - reference| = ${diff}`);
    addon.disposeStage(stage);
  });
}

t.test('prefill then decode one token at a time equals one prefill of the whole sequence', async (t) => {
  for (const config of [GQA_LLAMA3, MEDIUM_GQA]) {
    const model = makeTinyModel(config, 99);
    const stage = loadStage(addon, model, wholeRange(config), 'f32', MAX_CONTEXT);
    const tokens = randomTokens(3, 12, config.vocabSize);
    const prefill = 5;
    let step = await logitsOf(stage, 10, 0, tokens.slice(0, prefill));
    for (let n = prefill; ; n++) {
      const full = await logitsOf(stage, 1000 + n, 0, tokens.slice(0, n));
      const diff = maxAbsDiff(step, full);
      t.ok(diff < 1e-4, `hidden ${config.hiddenSize}, after ${n} tokens: |incremental - full prefill| = ${diff}`);
      addon.releaseSequence(stage, 1000 + n);
      if (n === tokens.length) break;
      step = await logitsOf(stage, 10, n, [tokens[n] ?? 0]);
    }
    addon.disposeStage(stage);
  }
});

t.test('a 2-stage split passing hidden states equals the single stage', async (t) => {
  for (const config of [GQA_LLAMA3, BIAS_TIED_LINEAR]) {
    const model = makeTinyModel(config, 5);
    const whole = loadStage(addon, model, wholeRange(config), 'bf16', MAX_CONTEXT);
    const first = loadStage(addon, model, { layerStart: 0, layerEnd: 1, hasEmbeddings: true, hasHead: false }, 'bf16', MAX_CONTEXT);
    const last = loadStage(addon, model, { layerStart: 1, layerEnd: 2, hasEmbeddings: false, hasHead: true }, 'bf16', MAX_CONTEXT);
    const tokens = randomTokens(11, 9, config.vocabSize);

    const runSplit = async (position: number, chunk: number[]): Promise<Float32Array> => {
      const hidden = await addon.forward(first, { sequence: 4, position, tokens: Int32Array.from(chunk), hidden: null });
      t.equal(hidden.length, chunk.length * config.hiddenSize, 'first stage returns hidden states of every token');
      return addon.forward(last, { sequence: 4, position, tokens: null, hidden });
    };
    const splitPrefill = await runSplit(0, tokens.slice(0, 6));
    const wholePrefill = await logitsOf(whole, 4, 0, tokens.slice(0, 6));
    t.ok(maxAbsDiff(splitPrefill, wholePrefill) < 1e-4, `prefill through 2 stages matches (tied=${config.tieWordEmbeddings})`);
    for (let n = 6; n < tokens.length; n++) {
      const split = await runSplit(n, [tokens[n] ?? 0]);
      const single = await logitsOf(whole, 4, n, [tokens[n] ?? 0]);
      t.ok(maxAbsDiff(split, single) < 1e-4, `decode step ${n} through 2 stages matches`);
    }
    t.ok(maxAbsDiff(await logitsOf(whole, 5, 0, tokens), referenceLogits(model, tokens)) < 1e-4, 'and the reference');
    for (const stage of [whole, first, last]) addon.disposeStage(stage);
  }
});

t.test('concurrent forwards on different sequences give the sequential results', async (t) => {
  const model = makeTinyModel(MEDIUM_GQA, 21);
  const stage = loadStage(addon, model, wholeRange(MEDIUM_GQA), 'f32', MAX_CONTEXT);
  const prompts = [0, 1, 2, 3, 4, 5].map((i) => randomTokens(50 + i, 12 + i, MEDIUM_GQA.vocabSize));
  const sequential: Float32Array[] = [];
  for (const [i, prompt] of prompts.entries()) sequential.push(await logitsOf(stage, 100 + i, 0, prompt));
  const concurrent = await Promise.all(prompts.map((prompt, i) => logitsOf(stage, 200 + i, 0, prompt)));
  concurrent.forEach((logits, i) => t.same(Array.from(logits), Array.from(sequential[i] ?? []), `sequence ${i}`));
  addon.disposeStage(stage);
});

t.test('KV cache: bytes grow with sequences, release frees them, maxContext is enforced', async (t) => {
  const model = makeTinyModel(GQA_LLAMA3, 8);
  const stage = loadStage(addon, model, wholeRange(GQA_LLAMA3), 'f32', 8);
  const weightsOnly = addon.stageDeviceBytes(stage);
  const weightFloats = [...model.tensors.values()].reduce((sum, tensor) => sum + tensor.values.length, 0);
  t.equal(weightsOnly, weightFloats * 4, 'weights are held as f32');

  await logitsOf(stage, 1, 0, [1, 2, 3]);
  const withOne = addon.stageDeviceBytes(stage);
  t.ok(withOne > weightsOnly, 'a sequence allocates KV cache');
  addon.releaseSequence(stage, 1);
  addon.releaseSequence(stage, 12345);
  t.equal(addon.stageDeviceBytes(stage), weightsOnly, 'release frees it; unknown sequences are ignored');
  await t.rejects(logitsOf(stage, 1, 3, [4]), { name: 'InvalidArgumentError' }, 'a released sequence restarts at 0');

  await logitsOf(stage, 2, 0, [1, 2, 3, 4, 5, 6, 7, 8]);
  await t.rejects(logitsOf(stage, 2, 8, [9]), { name: 'InvalidArgumentError', message: /maxContext of 8/ });
  await t.rejects(logitsOf(stage, 3, 0, [1, 2, 3, 4, 5, 6, 7, 8, 9]), { name: 'InvalidArgumentError', message: /maxContext/ });
  addon.disposeStage(stage);
});

t.test('a forward at an earlier position replaces the cached tail', async (t) => {
  const model = makeTinyModel(GQA_LLAMA3, 13);
  const stage = loadStage(addon, model, wholeRange(GQA_LLAMA3), 'f32', MAX_CONTEXT);
  await logitsOf(stage, 1, 0, [5, 6, 7, 8]);
  const rewound = await logitsOf(stage, 1, 2, [9, 10]);
  const fresh = await logitsOf(stage, 2, 0, [5, 6, 9, 10]);
  t.ok(maxAbsDiff(rewound, fresh) < 1e-6);
  await t.rejects(logitsOf(stage, 1, 5, [1]), { name: 'InvalidArgumentError', message: /gap/ });
  addon.disposeStage(stage);
});

t.test('f16 and bf16 weights convert exactly, subnormals and signed zero included', async (t) => {
  // A stage with only embeddings returns the embedding rows: the bound values, converted.
  const spec = {
    backend: 'cpu' as const, device: 0, vocabSize: 2, hiddenSize: 4, intermediateSize: 4, numAttentionHeads: 1,
    numKeyValueHeads: 1, headDim: 4, numLayers: 1, layerStart: 0, layerEnd: 0, hasEmbeddings: true, hasHead: false,
    tieWordEmbeddings: false, attentionBias: false, rmsNormEps: 1e-6, ropeTheta: 10000, rope: { kind: 'none' as const },
    maxContext: 4, computeDType: 'f32' as const,
  };
  const cases: { dtype: DType; bits: number[]; values: number[] }[] = [
    {
      dtype: 'f16',
      bits: [0x0001, 0x03ff, 0x8000, 0x3c00, 0xc000, 0x7bff, 0x0400, 0xfc00],
      values: [2 ** -24, 1023 * 2 ** -24, -0, 1, -2, 65504, 2 ** -14, -Infinity],
    },
    {
      dtype: 'bf16',
      bits: [0x3f80, 0xc040, 0x0001, 0x7f7f, 0x8000, 0x3e20, 0x4120, 0xff80],
      values: [1, -3, 2 ** -133, 3.3895313892515355e38, -0, 0.15625, 10, -Infinity],
    },
  ];
  for (const { dtype, bits, values } of cases) {
    const stage = addon.createStage(spec);
    const buffer = addon.allocHostBuffer(bits.length * 2, false);
    addon.writeHostBuffer(buffer, 0, new Uint8Array(Uint16Array.from(bits).buffer));
    addon.bindTensor(stage, { name: 'model.embed_tokens.weight', dtype, shape: [2, 4], buffer, offset: 0 });
    addon.freeHostBuffer(buffer);
    const rows = await addon.forward(stage, { sequence: 0, position: 0, tokens: Int32Array.from([0, 1]), hidden: null });
    t.same(Array.from(rows).map((v) => (Object.is(v, -0) ? '-0' : v)), values.map((v) => (Object.is(v, -0) ? '-0' : v)), dtype);
    addon.disposeStage(stage);
  }
});
