// Pipeline execution on the CPU backend: the `demo` model (4 layers) split into 2 and into 4
// stages on in-process workers linked by ForwardActivations, against the same model whole on
// one worker. Greedy and seeded-sampled tokens must be identical (the last stage samples with
// the single-worker code path and the hidden states travel as exact float32); cancelling frees
// every stage's sequence; a stage unloaded or going away mid-request fails it with UNAVAILABLE;
// a stage swapped out and back in from its host copy serves the same tokens; a loading stage
// connects to the next stage's worker before any request, and drops the connection on unload.
import { connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import t, { type Test } from 'tap';
import type { GenerateEvent__Output } from '../../protos/generated/paraserve/v1/GenerateEvent.js';
import type { GenerateRequest } from '../../protos/generated/paraserve/v1/GenerateRequest.js';
import type { SwapReply__Output } from '../../protos/generated/paraserve/v1/SwapReply.js';
import type { UnloadStageReply__Output } from '../../protos/generated/paraserve/v1/UnloadStageReply.js';
import type { StageRange, StageRange__Output } from '../../protos/generated/paraserve/v1/StageRange.js';
import type { WorkerClient } from '../../protos/generated/paraserve/v1/Worker.js';
import { startWorker, type RunningWorker, type WorkerOptions } from '../../worker/daemon/main.js';
import { decodeHidden, encodeHidden, nextStageAddress, peersProblem } from '../../worker/daemon/pipeline.js';
import {
  collect,
  firstToken,
  generate,
  loadRequest,
  loadStage,
  makeModel,
  pipelineRanges,
  tempDir,
  tokensOf,
  unary,
  waitForSnapshot,
  workerClient,
  type TestModel,
} from './fixtures/harness.js';

const NUM_LAYERS = 4;

function options(id: string, drainTimeoutMs: number): WorkerOptions {
  return {
    id,
    host: '127.0.0.1',
    port: 0,
    gatewayUrl: null,
    backend: 'cpu',
    hostCacheBytes: 512 * 1024 * 1024,
    maxContext: 256,
    drainTimeoutMs,
    logLevel: 'silent',
    fetchBandwidthBytesPerS: null,
    loadOverlap: true,
    fetchThreads: 1,
  };
}

const scratch = await tempDir('pipeline');
const model: TestModel = await makeModel(join(scratch.path, 'model'), 'demo');
// The stage-1 worker drains quickly, so closing it mid-request is a prompt "peer gone".
const workers: RunningWorker[] = await Promise.all([0, 1, 2, 3].map((i) => startWorker(options(`stage-${i}`, i === 1 ? 100 : 5_000))));
const clients: WorkerClient[] = workers.map((w) => workerClient(w.address));
const closed = new Set<number>();

t.teardown(async () => {
  for (const c of clients) c.close();
  await Promise.all(workers.map((w, i) => (closed.has(i) ? Promise.resolve() : w.close())));
  await scratch.remove();
});

function ranges(k: number): StageRange[] {
  return pipelineRanges(NUM_LAYERS, k);
}

/** Loads a k-stage pipeline `instanceId` onto workers 0..k-1; every stage must reach READY. */
async function loadPipeline(t: Test, instanceId: string, k: number): Promise<void> {
  const peers = workers.slice(0, k).map((w) => w.address);
  const outcomes = await Promise.all(
    ranges(k).map((stage, i) => loadStage(clients[i]!, { ...loadRequest(model, instanceId), stage, peers })),
  );
  for (const [i, o] of outcomes.entries()) t.equal(o.code, grpc.status.OK, `stage ${i} of ${instanceId} loaded: ${o.details}`);
}

const prompt = [5, 17, 42, 99, 3, 1000, 7];

function request(instanceId: string, requestId: string, extra: Partial<GenerateRequest>): GenerateRequest {
  return { requestId, instanceId, promptTokenIds: prompt, maxTokens: 16, stopTokenIds: [], ...extra };
}

t.test('peers must match a partial stage', async (t) => {
  const middle = { layerStart: 1, layerEnd: 2, hasEmbeddings: false, hasHead: false, stageIndex: 1, stageCount: 4 };
  t.equal(peersProblem(null, []), null, 'a whole model needs no peers');
  t.match(peersProblem(middle, ['a', 'b']), /4 stages/);
  t.match(peersProblem(middle, ['a', 'b', '', 'd']), /peers\[2\]/);
  t.match(peersProblem({ ...middle, stageCount: 1, stageIndex: 0 }, ['a']), /stage_count/);
  t.equal(peersProblem(middle, ['a', 'b', 'c', 'd']), null);
  const bad = await loadStage(clients[0]!, { ...loadRequest(model, 'no-peers'), stage: ranges(2)[0]!, peers: [] });
  t.equal(bad.code, grpc.status.INVALID_ARGUMENT, 'LoadStage of a partial stage without peers is refused');
});

t.test("a stage's next stage is the peer after it, if any", async (t) => {
  const stage = (stageIndex: number, stageCount: number, whole = false): StageRange__Output => ({
    layerStart: 0, layerEnd: 1, hasEmbeddings: whole || stageIndex === 0, hasHead: whole || stageIndex === stageCount - 1, stageIndex, stageCount,
  });
  const peers = ['a:1', 'b:2', 'c:3'];
  t.equal(nextStageAddress(stage(0, 3), peers), 'b:2');
  t.equal(nextStageAddress(stage(1, 3), peers), 'c:3');
  t.equal(nextStageAddress(stage(2, 3), peers), null, 'the last stage sends to nobody');
  t.equal(nextStageAddress(stage(0, 1, true), []), null, 'a whole model has no next stage');
});

t.test('a loading stage connects to the next stage before any request and lets go on unload', async (t) => {
  // A TCP proxy in front of the next stage's worker, to see the connection come and go.
  const sockets: Socket[] = [];
  const closed: Socket[] = [];
  const [host, upstreamPort] = workers[1]!.address.split(':');
  const next = createServer((socket) => {
    sockets.push(socket);
    socket.on('close', () => closed.push(socket));
    const upstream = connect(Number(upstreamPort), host);
    socket.pipe(upstream).pipe(socket);
    upstream.on('error', () => socket.destroy());
    socket.on('error', () => upstream.destroy());
    socket.on('close', () => upstream.destroy());
  });
  await new Promise<void>((resolve) => next.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const socket of sockets) socket.destroy();
    next.close();
  });
  const port = (next.address() as { port: number }).port;
  const stage = ranges(2)[0]!;
  const loaded = await loadStage(clients[0]!, { ...loadRequest(model, 'p2-connect'), stage, peers: [workers[0]!.address, `127.0.0.1:${port}`] });
  t.equal(loaded.code, grpc.status.OK, loaded.details);
  const deadline = Date.now() + 5_000;
  while (sockets.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  t.equal(sockets.length, 1, 'one connection to the next stage, opened by the load');
  const unloaded = await unary<UnloadStageReply__Output>((o, cb) => clients[0]!.UnloadStage({ instanceId: 'p2-connect' }, o, cb));
  t.equal(unloaded.error, null);
  while (closed.length === 0 && Date.now() < deadline + 5_000) await new Promise((resolve) => setTimeout(resolve, 20));
  t.equal(closed.length, 1, 'closed once the stage is gone');
});

