// Swapping on the real CPU backend over gRPC: a swap-out keeps the host copy and a swap-in
// rebuilds the stage from it with the same greedy output as before; the host cache evicts
// host-only instances least recently used first when a new copy does not fit; a device budget
// refuses loads and swap-ins that do not fit with RESOURCE_EXHAUSTED naming the bytes; and
// swaps of unknown instances answer NOT_FOUND. Each subtest runs its own worker (the host pool
// is one per process and each worker configures it).
import * as grpc from '@grpc/grpc-js';
import t from 'tap';
import type { UnloadStageReply__Output } from '../../protos/generated/paraserve/v1/UnloadStageReply.js';
import type { WorkerClient } from '../../protos/generated/paraserve/v1/Worker.js';
import type { WorkerSnapshot__Output } from '../../protos/generated/paraserve/v1/WorkerSnapshot.js';
import { startWorker, type WorkerOptions } from '../../worker/daemon/main.js';
import {
  clientOf,
  generate,
  loadRequest,
  loadStage,
  scratchModel,
  swapIn,
  swapOut,
  testWorkerOptions,
  tokensOf,
  unary,
  waitForSnapshot,
  type TestModel,
} from './fixtures/harness.js';

const base: WorkerOptions = testWorkerOptions({ id: 'swap-worker' });

const model: TestModel = await scratchModel(t, 'swap');

const prompt = [5, 17, 42, 99, 3];

function worker(t: { teardown: (fn: () => unknown) => void }, overrides: Partial<WorkerOptions>): Promise<WorkerClient> {
  return clientOf(t, startWorker({ ...base, ...overrides }));
}

async function greedy(client: WorkerClient, instanceId: string): Promise<number[]> {
  const outcome = await generate(client, { requestId: '', instanceId, promptTokenIds: prompt, maxTokens: 12 });
  if (outcome.code !== grpc.status.OK) throw new Error(`generate on ${instanceId}: ${outcome.code} ${outcome.details}`);
  return tokensOf(outcome);
}

async function load(client: WorkerClient, instanceId: string): Promise<{ code: grpc.status; details: string }> {
  return loadStage(client, loadRequest(model, instanceId));
}

function instance(snapshot: WorkerSnapshot__Output, id: string) {
  return snapshot.instances.find((i) => i.instanceId === id) ?? null;
}

t.test('swap out then in: host copy kept, same greedy tokens, replies and snapshots say where it is', async (t) => {
  const client = await worker(t, {});
  t.equal((await load(client, 'a')).code, grpc.status.OK);
  const before = await greedy(client, 'a');
  const loaded = await waitForSnapshot(client, (s) => instance(s, 'a')?.activeRequests === 0 && instance(s, 'a')!.lastUsedMs > 0);
  t.equal(loaded.hostCachePinned, false, 'the CPU backend does not pin');
  t.equal(loaded.hostCacheLimit, base.hostCacheBytes);
  const onDevice = instance(loaded, 'a')!;
  t.ok(onDevice.deviceBytes > 0 && onDevice.hostBytes > 0);

  const out = await swapOut(client, 'a');
  t.equal(out.error, null);
  t.same([out.reply!.source, out.reply!.device], ['', -1]);
  t.equal(out.reply!.bytes, onDevice.deviceBytes, 'frees what the stage held');
  t.ok(out.reply!.elapsedMs >= 0);
  const swapped = await waitForSnapshot(client, (s) => instance(s, 'a')?.residency === 'HOST_ONLY');
  t.same(
    [instance(swapped, 'a')!.deviceBytes, instance(swapped, 'a')!.device, instance(swapped, 'a')!.hostBytes],
    [0, -1, onDevice.hostBytes],
    'device copy dropped, host copy kept',
  );

  const refused = await generate(client, { requestId: 'r', instanceId: 'a', promptTokenIds: prompt, maxTokens: 2 });
  t.equal(refused.code, grpc.status.FAILED_PRECONDITION);
  t.match(refused.details, /host_only/);

  const again = await swapOut(client, 'a');
  t.same([again.error, again.reply!.bytes, again.reply!.device], [null, 0, -1], 'a second swap-out is a no-op');

  const into = await swapIn(client, 'a', -1);
  t.equal(into.error, null);
  t.same([into.reply!.source, into.reply!.device], ['host', 0]);
  t.ok(into.reply!.bytes > 0 && into.reply!.bytes <= onDevice.hostBytes, 'copied the tensors of the host copy');
  const back = await waitForSnapshot(client, (s) => instance(s, 'a')?.residency === 'ON_DEVICE');
  t.equal(instance(back, 'a')!.device, 0);
  t.same(await greedy(client, 'a'), before, 'same greedy tokens after the round trip');

  const same = await swapIn(client, 'a', 0);
  t.same([same.error, same.reply!.bytes, same.reply!.source, same.reply!.device], [null, 0, '', 0], 'already there: a no-op');

  const elsewhere = await swapIn(client, 'a', 3);
  t.equal(elsewhere.error?.code, grpc.status.INVALID_ARGUMENT);
  t.match(elsewhere.error?.details, /device 3 does not exist/);
});

