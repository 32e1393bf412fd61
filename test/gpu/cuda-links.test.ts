// NCCL links between pipeline stages on two GPUs of one process (the two ends of a link may
// sit in two processes or on two devices of one; NCCL only needs two GPUs). The `demo` model
// split in two, front stage on GPU 0 and back stage on GPU 1: a prefill and decode steps whose
// hidden states go over the link give exactly the logits of the same stages handing them over
// through the host, and those of the whole model within rounding. Opening fails cleanly (a
// named error, no hang) for a bad id, for a peer that never joins, and for both ends on one
// GPU, which NCCL refuses; a closed link and a link on the wrong device are refused.
// Needs a CUDA build and two GPUs; skips saying why otherwise.
import { join } from 'node:path';
import t from 'tap';
import { loadNativeAddon } from '../../worker/native/addon.js';
import type { LinkHandle } from '../../worker/native/addon-types.js';
import { DisposedError, InvalidArgumentError, NcclError } from '../../worker/native/errors.js';
import { loadModelStage, maxAbsDiff, type LoadedModel } from '../fixtures/whole-model.js';
import { makeModel, tempDir } from '../worker/fixtures/harness.js';

const addon = loadNativeAddon();
const info = addon.buildInfo();
const gpus = info.stageBackends.includes('cuda') ? addon.listDevices('cuda').length : 0;
const skip = !info.stageBackends.includes('cuda')
  ? `no CUDA backend in this build: ${info.cudaSkippedReason}`
  : gpus < 2
    ? `one GPU here (${gpus}): a link needs two`
    : false;

/** Both ends of a fresh link, stage on device `from` sending to device `to`. */
async function openPair(from: number, to: number, timeoutMs = 30_000): Promise<[LinkHandle, LinkHandle]> {
  const uniqueId = addon.linkUniqueId('cuda');
  return Promise.all([
    addon.openLink('cuda', { device: from, uniqueId, sends: true, timeoutMs }),
    addon.openLink('cuda', { device: to, uniqueId, sends: false, timeoutMs }),
  ]);
}