t.test('hidden states survive the wire exactly', async (t) => {
  const values = Float32Array.from([0, -0, 1.5, -3.25e-7, 65504.5, Math.PI, -Infinity, 1e-40]);
  const back = decodeHidden(encodeHidden(values), 2);
  t.same([...back].map((v) => Object.is(v, -0) ? '-0' : v), [...values].map((v) => Object.is(v, -0) ? '-0' : v));
  t.throws(() => decodeHidden(new Uint8Array(12), 2), { name: 'WorkerError' });
});

t.test('2- and 4-stage pipelines give the single worker tokens', async (t) => {
  const whole = await loadStage(clients[0]!, loadRequest(model, 'whole'));
  t.equal(whole.code, grpc.status.OK, whole.details);
  await loadPipeline(t, 'p2', 2);
  await loadPipeline(t, 'p4', 4);

  const cases: [string, Partial<GenerateRequest>][] = [
    ['greedy', {}],
    ['seeded sampling', { sampling: { temperature: 0.9, topP: 0.95, seed: 1234 } }],
    ['seeded, with a stop token', { sampling: { temperature: 1.2, topP: 1, seed: 77 }, maxTokens: 40 }],
  ];
  for (const [name, extra] of cases) {
    const single = await generate(clients[0]!, request('whole', `whole-${name}`, extra));
    t.equal(single.code, grpc.status.OK, single.details);
    const expected = tokensOf(single);
    t.ok(expected.length > 0, `${name}: the single worker generated tokens`);
    const finish = single.messages.at(-1)?.finish;
    for (const [instance, k] of [['p2', 2], ['p4', 4]] as const) {
      const piped = await generate(clients[0]!, request(instance, `${instance}-${name}`, extra));
      t.equal(piped.code, grpc.status.OK, `${name} through ${k} stages: ${piped.details}`);
      t.same(tokensOf(piped), expected, `${name} through ${k} stages equals the single worker`);
      const pipedFinish = piped.messages.at(-1)?.finish;
      t.equal(pipedFinish?.reason, finish?.reason, `${name} through ${k} stages ends the same way`);
      t.equal(pipedFinish?.completionTokens, expected.length);
      t.equal(pipedFinish?.promptTokens, prompt.length);
    }
  }

  // A stop token taken from the greedy output ends the pipeline at the same place.
  const greedy = tokensOf(await generate(clients[0]!, request('whole', 'whole-stop-probe', {})));
  const stopAt = greedy[3]!;
  const stopped = await generate(clients[0]!, request('p4', 'p4-stop', { stopTokenIds: [stopAt] }));
  t.same(tokensOf(stopped), greedy.slice(0, greedy.indexOf(stopAt) + 1), 'stops after the stop token');
  t.equal(stopped.messages.at(-1)?.finish?.reason, 'STOP');

  const wrongStage = await generate(clients[1]!, request('p4', 'p4-wrong-stage', {}));
  t.equal(wrongStage.code, grpc.status.FAILED_PRECONDITION, 'Generate on stage 1 is refused');
  t.match(wrongStage.details, /stage 0/);
});

