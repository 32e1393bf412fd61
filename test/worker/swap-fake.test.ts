// Swap orchestration with a fake addon, where the test decides when forwards and fetches
// complete and how many GPUs there are: a swap-out waits for running requests while refusing
// new ones; a swap-in to another device moves the instance (device to device where the GPUs
// have peer access, else through its host copy) while the old
// copy finishes its running requests; swaps of a loading instance are refused; a full host
// pool evicts a host-only copy and retries; a device out of memory fails a swap-in cleanly;
// runtime init is prepared before the stage is created; the host cache reports whether it is
// pinned, and one that cannot be allocated fails the worker's start clearly.
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { pino, type Logger } from 'pino';
import t from 'tap';
import type { GenerateEvent__Output } from '../../protos/generated/paraserve/v1/GenerateEvent.js';
import type { WorkerClient } from '../../protos/generated/paraserve/v1/Worker.js';
import type { BackendName, DeviceInfo, HostPoolInfo, StageHandle, StageSpec } from '../../worker/native/addon-types.js';
import { startWorkerWith } from '../../worker/daemon/main.js';
import { FakeAddon } from './fixtures/fake-addon.js';
import {
  clientOf,
  collect,
  generate,
  heldDirectory,
  loadRequest,
  loadStage,
  scratchModel,
  swapIn,
  swapOut,
  testWorkerOptions,
  tokensOf,
  waitForSnapshot,
  type TestModel,
} from './fixtures/harness.js';

const model: TestModel = await scratchModel(t, 'swap-fake');

const prompt = [3, 4, 5];

/** A pino logger whose lines the test reads, and a wait for the first line with a message. */
function capturedLogger(): { logger: Logger; lines: string[]; logged: (msg: string) => Promise<void> } {
  const lines: string[] = [];
  const waiters: { msg: string; resolve: () => void }[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      const line = chunk.toString();
      lines.push(line);
      for (const w of waiters.filter((w) => line.includes(`"msg":"${w.msg}"`))) w.resolve();
      callback();
    },
  });
  return {
    logger: pino({ level: 'debug' }, stream),
    lines,
    logged: (msg) =>
      lines.some((l) => l.includes(`"msg":"${msg}"`)) ? Promise.resolve() : new Promise((resolve) => waiters.push({ msg, resolve })),
  };
}

function fakeWorker(
  t: { teardown: (fn: () => unknown) => void },
  addon: FakeAddon,
  backend: BackendName,
  logger: Logger = pino({ level: 'silent' }),
): Promise<WorkerClient> {
  return clientOf(t, startWorkerWith(testWorkerOptions({ id: 'swap-fake' }), { addon, backend, logger }));
}

function gpus(count: number): DeviceInfo[] {
  return Array.from({ length: count }, (_, index) => ({ index, kind: 'cuda' as const, name: `gpu${index}`, totalBytes: 8 * 2 ** 30, freeBytes: 8 * 2 ** 30 }));
}

t.test('SwapOut lets running requests finish, refuses new ones meanwhile, keeps the host copy', async (t) => {
  const addon = new FakeAddon();
  const { logger, logged } = capturedLogger();
  const client = await fakeWorker(t, addon, 'cpu', logger);
  t.equal((await loadStage(client, loadRequest(model, 'a'))).code, grpc.status.OK);
  const release = addon.hold();
  const running = collect<GenerateEvent__Output>(client.Generate({ requestId: 'r1', instanceId: 'a', promptTokenIds: prompt, maxTokens: 3 }));
  await addon.forwardsStarted(1);
  let answered = false;
  const out = swapOut(client, 'a').then((r) => {
    answered = true;
    return r;
  });
  await logged('swap-out waits for running requests');
  const refused = await generate(client, { requestId: 'r2', instanceId: 'a', promptTokenIds: prompt, maxTokens: 1 });
  t.equal(refused.code, grpc.status.FAILED_PRECONDITION);
  t.match(refused.details, /instance a is being swapped out/);
  t.equal(answered, false, 'the swap-out waits for the running request');
  t.equal(addon.liveStages(), 1);

  release();
  const reply = await out;
  t.equal(reply.error, null);
  t.same(reply.reply, { elapsedMs: reply.reply!.elapsedMs, bytes: 1000, source: '', device: -1 });
  const finished = await running;
  t.same(tokensOf(finished), [3, 4, 5], 'the running request completed');
  t.equal(finished.messages.at(-1)!.finish!.reason, 'LENGTH');
  t.equal(addon.liveStages(), 0, 'device copy dropped');
  t.equal(addon.liveBuffers(), 1, 'host copy kept');
  const s = await waitForSnapshot(client, (s) => s.instances[0]?.residency === 'HOST_ONLY');
  t.same([s.instances[0]!.device, s.instances[0]!.deviceBytes, s.instances[0]!.activeRequests], [-1, 0, 0]);
  t.ok(s.instances[0]!.lastUsedMs > 0, 'the finished request counts as a use');
});

