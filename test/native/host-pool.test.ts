// The host pool (configureHostPool): buffers are carved out of one region, OutOfMemoryError
// says how much is free when none fits, freeing returns a buffer's range and merges it with
// its free neighbours, and reconfiguring leaves live buffers of the old pool usable. The pool
// is process-wide and tap runs each file in its own process, so every test here may depend on
// the pool the previous one left; no test in this file needs the unpooled behaviour.
import t from 'tap';

import { loadNativeAddon } from '../../worker/native/addon.js';
import type { HostBufferHandle } from '../../worker/native/addon-types.js';
import { InvalidArgumentError, OutOfMemoryError } from '../../worker/native/errors.js';

const addon = loadNativeAddon();
const PAGE = 4096;

/** Reads 4 floats back out of a buffer: bound as the embedding table of an embeddings-only stage. */
async function readFloats(buffer: HostBufferHandle): Promise<number[]> {
  const stage = addon.createStage({
    backend: 'cpu', device: 0, vocabSize: 1, hiddenSize: 4, intermediateSize: 4, numAttentionHeads: 1,
    numKeyValueHeads: 1, headDim: 4, numLayers: 1, layerStart: 0, layerEnd: 0, hasEmbeddings: true, hasHead: false,
    tieWordEmbeddings: false, attentionBias: false, rmsNormEps: 1e-6, ropeTheta: 10000, rope: { kind: 'none' },
    maxContext: 1, computeDType: 'f32',
  });
  try {
    addon.bindTensor(stage, { name: 'model.embed_tokens.weight', dtype: 'f32', shape: [1, 4], buffer, offset: 0 });
    return Array.from(await addon.forward(stage, { sequence: 0, position: 0, tokens: Int32Array.of(0), hidden: null }));
  } finally {
    addon.disposeStage(stage);
  }
}

function writeFloats(buffer: HostBufferHandle, values: number[]): void {
  addon.writeHostBuffer(buffer, 0, new Uint8Array(Float32Array.from(values).buffer));
}

t.test('no pool until one is configured; bad sizes are refused', async (t) => {
  t.equal(addon.hostPoolInfo(), null);
  t.throws(() => addon.configureHostPool(0, false), InvalidArgumentError);
  t.throws(() => addon.configureHostPool(-PAGE, false), InvalidArgumentError);
  t.equal(addon.hostPoolInfo(), null, 'a refused configuration leaves no pool');
});

t.test('buffers come out of the pool page by page until it is full', async (t) => {
  const info = addon.configureHostPool(16 * PAGE, false);
  t.same(info, { bytes: 16 * PAGE, freeBytes: 16 * PAGE, largestFreeBytes: 16 * PAGE, pinned: false });
  t.same(addon.hostPoolInfo(), info);

  const small = addon.allocHostBuffer(5000, false);
  t.same(addon.hostBufferInfo(small), { bytes: 5000, pinned: false }, 'the buffer has the size asked for');
  t.equal(addon.hostPoolInfo()!.freeBytes, 14 * PAGE, 'and takes whole pages of the pool');
  const rest = addon.allocHostBuffer(14 * PAGE, false);
  t.same(addon.hostPoolInfo(), { bytes: 16 * PAGE, freeBytes: 0, largestFreeBytes: 0, pinned: false });

  t.throws(() => addon.allocHostBuffer(1, false), OutOfMemoryError, 'typed');
  t.throws(() => addon.allocHostBuffer(1, false), { message: /host pool cannot hold 1 more bytes \(0 of 65536 free/ });
  addon.freeHostBuffer(small);
  addon.freeHostBuffer(rest);
  addon.freeHostBuffer(rest);
  t.same(addon.hostPoolInfo(), { bytes: 16 * PAGE, freeBytes: 16 * PAGE, largestFreeBytes: 16 * PAGE, pinned: false }, 'freeing returns every page');
});

t.test('freed ranges merge with their neighbours, so a large buffer fits again', async (t) => {
  addon.configureHostPool(16 * PAGE, false);
  const quarters = [0, 1, 2, 3].map(() => addon.allocHostBuffer(4 * PAGE, false));
  addon.freeHostBuffer(quarters[0]!);
  addon.freeHostBuffer(quarters[2]!);
  t.same(addon.hostPoolInfo(), { bytes: 16 * PAGE, freeBytes: 8 * PAGE, largestFreeBytes: 4 * PAGE, pinned: false });
  t.throws(() => addon.allocHostBuffer(8 * PAGE, false), {
    name: 'OutOfMemoryError',
    message: /cannot hold 32768 more bytes \(32768 of 65536 free, fragmented into 2 ranges\)/,
  });

  addon.freeHostBuffer(quarters[1]!);
  t.equal(addon.hostPoolInfo()!.largestFreeBytes, 12 * PAGE, 'the middle range joins both neighbours');
  const large = addon.allocHostBuffer(12 * PAGE, false);
  writeFloats(large, [1, 2, 3, 4]);
  t.same(await readFloats(large), [1, 2, 3, 4]);
  t.equal(addon.hostPoolInfo()!.freeBytes, 0);
  addon.freeHostBuffer(large);
  addon.freeHostBuffer(quarters[3]!);
  t.equal(addon.hostPoolInfo()!.largestFreeBytes, 16 * PAGE, 'one range again');
});

t.test('reconfiguring replaces the pool; buffers of the old one stay valid', async (t) => {
  addon.configureHostPool(8 * PAGE, false);
  const old = addon.allocHostBuffer(8 * PAGE, false);
  writeFloats(old, [5, 6, 7, 8]);

  const cudaCanPin = addon.buildInfo().backends.includes('cuda') && addon.listDevices('cuda').length > 0;
  const next = addon.configureHostPool(4 * PAGE, true);
  t.same(next, { bytes: 4 * PAGE, freeBytes: 4 * PAGE, largestFreeBytes: 4 * PAGE, pinned: cudaCanPin }, 'a fresh pool, pinned where it can be');
  t.same(await readFloats(old), [5, 6, 7, 8], 'the old buffer still holds its bytes');
  writeFloats(old, [9, 10, 11, 12]);
  t.same(await readFloats(old), [9, 10, 11, 12], 'and can be written');

  const fresh = addon.allocHostBuffer(4 * PAGE, false);
  t.equal(addon.hostBufferInfo(fresh).pinned, cudaCanPin, 'new buffers come from the new pool');
  t.throws(() => addon.allocHostBuffer(1, false), OutOfMemoryError, 'whose size is the new one');
  addon.freeHostBuffer(old);
  t.equal(addon.hostPoolInfo()!.freeBytes, 0, 'freeing an old buffer does not touch the new pool');
  addon.freeHostBuffer(fresh);
  t.equal(addon.hostPoolInfo()!.freeBytes, 4 * PAGE);
});
