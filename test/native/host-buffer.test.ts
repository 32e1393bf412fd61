// Host buffers: allocation, info, bounds-checked writes, free/use-after-free.
import t from 'tap';

import { loadNativeAddon } from '../../worker/native/addon.js';
import type { HostBufferHandle } from '../../worker/native/addon-types.js';
import { DisposedError, InvalidArgumentError } from '../../worker/native/errors.js';

const addon = loadNativeAddon();

t.test('alloc and info', async (t) => {
  const buffer = addon.allocHostBuffer(1000, true);
  const info = addon.hostBufferInfo(buffer);
  t.equal(info.bytes, 1000);
  const cudaCanPin = addon.buildInfo().backends.includes('cuda') && addon.listDevices('cuda').length > 0;
  t.equal(info.pinned, cudaCanPin, 'pinned exactly where a CUDA device is present');
  t.equal(addon.hostBufferInfo(addon.allocHostBuffer(8, false)).pinned, false, 'pageable when asked');
  addon.freeHostBuffer(buffer);
});

t.test('writes are bounds-checked', async (t) => {
  const buffer = addon.allocHostBuffer(16, false);
  addon.writeHostBuffer(buffer, 0, new Uint8Array(16));
  addon.writeHostBuffer(buffer, 12, Buffer.from([1, 2, 3, 4]));
  addon.writeHostBuffer(buffer, 16, new Uint8Array(0));
  t.throws(() => addon.writeHostBuffer(buffer, 13, new Uint8Array(4)), { name: 'RangeError', message: /4 bytes at offset 13 runs past the end of a 16-byte host buffer/ });
  t.throws(() => addon.writeHostBuffer(buffer, 17, new Uint8Array(0)), RangeError);
  t.throws(() => addon.writeHostBuffer(buffer, -1, new Uint8Array(1)), RangeError);
  t.throws(() => addon.writeHostBuffer(buffer, 2 ** 53 - 1, new Uint8Array(1)), RangeError);
  t.throws(() => addon.writeHostBuffer(buffer, 0.5, new Uint8Array(1)), { name: 'InvalidArgumentError', message: /offset must be an integer/ });
  t.throws(() => addon.writeHostBuffer(buffer, 0, new Uint16Array(2) as unknown as Uint8Array), { name: 'InvalidArgumentError', message: /Uint8Array/ });
  t.throws(() => addon.writeHostBuffer({} as HostBufferHandle, 0, new Uint8Array(1)), InvalidArgumentError);
  addon.writeHostBuffer(buffer, 0, new Uint8Array(1));
  addon.freeHostBuffer(buffer);
});

t.test('a sub-array view writes its own bytes, not its backing buffer from 0', async (t) => {
  // The only way to read a buffer back is to bind it: an embeddings-only stage returns the rows.
  const buffer = addon.allocHostBuffer(8, false);
  const backing = Float32Array.from([7, 8, 9, 10]);
  addon.writeHostBuffer(buffer, 0, new Uint8Array(backing.buffer, 8, 8));
  const stage = addon.createStage({
    backend: 'cpu', device: 0, vocabSize: 1, hiddenSize: 2, intermediateSize: 2, numAttentionHeads: 1,
    numKeyValueHeads: 1, headDim: 2, numLayers: 1, layerStart: 0, layerEnd: 0, hasEmbeddings: true, hasHead: false,
    tieWordEmbeddings: false, attentionBias: false, rmsNormEps: 1e-6, ropeTheta: 10000, rope: { kind: 'none' },
    maxContext: 1, computeDType: 'f32',
  });
  addon.bindTensor(stage, { name: 'model.embed_tokens.weight', dtype: 'f32', shape: [1, 2], buffer, offset: 0 });
  const row = await addon.forward(stage, { sequence: 0, position: 0, tokens: Int32Array.from([0]), hidden: null });
  t.same(Array.from(row), [9, 10]);
  addon.disposeStage(stage);
  addon.freeHostBuffer(buffer);
});

t.test('copyHostBuffer copies between buffers off the JS thread, bounds-checked', async (t) => {
  const from = addon.allocHostBuffer(16, false);
  addon.writeHostBuffer(from, 0, new Uint8Array(Float32Array.from([1, 2, 3, 4]).buffer));
  const to = addon.allocHostBuffer(12, false);
  await addon.copyHostBuffer(from, 8, to, 4, 8);
  // Read back through an embeddings-only stage bound at the copy's offset.
  const stage = addon.createStage({
    backend: 'cpu', device: 0, vocabSize: 1, hiddenSize: 2, intermediateSize: 2, numAttentionHeads: 1,
    numKeyValueHeads: 1, headDim: 2, numLayers: 1, layerStart: 0, layerEnd: 0, hasEmbeddings: true, hasHead: false,
    tieWordEmbeddings: false, attentionBias: false, rmsNormEps: 1e-6, ropeTheta: 10000, rope: { kind: 'none' },
    maxContext: 1, computeDType: 'f32',
  });
  addon.bindTensor(stage, { name: 'model.embed_tokens.weight', dtype: 'f32', shape: [1, 2], buffer: to, offset: 4 });
  const row = await addon.forward(stage, { sequence: 0, position: 0, tokens: Int32Array.from([0]), hidden: null });
  t.same(Array.from(row), [3, 4]);
  addon.disposeStage(stage);
  await t.rejects(addon.copyHostBuffer(from, 12, to, 0, 8), { name: 'InvalidArgumentError', message: /runs past the end/ });
  await t.rejects(addon.copyHostBuffer(from, 0, to, 8, 8), { name: 'InvalidArgumentError' });
  await t.rejects(addon.copyHostBuffer(from, -1, to, 0, 1), { name: 'InvalidArgumentError' });
  addon.freeHostBuffer(to);
  await t.rejects(addon.copyHostBuffer(from, 0, to, 0, 1), { name: 'DisposedError' });
  addon.freeHostBuffer(from);
});

t.test('bad sizes and use after free', async (t) => {
  t.throws(() => addon.allocHostBuffer(0, false), { name: 'InvalidArgumentError', message: /bytes must be an integer in \[1,/ });
  t.throws(() => addon.allocHostBuffer(-5, false), InvalidArgumentError);
  t.throws(() => addon.allocHostBuffer(2 ** 60, false), InvalidArgumentError);
  t.throws(() => addon.allocHostBuffer(8, 'yes' as unknown as boolean), { name: 'InvalidArgumentError', message: /pinned must be a boolean/ });
  t.throws(() => addon.allocHostBuffer(2 ** 52, false), { name: 'OutOfMemoryError' }, '4 PiB cannot be allocated');

  const buffer = addon.allocHostBuffer(4, false);
  addon.freeHostBuffer(buffer);
  addon.freeHostBuffer(buffer);
  t.throws(() => addon.hostBufferInfo(buffer), DisposedError);
  t.throws(() => addon.writeHostBuffer(buffer, 0, new Uint8Array(1)), { name: 'DisposedError', message: /freed/ });
});