t.test('activations over an NCCL link give the host path\'s logits exactly', { skip, timeout: 180_000 }, async (t) => {
  const scratch = await tempDir('cuda-links');
  t.teardown(() => scratch.remove());
  const dir = join(scratch.path, 'demo');
  await makeModel(dir, 'demo');
  const load = (device: number, front: boolean | null): Promise<LoadedModel> =>
    loadModelStage(addon, dir, 'cuda', 128, {
      device,
      warmUp: false,
      range: (c) => ({
        layerStart: front === false ? c.numLayers / 2 : 0,
        layerEnd: front === true ? c.numLayers / 2 : c.numLayers,
        hasEmbeddings: front !== false,
        hasHead: front !== true,
      }),
    });
  const whole = await load(0, null);
  const front = await load(0, true);
  const back = await load(1, false);
  t.teardown(() => {
    whole.free();
    front.free();
    back.free();
  });
  t.equal(addon.linksAvailable('cuda'), true);
  t.equal(addon.linkUniqueId('cuda').length, 128, 'an id is NCCL_UNIQUE_ID_BYTES long');
  const [sender, receiver] = await openPair(0, 1);
  t.teardown(() => {
    addon.closeLink(sender);
    addon.closeLink(receiver);
  });

  let tokens = Int32Array.of(5, 17, 42, 99, 3, 1000, 7);
  let position = 0;
  let tag = 1;
  for (let step = 0; step < 6; step++) {
    const expected = await addon.forward(whole.stage, { sequence: 1, position, tokens, hidden: null });
    // The host path: front's hidden states to JS, then to back on the other GPU.
    const hidden = await addon.forward(front.stage, { sequence: 2, position, tokens, hidden: null });
    const viaHost = await addon.forward(back.stage, { sequence: 2, position, tokens: null, hidden });
    // The link: front sends under a tag, back takes it by the tag.
    await addon.forwardToLink(front.stage, { sequence: 3, position, tokens, hidden: null }, { link: sender, tag });
    const viaLink = await addon.forward(back.stage, { sequence: 3, position, tokens: null, hidden: { link: receiver, tag, tokenCount: tokens.length } });
    t.equal(maxAbsDiff(viaLink, viaHost), 0, `step ${step}: link and host paths give identical logits`);
    t.ok(maxAbsDiff(viaLink, expected) < 1e-2, `step ${step}: within rounding of the whole model (max |Δ| ${maxAbsDiff(viaLink, expected).toExponential(2)})`);
    let next = 0;
    for (let i = 1; i < viaLink.length; i++) if (viaLink[i]! > viaLink[next]!) next = i;
    position += tokens.length;
    tokens = Int32Array.of(next);
    tag++;
  }

  // Two activations sent before either is taken, and taken the other way round: each is found
  // by its tag, not by order. (Not awaited before the takes: a send waits on the GPU until
  // the other end receives, and the second forward may need the device to itself.)
  const two = Int32Array.of(7, 8);
  const sends = Promise.all([
    addon.forwardToLink(front.stage, { sequence: 4, position: 0, tokens: two, hidden: null }, { link: sender, tag: 100 }),
    addon.forwardToLink(front.stage, { sequence: 5, position: 0, tokens: Int32Array.of(9), hidden: null }, { link: sender, tag: 101 }),
  ]);
  const later = await addon.forward(back.stage, { sequence: 5, position: 0, tokens: null, hidden: { link: receiver, tag: 101, tokenCount: 1 } });
  const earlier = await addon.forward(back.stage, { sequence: 4, position: 0, tokens: null, hidden: { link: receiver, tag: 100, tokenCount: 2 } });
  await sends;
  const alone = await addon.forward(whole.stage, { sequence: 6, position: 0, tokens: Int32Array.of(9), hidden: null });
  t.ok(maxAbsDiff(later, alone) < 1e-2, 'taken out of order, each activation is its own');
  t.equal(earlier.length, later.length);

  // Wrong size, wrong end, wrong device.
  await addon.forwardToLink(front.stage, { sequence: 7, position: 0, tokens: two, hidden: null }, { link: sender, tag: 200 });
  await t.rejects(addon.forward(back.stage, { sequence: 7, position: 0, tokens: null, hidden: { link: receiver, tag: 200, tokenCount: 3 } }), InvalidArgumentError);
  await t.rejects(addon.forwardToLink(front.stage, { sequence: 8, position: 0, tokens: two, hidden: null }, { link: receiver, tag: 201 }), InvalidArgumentError, 'the receiving end cannot send');
  await t.rejects(addon.forward(whole.stage, { sequence: 9, position: 0, tokens: null, hidden: { link: receiver, tag: 1, tokenCount: 1 } }), InvalidArgumentError, 'a stage with embeddings takes tokens');
  await t.rejects(addon.forwardToLink(back.stage, { sequence: 9, position: 0, tokens: null, hidden: Float32Array.from({ length: 256 }, () => 0) }, { link: sender, tag: 202 }), InvalidArgumentError, 'the head stage sends nothing');

  addon.closeLink(sender);
  await t.rejects(addon.forwardToLink(front.stage, { sequence: 10, position: 0, tokens: two, hidden: null }, { link: sender, tag: 300 }), DisposedError, 'a closed link');
});

t.test('opening a link fails with a named error, never a hang', { skip }, async (t) => {
  await t.rejects(addon.openLink('cuda', { device: 0, uniqueId: Buffer.alloc(5), sends: true, timeoutMs: 1000 }), InvalidArgumentError, 'an id of the wrong size');
  const started = performance.now();
  await t.rejects(addon.openLink('cuda', { device: 0, uniqueId: addon.linkUniqueId('cuda'), sends: true, timeoutMs: 1500 }), NcclError, 'a peer that never joins');
  t.ok(performance.now() - started < 10_000, `gave up after ${Math.round(performance.now() - started)} ms`);
  const sameGpu = await openPair(0, 0, 5_000).then(
    (ends) => {
      for (const end of ends) addon.closeLink(end);
      return null;
    },
    (e: unknown) => e,
  );
  t.ok(sameGpu instanceof NcclError, `both ends on one GPU: ${String(sameGpu)}`);
  t.throws(() => addon.linkUniqueId('cpu'), { name: 'NotImplementedError' }, 'the CPU backend has no links');
});