t.test('concurrent swaps of one instance run one at a time, in order', async (t) => {
  const client = await worker(t, {});
  t.equal((await load(client, 'a')).code, grpc.status.OK);
  const before = await greedy(client, 'a');
  const replies = await Promise.all([swapOut(client, 'a'), swapIn(client, 'a', -1), swapOut(client, 'a'), swapIn(client, 'a', 0), swapIn(client, 'a', -1)]);
  t.same(
    replies.map((r) => [r.error?.code ?? 0, r.reply?.device, r.reply?.source]),
    [
      [0, -1, ''],
      [0, 0, 'host'],
      [0, -1, ''],
      [0, 0, 'host'],
      [0, 0, ''],
    ],
  );
  const s = await waitForSnapshot(client, (s) => instance(s, 'a')?.residency === 'ON_DEVICE');
  t.equal(instance(s, 'a')!.device, 0);
  t.same(await greedy(client, 'a'), before);
});

t.test('LoadStage of a host-only instance swaps it back in', async (t) => {
  const client = await worker(t, {});
  t.equal((await load(client, 'a')).code, grpc.status.OK);
  const before = await greedy(client, 'a');
  t.equal((await swapOut(client, 'a')).error, null);
  const reload = await load(client, 'a');
  t.equal(reload.code, grpc.status.OK, reload.details);
  t.same(await greedy(client, 'a'), before);
});

t.test('unknown instances answer NOT_FOUND; an unloaded one too', async (t) => {
  const client = await worker(t, {});
  for (const id of ['nope', '']) {
    const into = await swapIn(client, id, -1);
    t.equal(into.error?.code, grpc.status.NOT_FOUND, `SwapIn ${JSON.stringify(id)}`);
    const out = await swapOut(client, id);
    t.equal(out.error?.code, grpc.status.NOT_FOUND, `SwapOut ${JSON.stringify(id)}`);
    t.match(out.error?.details, /unknown instance/);
  }
  t.equal((await load(client, 'a')).code, grpc.status.OK);
  t.equal((await swapOut(client, 'a')).error, null);
  const unload = await unary<UnloadStageReply__Output>((o, cb) => client.UnloadStage({ instanceId: 'a' }, o, cb));
  t.ok(unload.reply!.freedBytes > 0, 'unloading a host-only instance frees its host copy');
  t.equal((await swapIn(client, 'a', -1)).error?.code, grpc.status.NOT_FOUND);
});

