// The daemon's orchestration with a fake addon, where the test decides when forwards and
// fetches complete: the warm-up a load asks for, Drain waiting for a request to finish, Unload
// during generation, two LoadStage calls for one instance, a load abandoned by its client, a
// stalled source, and native failures during a load — each checked to free every buffer and
// stage the daemon allocated.
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import t from 'tap';
import type { DrainReply__Output } from '../../protos/generated/paraserve/v1/DrainReply.js';
import type { GenerateEvent__Output } from '../../protos/generated/paraserve/v1/GenerateEvent.js';
import type { UnloadStageReply__Output } from '../../protos/generated/paraserve/v1/UnloadStageReply.js';
import type { WorkerClient } from '../../protos/generated/paraserve/v1/Worker.js';
import { startWorkerWith, type WorkerOptions } from '../../worker/daemon/main.js';
import { FakeAddon } from './fixtures/fake-addon.js';
import {
  clientOf,
  collect,
  generate,
  heldDirectory,
  loadRequest,
  loadStage,
  scratchModel,
  testWorkerOptions,
  tokensOf,
  unary,
  waitForSnapshot,
  type TestModel,
} from './fixtures/harness.js';

const options: WorkerOptions = testWorkerOptions({ id: 'fake-worker' });

const model: TestModel = await scratchModel(t, 'fake-worker');

async function fakeWorker(
  t: { teardown: (fn: () => unknown) => void },
  overrides: Partial<WorkerOptions> = {},
): Promise<{ addon: FakeAddon; client: WorkerClient }> {
  const addon = new FakeAddon();
  const client = await clientOf(t, startWorkerWith({ ...options, ...overrides }, { addon, backend: 'cpu', logger: pino({ level: 'silent' }) }));
  return { addon, client };
}

const prompt = [3, 4, 5];

t.test('Drain waits for in-flight requests and counts them finished', async (t) => {
  const { addon, client } = await fakeWorker(t);
  t.equal((await loadStage(client, loadRequest(model, 'a'))).code, grpc.status.OK);
  const release = addon.hold();
  const running = collect<GenerateEvent__Output>(client.Generate({ requestId: 'r1', instanceId: 'a', promptTokenIds: prompt, maxTokens: 3 }));
  await addon.forwardsStarted(1);
  const drain = unary<DrainReply__Output>((o, cb) => client.Drain({ deadlineMs: 30_000 }, o, cb));
  await waitForSnapshot(client, (s) => s.state === 'DRAINING');
  const refused = await generate(client, { requestId: 'r2', instanceId: 'a', promptTokenIds: prompt, maxTokens: 1 });
  t.equal(refused.code, grpc.status.UNAVAILABLE);
  t.equal(refused.details, 'worker is draining');
  release();
  t.same((await drain).reply, { finished: 1, cancelled: 0 });
  const outcome = await running;
  t.same(tokensOf(outcome), [3, 4, 5]);
  t.equal(outcome.messages.at(-1)!.finish!.reason, 'LENGTH');
  t.same(addon.released, [1]);
});

t.test('UnloadStage cancels running requests, then frees the stage and buffer', async (t) => {
  const { addon, client } = await fakeWorker(t);
  t.equal((await loadStage(client, loadRequest(model, 'a'))).code, grpc.status.OK);
  t.equal(addon.liveBuffers(), 1);
  t.equal(addon.liveStages(), 1);
  const release = addon.hold();
  const running = collect<GenerateEvent__Output>(client.Generate({ requestId: 'r1', instanceId: 'a', promptTokenIds: prompt, maxTokens: 50 }));
  await addon.forwardsStarted(1);
  const unload = unary<UnloadStageReply__Output>((o, cb) => client.UnloadStage({ instanceId: 'a' }, o, cb));
  await waitForSnapshot(client, (s) => s.instances.length === 1);
  t.equal(addon.liveStages(), 1, 'the stage outlives the forward in flight');
  release();
  t.ok((await unload).reply!.freedBytes > 0);
  t.equal((await running).messages.at(-1)!.finish!.reason, 'CANCELLED');
  t.same(addon.released, [1]);
  t.equal(addon.liveBuffers(), 0);
  t.equal(addon.liveStages(), 0);
});

t.test("runtime init warms the stage up for the waiting requests' prompt lengths", async (t) => {
  const { addon, client } = await fakeWorker(t);
  const outcome = await loadStage(client, { ...loadRequest(model, 'a'), warmUpTokenCounts: [5, 300, 5] });
  t.equal(outcome.code, grpc.status.OK, outcome.details);
  t.same(addon.warmUps, [[5, 300]], 'each length once');
});