t.test('pipeline stages keep their host copies: swapped out and back in, they give the same tokens', async (t) => {
  const expected = tokensOf(await generate(clients[0]!, request('whole', 'whole-swap', {})));
  for (const i of [0, 1]) {
    const s = await waitForSnapshot(clients[i]!, (s) => s.instances.some((x) => x.instanceId === 'p2' && x.residency === 'ON_DEVICE'));
    t.ok(s.instances.find((x) => x.instanceId === 'p2')!.hostBytes > 0, `stage ${i} holds a host copy`);
  }
  const out = await unary<SwapReply__Output>((o, cb) => clients[1]!.SwapOut({ instanceId: 'p2' }, o, cb));
  t.same([out.error, out.reply?.device], [null, -1], 'stage 1 swapped out');
  const refused = await generate(clients[0]!, request('p2', 'p2-host-only', {}));
  t.equal(refused.code, grpc.status.FAILED_PRECONDITION, 'a host-only stage fails the request upstream');
  t.match(refused.details, /host_only/);
  const into = await unary<SwapReply__Output>((o, cb) => clients[1]!.SwapIn({ instanceId: 'p2', device: -1 }, o, cb));
  t.same([into.error, into.reply?.source], [null, 'host'], 'stage 1 swapped in');
  t.same(tokensOf(await generate(clients[0]!, request('p2', 'p2-swapped', {}))), expected);
});

/** Each worker's view of instance `id`: active requests and device bytes. */
async function stageFacts(id: string, indexes: number[]): Promise<{ active: number; deviceBytes: number }[]> {
  return Promise.all(
    indexes.map(async (i) => {
      const s = await waitForSnapshot(clients[i]!, (s) => s.instances.some((x) => x.instanceId === id && x.activeRequests === 0));
      const inst = s.instances.find((x) => x.instanceId === id)!;
      return { active: inst.activeRequests, deviceBytes: inst.deviceBytes };
    }),
  );
}

t.test('cancelling a pipelined request frees every stage', async (t) => {
  const before = await stageFacts('p4', [0, 1, 2, 3]);
  const call = clients[0]!.Generate(request('p4', 'p4-cancel', { maxTokens: 0 }), { deadline: Date.now() + 60_000 });
  const outcome = collect(call);
  await firstToken(call);
  const busy = await Promise.all(
    [1, 2, 3].map((i) => waitForSnapshot(clients[i]!, (s) => s.instances.some((x) => x.instanceId === 'p4' && x.activeRequests === 1))),
  );
  t.equal(busy.length, 3, 'every downstream stage tracks the request');
  call.cancel();
  t.equal((await outcome).code, grpc.status.CANCELLED);
  const after = await stageFacts('p4', [0, 1, 2, 3]);
  t.same(after, before, 'no stage keeps the request or its KV cache');
});

t.test('unloading the last stage mid-request fails it upstream instead of hanging', async (t) => {
  const call = clients[0]!.Generate(request('p2', 'p2-unload', { maxTokens: 0 }), { deadline: Date.now() + 60_000 });
  const outcome = collect<GenerateEvent__Output>(call);
  await firstToken(call);
  const unloaded = await unary<UnloadStageReply__Output>((o, cb) => clients[1]!.UnloadStage({ instanceId: 'p2' }, o, cb));
  t.equal(unloaded.error, null, 'stage 1 unloaded');
  const ended = await outcome;
  t.equal(ended.code, grpc.status.UNAVAILABLE, ended.details);
  t.match(ended.details, /unloaded/);
  const [first] = await stageFacts('p2', [0]);
  t.equal(first?.active, 0, 'stage 0 ended the request');
});

t.test('a middle stage going away fails the request with UNAVAILABLE, promptly', async (t) => {
  const call = clients[0]!.Generate(request('p4', 'p4-peer-gone', { maxTokens: 0 }), { deadline: Date.now() + 60_000 });
  const outcome = collect<GenerateEvent__Output>(call);
  await firstToken(call);
  const started = Date.now();
  closed.add(1);
  await workers[1]!.close();
  const ended = await outcome;
  t.equal(ended.code, grpc.status.UNAVAILABLE, ended.details);
  t.match(ended.details, /stage 1/);
  t.ok(Date.now() - started < 5_000, `failed ${Date.now() - started} ms after the peer went away`);
  const left = await stageFacts('p4', [0, 2, 3]);
  t.ok(left.every((f) => f.active === 0), 'the other stages ended the request');
});