t.test('a full host cache evicts host-only instances, least recently used first', async (t) => {
  // Room for two host copies, not three.
  const probe = await worker(t, {});
  t.equal((await load(probe, 'p')).code, grpc.status.OK);
  const copy = instance(await waitForSnapshot(probe, (s) => instance(s, 'p')?.residency === 'ON_DEVICE'), 'p')!.hostBytes;
  const client = await worker(t, { id: 'small-cache', hostCacheBytes: Math.floor(2.5 * copy) });

  t.equal((await load(client, 'a')).code, grpc.status.OK);
  t.equal((await load(client, 'b')).code, grpc.status.OK);
  const expected = await greedy(client, 'b');
  t.equal((await swapOut(client, 'b')).error, null);
  t.equal((await swapOut(client, 'a')).error, null);
  // b is used after a (a swap-out is not a use): a is the least recently used.
  const c = await load(client, 'c');
  t.equal(c.code, grpc.status.OK, c.details);
  let s = await waitForSnapshot(client, (s) => instance(s, 'a') === null && instance(s, 'c')?.residency === 'ON_DEVICE');
  t.equal(instance(s, 'b')?.residency, 'HOST_ONLY', 'the more recently used copy stays');
  t.ok(s.hostCacheBytes <= s.hostCacheLimit);
  t.equal((await swapIn(client, 'b', -1)).error, null);
  t.same(await greedy(client, 'b'), expected, 'the kept copy still serves the same tokens');
  t.equal((await swapOut(client, 'b')).error, null);

  const d = await load(client, 'd');
  t.equal(d.code, grpc.status.OK, d.details);
  s = await waitForSnapshot(client, (s) => instance(s, 'b') === null && instance(s, 'd')?.residency === 'ON_DEVICE');
  t.same(
    s.instances.map((i) => [i.instanceId, i.residency]).sort(),
    [
      ['c', 'ON_DEVICE'],
      ['d', 'ON_DEVICE'],
    ],
  );

  // Instances on a device keep their copies: nothing is left to evict.
  const e = await load(client, 'e');
  t.equal(e.code, grpc.status.RESOURCE_EXHAUSTED);
  t.match(e.details, new RegExp(`host cache full: instance e needs ${copy} bytes, \\d+ of ${Math.floor(2.5 * copy)} are free`));
  s = await waitForSnapshot(client, (s) => instance(s, 'e') === null);
  t.equal(s.instances.length, 2, 'the failed load left nothing behind');
});

t.test('a device budget refuses loads and swap-ins that do not fit, naming the bytes', async (t) => {
  const probe = await worker(t, {});
  t.equal((await load(probe, 'p')).code, grpc.status.OK);
  const weights = instance(await waitForSnapshot(probe, (s) => instance(s, 'p')?.residency === 'ON_DEVICE'), 'p')!.deviceBytes;
  const budget = Math.floor(1.5 * weights);
  const client = await worker(t, { id: 'small-device', deviceMemoryBytes: budget });

  t.equal((await load(client, 'a')).code, grpc.status.OK);
  const s = await waitForSnapshot(client, (s) => instance(s, 'a')?.residency === 'ON_DEVICE');
  t.same([s.devices[0]!.totalBytes, s.devices[0]!.freeBytes], [budget, budget - weights], 'the device accounts what the stage holds');

  const b = await load(client, 'b');
  t.equal(b.code, grpc.status.RESOURCE_EXHAUSTED);
  t.match(b.details, new RegExp(`instance b needs \\d+ bytes on device 0 \\(cpu\\), ${budget - weights} of ${budget} are free`));

  t.equal((await swapOut(client, 'a')).error, null);
  t.equal((await load(client, 'b')).code, grpc.status.OK, 'fits once a is swapped out');
  const into = await swapIn(client, 'a', -1);
  t.equal(into.error?.code, grpc.status.RESOURCE_EXHAUSTED);
  t.match(into.error?.details, new RegExp(`instance a needs ${weights} bytes on device 0 \\(cpu\\), \\d+ of ${budget} are free`));
  const still = await waitForSnapshot(client, (s) => instance(s, 'a')?.residency === 'HOST_ONLY' && instance(s, 'b')?.residency === 'ON_DEVICE');
  t.equal(instance(still, 'a')!.deviceBytes, 0, 'a refused swap-in reserves nothing');

  t.equal((await swapOut(client, 'b')).error, null);
  const retry = await swapIn(client, 'a', 0);
  t.equal(retry.error, null);
  t.equal(retry.reply!.device, 0);
  t.equal((await greedy(client, 'a')).length, 12);
});