t.test('SwapIn to another GPU moves the instance through its host copy without waiting for its requests', async (t) => {
  const addon = new FakeAddon();
  addon.devices = gpus(2);
  const client = await fakeWorker(t, addon, 'cuda');
  const full = 6 * 2 ** 30; // 8 GiB GPUs less the worker's 2 GiB runtime reserve
  t.equal((await loadStage(client, { ...loadRequest(model, 'a'), device: 0 })).code, grpc.status.OK);
  const loaded = await waitForSnapshot(client, (s) => s.instances[0]?.residency === 'ON_DEVICE');
  t.equal(loaded.hostCachePinned, true, 'the CUDA backend pins the host cache');
  t.same(
    loaded.devices.map((d) => d.freeBytes),
    [full - 1000, full],
    'device 0 accounts the stage',
  );

  const release = addon.hold();
  const running = collect<GenerateEvent__Output>(client.Generate({ requestId: 'r1', instanceId: 'a', promptTokenIds: prompt, maxTokens: 3 }));
  await addon.forwardsStarted(1);
  const moved = await swapIn(client, 'a', 1);
  t.equal(moved.error, null, 'the move does not wait for the running request');
  t.same([moved.reply!.source, moved.reply!.device], ['host', 1]);
  t.ok(moved.reply!.bytes > 0);
  t.same(addon.prepared, [0, 1], 'each device prepared before its stage');
  t.same(
    addon.stages.map((s) => [s.spec.device, s.disposed]),
    [
      [0, false],
      [1, false],
    ],
    'the old copy serves the running request',
  );
  t.equal(addon.stages[1]!.bound.size, addon.stages[0]!.bound.size, 'every tensor bound again');
  const both = await waitForSnapshot(client, (s) => s.instances[0]?.device === 1);
  t.same(
    both.devices.map((d) => d.freeBytes),
    [full - 1000, full - 1000],
    'both copies are accounted while the old one finishes',
  );

  release();
  t.same(tokensOf(await running), [3, 4, 5], 'the running request completed on the old copy');
  const after = await waitForSnapshot(client, (s) => s.devices[0]?.freeBytes === full);
  t.same(
    after.devices.map((d) => d.freeBytes),
    [full, full - 1000],
  );
  t.same(
    addon.stages.map((s) => s.disposed),
    [true, false],
    'the old copy went once its request ended',
  );
  t.same(tokensOf(await generate(client, { requestId: 'g', instanceId: 'a', promptTokenIds: prompt, maxTokens: 2 })), [3, 4]);

  t.equal((await swapOut(client, 'a')).error, null);
  const chosen = await swapIn(client, 'a', -1);
  t.equal(chosen.reply?.device, 0, '-1 picks the freest device (the first of equals)');
});

t.test('a move between GPUs with peer access copies device to device instead of through the host', async (t) => {
  const addon = new FakeAddon();
  addon.devices = gpus(2);
  addon.peerPairs.add('0>1');
  const client = await fakeWorker(t, addon, 'cuda');
  t.equal((await loadStage(client, { ...loadRequest(model, 'a'), device: 0 })).code, grpc.status.OK);
  await waitForSnapshot(client, (s) => s.instances[0]?.residency === 'ON_DEVICE');
  const moved = await swapIn(client, 'a', 1);
  t.equal(moved.error, null);
  t.same([moved.reply!.source, moved.reply!.device], ['peer', 1]);
  t.same(addon.clones, [1], 'the stage was cloned onto device 1');
  t.same(tokensOf(await generate(client, { requestId: 'p', instanceId: 'a', promptTokenIds: prompt, maxTokens: 2 })), [3, 4], 'the clone serves');

  const back = await swapIn(client, 'a', 0);
  t.same([back.reply!.source, back.reply!.device], ['host', 0], 'no peer access from 1 to 0: the host path');
  t.same(addon.clones, [1]);
});

t.test('swaps of a loading instance are refused', async (t) => {
  const addon = new FakeAddon();
  const client = await fakeWorker(t, addon, 'cpu');
  const http = await heldDirectory(model.dir);
  t.teardown(() => http.close());
  const loading = loadStage(client, loadRequest(model, 'a', http.url));
  await waitForSnapshot(client, (s) => s.instances.some((i) => i.residency === 'LOADING' && i.hostBytes > 0));
  const into = await swapIn(client, 'a', -1);
  t.equal(into.error?.code, grpc.status.FAILED_PRECONDITION);
  t.match(into.error?.details, /still loading/);
  t.equal((await swapOut(client, 'a')).error?.code, grpc.status.FAILED_PRECONDITION);
  http.release();
  t.equal((await loading).code, grpc.status.OK);
});

