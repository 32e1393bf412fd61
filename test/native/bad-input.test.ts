// Bad input to the addon gives a named, typed error with a clear message and never takes
// the process down: each case below is followed by a good call on the same objects.
import t from 'tap';

import { loadNativeAddon } from '../../worker/native/addon.js';
import type { StageSpec, TensorBinding } from '../../worker/native/addon-types.js';
import { DisposedError, InvalidArgumentError, NotImplementedError } from '../../worker/native/errors.js';
import { GQA_LLAMA3, encodeTensor, loadStage, makeTinyModel, stageSpecOf, wholeRange } from './tiny-model.js';

const addon = loadNativeAddon();
const model = makeTinyModel(GQA_LLAMA3, 77);
const spec = stageSpecOf(GQA_LLAMA3, wholeRange(GQA_LLAMA3), 16);

t.test('createStage rejects bad specs', async (t) => {
  const bad: [string, StageSpec, RegExp][] = [
    ['unknown backend', { ...spec, backend: 'tpu' as 'cpu' }, /spec\.backend must be 'cpu' or 'cuda'/],
    ['bf16 compute on cpu', { ...spec, computeDType: 'bf16' }, /computes in f32 only/],
    ['unknown dtype', { ...spec, computeDType: 'f8' as 'f32' }, /spec\.computeDType must be 'f32', 'f16' or 'bf16'/],
    ['heads not a multiple of kv heads', { ...spec, numKeyValueHeads: 3 }, /multiple of spec\.numKeyValueHeads/],
    ['odd headDim', { ...spec, headDim: 7 }, /headDim must be even/],
    ['layer range past numLayers', { ...spec, layerEnd: 3 }, /layer range \[0, 3\)/],
    ['fractional size', { ...spec, hiddenSize: 31.5 }, /spec\.hiddenSize must be an integer/],
    ['zero maxContext', { ...spec, maxContext: 0 }, /spec\.maxContext/],
    ['cpu device 1', { ...spec, device: 1 }, /one device, 0/],
    ['llama3 factors inverted', { ...spec, rope: { kind: 'llama3', factor: 8, lowFreqFactor: 4, highFreqFactor: 1, originalMaxPositionEmbeddings: 8192 } }, /highFreqFactor/],
    ['unknown rope kind', { ...spec, rope: { kind: 'yarn' } as unknown as StageSpec['rope'] }, /spec\.rope\.kind/],
  ];
  for (const [label, badSpec, message] of bad) {
    t.throws(() => addon.createStage(badSpec), { name: 'InvalidArgumentError', message }, label);
  }
  const missingField = { ...spec } as Partial<StageSpec>;
  delete missingField.ropeTheta;
  t.throws(() => addon.createStage(missingField as StageSpec), { name: 'InvalidArgumentError', message: /spec\.ropeTheta must be a number/ });
  t.throws(() => addon.createStage(null as unknown as StageSpec), InvalidArgumentError);

  const info = addon.buildInfo();
  if (info.backends.includes('cuda')) {
    t.throws(() => addon.createStage({ ...spec, backend: 'cuda' }), { name: 'NotImplementedError', message: /issue 3/ });
  } else {
    t.throws(() => addon.createStage({ ...spec, backend: 'cuda' }), NotImplementedError, 'cuda is not compiled in');
  }
  addon.disposeStage(addon.createStage(spec));
});

t.test('bindTensor rejects bad bindings', async (t) => {
  const stage = addon.createStage(spec);
  const normBytes = encodeTensor(model.tensors.get('model.norm.weight')?.values ?? new Float32Array(), 'f32');
  const buffer = addon.allocHostBuffer(normBytes.length, false);
  addon.writeHostBuffer(buffer, 0, normBytes);
  const good: TensorBinding = { name: 'model.norm.weight', dtype: 'f32', shape: [32], buffer, offset: 0 };

  const bad: [string, TensorBinding, RegExp][] = [
    ['unknown name', { ...good, name: 'model.layers.7.mlp.up_proj.weight' }, /no tensor named 'model\.layers\.7\.mlp\.up_proj\.weight'/],
    ['shape mismatch', { ...good, shape: [16, 2] }, /has shape \[16, 2\] but the stage expects \[32\]/],
    ['wrong dtype string', { ...good, dtype: 'float32' as 'f32' }, /binding\.dtype must be 'f32', 'f16' or 'bf16'/],
    ['range past the buffer', { ...good, offset: 4 }, /does not fit in its 128-byte host buffer/],
    ['offset far past the buffer', { ...good, offset: 1e15 }, /does not fit/],
    ['negative offset', { ...good, offset: -1 }, /binding\.offset must be an integer/],
    ['not a buffer handle', { ...good, buffer: stage as unknown as TensorBinding['buffer'] }, /HostBufferHandle/],
    ['lm_head with the norm\'s shape', { ...good, name: 'lm_head.weight' }, /has shape \[32\] but the stage expects \[64, 32\]/],
  ];
  for (const [label, binding, message] of bad) {
    t.throws(() => addon.bindTensor(stage, binding), { name: 'InvalidArgumentError', message }, label);
  }
  t.throws(() => addon.bindTensor(buffer as unknown as typeof stage, good), { name: 'InvalidArgumentError', message: /StageHandle/ });
  addon.bindTensor(stage, good);
  t.notOk(addon.missingTensors(stage).includes('model.norm.weight'), 'the good binding still works');

  addon.freeHostBuffer(buffer);
  t.throws(() => addon.bindTensor(stage, good), DisposedError, 'a freed buffer');
  addon.disposeStage(stage);
});

