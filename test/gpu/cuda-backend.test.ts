// GPU checks of the CUDA backend as far as this issue builds it: compiled in where CUDA,
// cuBLAS and NCCL are found, it lists the GPUs with their memory, pins host memory, refuses
// stage execution with a named error (issue 3 brings it), and 'auto' keeps workers on the
// CPU meanwhile. Without a CUDA build these tests skip and say why; `npm run test:gpu` runs
// them on the GPU machine.
import t from 'tap';
import { chooseBackend, loadNativeAddon } from '../../worker/native/addon.js';
import { NotImplementedError } from '../../worker/native/errors.js';

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

t.test('stages on CUDA are refused with a named error, and auto stays on the CPU', { skip }, async (t) => {
  t.throws(
    () =>
      addon.createStage({
        backend: 'cuda', device: 0, vocabSize: 16, hiddenSize: 8, intermediateSize: 16, numAttentionHeads: 2, numKeyValueHeads: 2, headDim: 4,
        numLayers: 1, layerStart: 0, layerEnd: 1, hasEmbeddings: true, hasHead: true, tieWordEmbeddings: true, attentionBias: false,
        rmsNormEps: 1e-5, ropeTheta: 10000, rope: { kind: 'none' }, maxContext: 8, computeDType: 'f16',
      }),
    NotImplementedError,
  );
  const choice = chooseBackend('auto');
  t.equal(choice.backend, info.stageBackends.includes('cuda') ? 'cuda' : 'cpu', choice.reason);
});