t.test('a second LoadStage of a loading instance waits for it', async (t) => {
  const { addon, client } = await fakeWorker(t);
  const http = await heldDirectory(model.dir);
  t.teardown(() => http.close());
  const first = loadStage(client, loadRequest(model, 'a', http.url));
  await waitForSnapshot(client, (s) => s.instances.some((i) => i.residency === 'LOADING' && i.hostBytes > 0));
  const second = loadStage(client, loadRequest(model, 'a', http.url));
  http.release();
  const [a, b] = await Promise.all([first, second]);
  t.equal(a.code, grpc.status.OK);
  t.equal(b.code, grpc.status.OK);
  t.equal(b.messages.at(-1)!.phase, 'READY');
  t.equal(addon.stages.length, 1, 'loaded once');
});

t.test('a client that abandons a load leaves nothing behind', async (t) => {
  const { addon, client } = await fakeWorker(t);
  const http = await heldDirectory(model.dir);
  t.teardown(() => http.close());
  const call = client.LoadStage(loadRequest(model, 'a', http.url));
  const outcome = collect(call);
  await waitForSnapshot(client, (s) => s.instances.some((i) => i.residency === 'LOADING' && i.hostBytes > 0));
  call.cancel();
  t.equal((await outcome).code, grpc.status.CANCELLED);
  const snapshot = await waitForSnapshot(client, (s) => s.instances.length === 0);
  t.equal(snapshot.hostCacheBytes, 0);
  t.equal(addon.liveBuffers(), 0);
  t.equal(addon.liveStages(), 0);
});

t.test('native failures during a load map to statuses and free everything', async (t) => {
  const { addon, client } = await fakeWorker(t);
  addon.failBind = 'InvalidArgumentError';
  const bad = await loadStage(client, loadRequest(model, 'a'));
  t.equal(bad.code, grpc.status.INVALID_ARGUMENT);
  t.match(bad.details, /wrong shape/);
  t.equal(addon.liveBuffers(), 0);
  t.equal(addon.liveStages(), 0);

  addon.failBind = null;
  addon.failAlloc = 'OutOfMemoryError';
  const oom = await loadStage(client, loadRequest(model, 'a'));
  t.equal(oom.code, grpc.status.RESOURCE_EXHAUSTED);
  t.match(oom.details, /cannot allocate/);

  addon.failAlloc = null;
  const ok = await loadStage(client, loadRequest(model, 'a'));
  t.equal(ok.code, grpc.status.OK);
  t.same(tokensOf(await generate(client, { requestId: 'g', instanceId: 'a', promptTokenIds: prompt, maxTokens: 2 })), [3, 4]);
});

t.test('a source that stalls past the fetch stall timeout fails the load with UNAVAILABLE', async (t) => {
  const { addon, client } = await fakeWorker(t, { fetchStallTimeoutMs: 300 });
  const http = await heldDirectory(model.dir);
  t.teardown(() => http.close());
  const started = Date.now();
  const outcome = await loadStage(client, loadRequest(model, 'a', http.url));
  t.equal(outcome.code, grpc.status.UNAVAILABLE, outcome.details);
  t.ok(Date.now() - started < 5_000, `failed after ${Date.now() - started} ms`);
  t.equal(addon.liveBuffers(), 0);
});

t.test('a request id in flight cannot be reused', async (t) => {
  const { addon, client } = await fakeWorker(t);
  t.equal((await loadStage(client, loadRequest(model, 'a'))).code, grpc.status.OK);
  const release = addon.hold();
  const running = collect(client.Generate({ requestId: 'same', instanceId: 'a', promptTokenIds: prompt, maxTokens: 1 }));
  await addon.forwardsStarted(1);
  const dup = await generate(client, { requestId: 'same', instanceId: 'a', promptTokenIds: prompt, maxTokens: 1 });
  t.equal(dup.code, grpc.status.ALREADY_EXISTS);
  release();
  t.equal((await running).code, grpc.status.OK);
});

t.test('NaN logits fail the request with INTERNAL and free its sequence', async (t) => {
  const { addon, client } = await fakeWorker(t);
  t.equal((await loadStage(client, loadRequest(model, 'a'))).code, grpc.status.OK);
  addon.nanLogits = true;
  const broken = await generate(client, { requestId: 'n', instanceId: 'a', promptTokenIds: prompt, maxTokens: 3 });
  t.equal(broken.code, grpc.status.INTERNAL);
  t.match(broken.details, /NaN/);
  t.same(addon.released, [1]);
  addon.nanLogits = false;
  t.equal(tokensOf(await generate(client, { requestId: 'n2', instanceId: 'a', promptTokenIds: prompt, maxTokens: 1 })).length, 1);
});