t.test('a full host pool evicts a host-only copy and retries', async (t) => {
  const addon = new FakeAddon();
  const client = await fakeWorker(t, addon, 'cpu');
  t.equal((await loadStage(client, loadRequest(model, 'a'))).code, grpc.status.OK);
  t.equal((await loadStage(client, loadRequest(model, 'b'))).code, grpc.status.OK);
  t.equal((await swapOut(client, 'a')).error, null);
  addon.failAllocOnce = 'OutOfMemoryError';
  const c = await loadStage(client, loadRequest(model, 'c'));
  t.equal(c.code, grpc.status.OK, c.details);
  const s = await waitForSnapshot(client, (s) => !s.instances.some((i) => i.instanceId === 'a') && s.instances.length === 2);
  t.same(s.instances.map((i) => i.instanceId).sort(), ['b', 'c'], 'the host-only copy went, the one on the device stayed');
  t.equal(addon.liveBuffers(), 2);
  t.equal((await swapIn(client, 'a', -1)).error?.code, grpc.status.NOT_FOUND, 'an evicted instance is gone');
});

t.test('a device out of memory during a swap-in leaves the instance host-only and able to retry', async (t) => {
  const addon = new FakeAddon();
  const client = await fakeWorker(t, addon, 'cpu');
  t.equal((await loadStage(client, loadRequest(model, 'a'))).code, grpc.status.OK);
  t.equal((await swapOut(client, 'a')).error, null);
  addon.failCreateOnce = 'OutOfMemoryError';
  const failed = await swapIn(client, 'a', -1);
  t.equal(failed.error?.code, grpc.status.RESOURCE_EXHAUSTED);
  t.match(failed.error?.details, /instance a needs 1000 bytes on device 0: cudaMalloc: out of memory/);
  const s = await waitForSnapshot(client, (s) => s.instances[0]?.residency === 'HOST_ONLY');
  t.same([s.instances[0]!.device, s.instances[0]!.deviceBytes], [-1, 0], 'nothing reserved');
  t.equal(addon.liveStages(), 0);
  t.equal((await swapIn(client, 'a', -1)).error, null);
  t.same(tokensOf(await generate(client, { requestId: 'g', instanceId: 'a', promptTokenIds: prompt, maxTokens: 2 })), [3, 4]);
});

/** Records the order of runtime init and stage creation; its pool cannot be pinned. */
class Unpinnable extends FakeAddon {
  readonly order: string[] = [];
  override configureHostPool(bytes: number): HostPoolInfo {
    return super.configureHostPool(bytes, false);
  }
  override prepareDevice(backend: string, device: number): Promise<void> {
    this.order.push(`prepare ${device}`);
    return super.prepareDevice(backend, device);
  }
  override createStage(spec: StageSpec): StageHandle {
    this.order.push(`create ${spec.device}`);
    return super.createStage(spec);
  }
}

t.test('runtime init is prepared before the stage; an unpinned host cache is reported and logged', async (t) => {
  const addon = new Unpinnable();
  addon.devices = gpus(1);
  const { logger, lines } = capturedLogger();
  const client = await fakeWorker(t, addon, 'cuda', logger);
  t.ok(lines.some((l) => l.includes('could not pin the host cache')), 'a warning says the pool is pageable');
  t.equal((await loadStage(client, loadRequest(model, 'a'))).code, grpc.status.OK);
  t.same(addon.order, ['prepare 0', 'create 0']);
  const s = await waitForSnapshot(client, (s) => s.instances[0]?.residency === 'ON_DEVICE');
  t.equal(s.hostCachePinned, false);
});

t.test('a host cache that cannot be allocated fails the start with a clear error', async (t) => {
  const addon = new FakeAddon();
  addon.configureHostPool = () => {
    const e = new Error('could not allocate a host buffer of 68719476736 bytes');
    e.name = 'OutOfMemoryError';
    throw e;
  };
  await t.rejects(startWorkerWith(testWorkerOptions({ hostCacheBytes: 64 * 1024 ** 3 }), { addon, backend: 'cpu', logger: pino({ level: 'silent' }) }), {
    message: /cannot allocate the host cache of 68719476736 bytes \(--host-cache-bytes\): could not allocate/,
  });
});