t.test('forward rejects bad input with named errors, as rejected promises', async (t) => {
  const whole = loadStage(addon, model, wholeRange(GQA_LLAMA3), 'f32', 16);
  const tail = loadStage(addon, model, { layerStart: 1, layerEnd: 2, hasEmbeddings: false, hasHead: true }, 'f32', 16);
  const tokens = Int32Array.from([1, 2, 3]);
  const hidden = new Float32Array(3 * GQA_LLAMA3.hiddenSize);

  const bad: [string, () => Promise<Float32Array>, RegExp][] = [
    ['tokens to a stage without embeddings', () => addon.forward(tail, { sequence: 1, position: 0, tokens, hidden: null }), /input\.tokens must be null on a stage without embeddings/],
    ['hidden to a stage with embeddings', () => addon.forward(whole, { sequence: 1, position: 0, tokens: null, hidden }), /input\.hidden must be null/],
    ['token id = vocab size', () => addon.forward(whole, { sequence: 1, position: 0, tokens: Int32Array.from([1, 64]), hidden: null }), /input\.tokens\[1\] = 64 is outside the vocabulary \[0, 64\)/],
    ['negative token id', () => addon.forward(whole, { sequence: 1, position: 0, tokens: Int32Array.from([-1]), hidden: null }), /outside the vocabulary/],
    ['hidden length not a multiple', () => addon.forward(tail, { sequence: 1, position: 0, tokens: null, hidden: new Float32Array(33) }), /33 floats, which is not a positive multiple of hiddenSize 32/],
    ['tokens as a plain array', () => addon.forward(whole, { sequence: 1, position: 0, tokens: [1, 2] as unknown as Int32Array, hidden: null }), /input\.tokens must be a Int32Array or null/],
    ['hidden as Float64Array', () => addon.forward(tail, { sequence: 1, position: 0, tokens: null, hidden: new Float64Array(32) as unknown as Float32Array }), /input\.hidden must be a Float32Array/],
    ['neither tokens nor hidden', () => addon.forward(whole, { sequence: 1, position: 0, tokens: null, hidden: null }), /exactly one of/],
    ['empty tokens', () => addon.forward(whole, { sequence: 1, position: 0, tokens: new Int32Array(0), hidden: null }), /input\.tokens is empty/],
    ['negative position', () => addon.forward(whole, { sequence: 1, position: -1, tokens, hidden: null }), /input\.position must be an integer/],
    ['first forward not at 0', () => addon.forward(whole, { sequence: 9, position: 2, tokens, hidden: null }), /no cached tokens, so input\.position must be 0/],
    ['past maxContext', () => addon.forward(whole, { sequence: 1, position: 14, tokens, hidden: null }), /would hold 17 tokens, past the stage's maxContext of 16/],
    ['not a stage handle', () => addon.forward({} as typeof whole, { sequence: 1, position: 0, tokens, hidden: null }), /StageHandle/],
    ['input not an object', () => addon.forward(whole, null as unknown as Parameters<typeof addon.forward>[1]), /input must be an object/],
  ];
  for (const [label, call, message] of bad) {
    await t.rejects(call, { name: 'InvalidArgumentError', message }, label);
  }
  const incomplete = addon.createStage(spec);
  await t.rejects(addon.forward(incomplete, { sequence: 1, position: 0, tokens, hidden: null }), { name: 'InvalidArgumentError', message: /still lacks \d+ tensor\(s\), first model\.embed_tokens\.weight/ });
  addon.disposeStage(incomplete);

  const logits = await addon.forward(whole, { sequence: 1, position: 0, tokens, hidden: null });
  t.equal(logits.length, GQA_LLAMA3.vocabSize, 'the stage still works');
  t.ok(logits.every(Number.isFinite));
  addon.disposeStage(whole);
  addon.disposeStage(tail);
});

t.test('a disposed stage gives DisposedError everywhere; dispose is idempotent', async (t) => {
  const stage = loadStage(addon, model, wholeRange(GQA_LLAMA3), 'f32', 16);
  const running = addon.forward(stage, { sequence: 1, position: 0, tokens: Int32Array.from([1, 2, 3, 4]), hidden: null });
  addon.disposeStage(stage);
  t.equal((await running).length, GQA_LLAMA3.vocabSize, 'a forward already running finishes');
  addon.disposeStage(stage);
  const buffer = addon.allocHostBuffer(4, false);
  t.throws(() => addon.missingTensors(stage), DisposedError);
  t.throws(() => addon.stageDeviceBytes(stage), DisposedError);
  t.throws(() => addon.releaseSequence(stage, 1), DisposedError);
  t.throws(() => addon.bindTensor(stage, { name: 'model.norm.weight', dtype: 'f32', shape: [1], buffer, offset: 0 }), { name: 'DisposedError', message: /disposed/ });
  await t.rejects(addon.forward(stage, { sequence: 1, position: 0, tokens: Int32Array.from([1]), hidden: null }), DisposedError);
  await t.rejects(addon.warmUpStage(stage), DisposedError);
  addon.freeHostBuffer(buffer);
});

t.test('warming up a CPU stage is a no-op, refused while a forward runs or with bad prompt lengths', async (t) => {
  const fresh = addon.createStage(spec);
  t.teardown(() => addon.disposeStage(fresh));
  await t.resolves(addon.warmUpStage(fresh));
  t.ok(addon.missingTensors(fresh).length > 0, 'nothing was bound');
  const stage = loadStage(addon, model, wholeRange(GQA_LLAMA3), 'f32', 16);
  t.teardown(() => addon.disposeStage(stage));
  const running = addon.forward(stage, { sequence: 1, position: 0, tokens: Int32Array.from([1, 2]), hidden: null });
  await t.rejects(addon.warmUpStage(stage), { name: 'InvalidArgumentError', message: /while a forward runs/ });
  await running;
  await t.resolves(addon.warmUpStage(stage));
  await t.resolves(addon.warmUpStage(stage, [3, 700]), 'prompt lengths past the context are clamped to it');
  for (const lengths of ['12', [0], [1.5], [-2]]) {
    await t.rejects(addon.warmUpStage(stage, lengths as number[]), { name: 'InvalidArgumentError', message: /prefillTokens/ }, JSON.stringify(lengths));
  }
});

t.test('bindTensor is refused while a forward runs on the stage', async (t) => {
  const stage = loadStage(addon, model, wholeRange(GQA_LLAMA3), 'f32', 16);
  const bytes = encodeTensor(model.tensors.get('model.norm.weight')?.values ?? new Float32Array(), 'f32');
  const buffer = addon.allocHostBuffer(bytes.length, false);
  addon.writeHostBuffer(buffer, 0, bytes);
  const binding: TensorBinding = { name: 'model.norm.weight', dtype: 'f32', shape: [32], buffer, offset: 0 };
  const running = addon.forward(stage, { sequence: 1, position: 0, tokens: Int32Array.from([1, 2]), hidden: null });
  t.throws(() => addon.bindTensor(stage, binding), { name: 'InvalidArgumentError', message: /while 1 forward call\(s\) run/ });
  await running;
  addon.bindTensor(stage, binding);
  addon.freeHostBuffer(buffer);
  addon.disposeStage(stage);
});

t.test('a CPU stage cannot move to another device; the CPU has no peer access', async (t) => {
  const stage = addon.createStage(spec);
  t.teardown(() => addon.disposeStage(stage));
  t.throws(() => addon.cloneStage(stage, 1), NotImplementedError, 'one device: no device-to-device move');
  t.throws(() => addon.cloneStage(stage, 0), { name: 'InvalidArgumentError', message: /on device 0 already/ });
  t.equal(addon.peerAccess('cpu', 0, 1), false);
  t.throws(() => addon.peerAccess('cpu', -1, 0), InvalidArgumentError);
  t.equal(addon.missingTensors(stage).length > 0, true, 'the stage is still usable');
});

t.test('the CPU backend has no device links, and link arguments are checked', async (t) => {
  const tail = loadStage(addon, model, { layerStart: 1, layerEnd: 2, hasEmbeddings: false, hasHead: true }, 'f32', 16);
  const front = loadStage(addon, model, { layerStart: 0, layerEnd: 1, hasEmbeddings: true, hasHead: false }, 'f32', 16);
  t.teardown(() => {
    addon.disposeStage(tail);
    addon.disposeStage(front);
  });
  t.equal(addon.linksAvailable('cpu'), false);
  t.throws(() => addon.linkUniqueId('cpu'), { name: 'NotImplementedError', message: /cpu backend has no device-to-device links/ });
  await t.rejects(addon.openLink('cpu', { device: 0, uniqueId: Buffer.alloc(128), sends: true, timeoutMs: 100 }), NotImplementedError);
  const notALink = {} as Parameters<typeof addon.closeLink>[0];
  t.throws(() => addon.closeLink(notALink), { name: 'InvalidArgumentError', message: /LinkHandle from openLink/ });
  await t.rejects(addon.forward(tail, { sequence: 1, position: 0, tokens: null, hidden: { link: notALink, tag: 1, tokenCount: 1 } }), {
    name: 'InvalidArgumentError',
    message: /input\.hidden\.link must be a LinkHandle/,
  });
  const tokens = Int32Array.of(1, 2);
  await t.rejects(addon.forwardToLink(front, { sequence: 1, position: 0, tokens, hidden: null }, { link: notALink, tag: 1 }), {
    name: 'InvalidArgumentError',
    message: /output\.link must be a LinkHandle/,
  });
  const hidden = await addon.forward(front, { sequence: 1, position: 0, tokens, hidden: null });
  t.equal(hidden.length, 2 * GQA_LLAMA3.hiddenSize, 'the stages still work');
});
