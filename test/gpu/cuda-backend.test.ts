// GPU checks of the CUDA backend's plumbing: compiled in where CUDA, cuBLAS and NCCL are
// found, it lists the GPUs with their memory, pins host memory, turns bad stages into named
// errors, 'auto' picks it, and a stage's warm-up changes nothing it computes. Model outputs
// are checked in cuda-correctness.test.ts. Without a CUDA build these tests skip and say why; `npm run test:gpu` runs
// them on the GPU machine.
import { join } from 'node:path';
import t from 'tap';
import { wholeModelRange } from '../../worker/models/stage-plan.js';
import { chooseBackend, loadNativeAddon } from '../../worker/native/addon.js';
import { InvalidArgumentError, OutOfMemoryError } from '../../worker/native/errors.js';
import { loadModelStage, maxAbsDiff } from '../fixtures/whole-model.js';
import { makeModel, tempDir } from '../worker/fixtures/harness.js';

const addon = loadNativeAddon();
const info = addon.buildInfo();
const skip = info.backends.includes('cuda') ? false : `no CUDA backend in this build: ${info.cudaSkippedReason}`;

t.test('the CUDA backend lists the GPUs', { skip }, async (t) => {
  const devices = addon.listDevices('cuda');
  t.ok(devices.length > 0, `${devices.length} GPU(s): ${devices.map((d) => d.name).join(', ')}`);
  for (const d of devices) {
    t.equal(d.kind, 'cuda');
    t.ok(d.totalBytes > 1e9 && d.freeBytes > 0 && d.freeBytes <= d.totalBytes, `${d.name}: ${(d.freeBytes / 2 ** 30).toFixed(1)} of ${(d.totalBytes / 2 ** 30).toFixed(1)} GiB free`);
  }
});

t.test('host buffers are pinned and writable', { skip }, async (t) => {
  const buffer = addon.allocHostBuffer(64 << 20, true);
  t.teardown(() => addon.freeHostBuffer(buffer));
  t.same(addon.hostBufferInfo(buffer), { bytes: 64 << 20, pinned: true });
  addon.writeHostBuffer(buffer, (64 << 20) - 4, Uint8Array.of(1, 2, 3, 4));
  t.throws(() => addon.writeHostBuffer(buffer, 64 << 20, Uint8Array.of(1)), 'a write past the end is refused');
});

t.test('CUDA stages fail with named errors, and auto picks the GPU', { skip }, async (t) => {
  const spec = {
    backend: 'cuda' as const, device: 0, vocabSize: 16, hiddenSize: 8, intermediateSize: 16, numAttentionHeads: 2, numKeyValueHeads: 2, headDim: 4,
    numLayers: 1, layerStart: 0, layerEnd: 1, hasEmbeddings: true, hasHead: true, tieWordEmbeddings: true, attentionBias: false,
    rmsNormEps: 1e-5, ropeTheta: 10000, rope: { kind: 'none' as const }, maxContext: 8, computeDType: 'f16' as const,
  };
  t.throws(() => addon.createStage({ ...spec, device: 99 }), InvalidArgumentError, 'a device that does not exist');
  t.throws(() => addon.createStage({ ...spec, vocabSize: 2 ** 28, hiddenSize: 2 ** 12 }), OutOfMemoryError, 'a stage larger than the GPU');
  const stage = addon.createStage(spec);
  t.teardown(() => addon.disposeStage(stage));
  await t.rejects(addon.forward(stage, { sequence: 1, position: 0, tokens: Int32Array.of(1), hidden: null }), InvalidArgumentError, 'forward before every tensor is bound');
  await t.resolves(addon.prepareDevice('cuda', 0));
  await t.rejects(addon.prepareDevice('cuda', 99), InvalidArgumentError);
  const choice = chooseBackend('auto');
  t.equal(choice.backend, 'cuda', choice.reason);
});

t.test('copy baselines measure the PCIe link and device memory', { skip }, async (t) => {
  const bytes = 1 << 30;
  const buffer = addon.allocHostBuffer(bytes, true);
  t.teardown(() => addon.freeHostBuffer(buffer));
  const hostToDevice = bytes / (await addon.measureHostToDevice('cuda', buffer, 0)) / 1e9;
  const memory = (2 * bytes) / (await addon.measureDeviceMemory('cuda', 0, bytes)) / 1e9;
  t.ok(hostToDevice > 5, `pinned host to device: ${hostToDevice.toFixed(1)} GB/s`);
  t.ok(memory > hostToDevice, `device memory: ${memory.toFixed(0)} GB/s`);
});

t.test('a stage warmed up before its weights land gives the same logits, and its first forward is cheap', { skip, timeout: 120_000 }, async (t) => {
  const scratch = await tempDir('cuda-warm-up');
  t.teardown(() => scratch.remove());
  const dir = join(scratch.path, 'demo');
  await makeModel(dir, 'demo');
  const whole = { device: 0, range: wholeModelRange };
  const cold = await loadModelStage(addon, dir, 'cuda', 128, { ...whole, warmUp: false });
  const tokens = Int32Array.of(5, 17, 42, 99, 3, 1000, 7);
  // Also for the prompt's length and one past the context (clamped to it).
  const warm = await loadModelStage(addon, dir, 'cuda', 128, { ...whole, warmUp: [tokens.length, 300] });
  t.teardown(() => {
    cold.free();
    warm.free();
  });
  const started = performance.now();
  const warmed = await addon.forward(warm.stage, { sequence: 1, position: 0, tokens, hidden: null });
  t.comment(`first forward after warm-up: ${(performance.now() - started).toFixed(1)} ms`);
  const plain = await addon.forward(cold.stage, { sequence: 1, position: 0, tokens, hidden: null });
  t.equal(maxAbsDiff(warmed, plain), 0, 'identical logits: the warm-up left nothing behind');
  const next = await addon.forward(warm.stage, { sequence: 1, position: tokens.length, tokens: Int32Array.of(8), hidden: null });
  const nextPlain = await addon.forward(cold.stage, { sequence: 1, position: tokens.length, tokens: Int32Array.of(8), hidden: null });
  t.equal(maxAbsDiff(next, nextPlain), 0, 'and the same decode step');
});
