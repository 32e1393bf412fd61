// The worker daemon end to end on the CPU backend: a real gRPC client against startWorker on
// 127.0.0.1:0, a synthetic tiny model loaded from file:// and from an HTTP server with Range
// support (also with the stage's tensor layout given, reading no header), streamed generation,
// cancellation observed through WatchEvents snapshots, and bad inputs answered with the right
// status while the worker keeps serving.
import { copyFile, mkdir, open } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import t from 'tap';
import type { CancelReply__Output } from '../../protos/generated/paraserve/v1/CancelReply.js';
import type { DrainReply__Output } from '../../protos/generated/paraserve/v1/DrainReply.js';
import type { HealthReply__Output } from '../../protos/generated/paraserve/v1/HealthReply.js';
import type { SwapReply__Output } from '../../protos/generated/paraserve/v1/SwapReply.js';
import type { UnloadStageReply__Output } from '../../protos/generated/paraserve/v1/UnloadStageReply.js';
import type { GenerateEvent__Output } from '../../protos/generated/paraserve/v1/GenerateEvent.js';
import type { WorkerEvent__Output } from '../../protos/generated/paraserve/v1/WorkerEvent.js';
import type { WorkerClient } from '../../protos/generated/paraserve/v1/Worker.js';
import { startWorker, type RunningWorker, type WorkerOptions } from '../../worker/daemon/main.js';
import { parseModelConfig } from '../../worker/models/config.js';
import { layoutOf, readCheckpointTensors } from '../../worker/models/safetensors.js';
import { openModelSource } from '../../worker/models/source.js';
import { planStageTensors, wholeModelRange } from '../../worker/models/stage-plan.js';
import {
  collect,
  firstToken,
  generate,
  loadRequest,
  loadStage,
  makeModel,
  serveDirectory,
  tempDir,
  tokensOf,
  unary,
  waitForSnapshot,
  watchEvents,
  workerClient,
  type TestModel,
} from './fixtures/harness.js';

const options: WorkerOptions = {
  id: 'test-worker',
  host: '127.0.0.1',
  port: 0,
  gatewayUrl: null,
  backend: 'cpu',
  hostCacheBytes: 256 * 1024 * 1024,
  maxContext: 512,
  drainTimeoutMs: 5_000,
  logLevel: 'silent',
  fetchBandwidthBytesPerS: null,
  loadOverlap: true,
  fetchThreads: 1,
};

const scratch = await tempDir('worker');
const model: TestModel = await makeModel(join(scratch.path, 'model'));
const http = await serveDirectory(model.dir);
const worker: RunningWorker = await startWorker(options);
const client: WorkerClient = workerClient(worker.address);

t.teardown(async () => {
  client.close();
  await worker.close();
  await http.close();
  await scratch.remove();
});

const prompt = [5, 17, 42, 99, 3];

t.test('LoadStage from file:// streams FETCH … READY and the instance serves', async (t) => {
  const { events, call: watch } = await watchEvents(client);

  const outcome = await loadStage(client, loadRequest(model, 'file-1'));
  t.equal(outcome.code, grpc.status.OK, outcome.details);
  const seen = outcome.messages.map((m) => m.phase);
  t.equal(seen[0], 'FETCH');
  t.equal(seen.at(-1), 'READY');
  t.ok(seen.includes('INIT') && seen.includes('COPY'));
  const fetches = outcome.messages.filter((m) => m.phase === 'FETCH');
  const lastFetch = fetches.at(-1)!;
  t.ok(lastFetch.bytesTotal > 0 && lastFetch.bytesDone === lastFetch.bytesTotal, 'all bytes fetched');
  t.ok(outcome.messages.every((m, i) => i === 0 || m.elapsedMs >= outcome.messages[i - 1]!.elapsedMs), 'elapsed grows');

  const snapshot = await waitForSnapshot(client, (s) => s.instances.some((i) => i.instanceId === 'file-1' && i.residency === 'ON_DEVICE'));
  watch.cancel();
  const phases = events.flatMap((e) => (e.phase?.instanceId === 'file-1' ? [`${e.phase.phase}:${e.phase.ended}`] : []));
  t.equal(phases[0], 'FETCH:false');
  t.same([...phases].sort(), ['COPY:false', 'COPY:true', 'FETCH:false', 'FETCH:true', 'INIT:false', 'INIT:true', 'READY:true'], 'each phase starts and ends once');
  for (const name of ['FETCH', 'INIT', 'COPY']) t.ok(phases.indexOf(`${name}:false`) < phases.indexOf(`${name}:true`), `${name} starts before it ends`);
  t.equal(phases.at(-1), 'READY:true');
  const instance = snapshot.instances.find((i) => i.instanceId === 'file-1')!;
  t.equal(instance.model, 'tiny');
  t.ok(instance.hostBytes >= lastFetch.bytesTotal);
  t.ok(instance.deviceBytes > 0);
  t.same(instance.stage, { layerStart: 0, layerEnd: 2, hasEmbeddings: true, hasHead: true, stageIndex: 0, stageCount: 1 });
});

t.test('LoadStage of a ready instance answers READY at once', async (t) => {
  const outcome = await loadStage(client, loadRequest(model, 'file-1'));
  t.equal(outcome.code, grpc.status.OK);
  t.same(
    outcome.messages.map((m) => m.phase),
    ['READY'],
  );
});

t.test('Generate streams tokens then a finish event', async (t) => {
  const outcome = await generate(client, { requestId: 'g1', instanceId: 'file-1', promptTokenIds: prompt, maxTokens: 8 });
  t.equal(outcome.code, grpc.status.OK, outcome.details);
  const tokens = outcome.messages.filter((m) => m.token);
  t.equal(tokens.length, 8);
  t.same(
    tokens.map((m) => m.token!.index),
    [0, 1, 2, 3, 4, 5, 6, 7],
  );
  t.ok(tokens.every((m) => m.token!.id >= 0 && m.token!.id < 512));
  const finish = outcome.messages.at(-1)!.finish!;
  t.equal(finish.reason, 'LENGTH');
  t.equal(finish.promptTokens, prompt.length);
  t.equal(finish.completionTokens, 8);
  t.ok(finish.prefillMs > 0 && finish.decodeMs > 0 && finish.queueMs >= 0);
});

t.test('greedy and seeded generation are deterministic', async (t) => {
  const greedyA = tokensOf(await generate(client, { requestId: 'd1', instanceId: 'file-1', promptTokenIds: prompt, maxTokens: 12 }));
  const greedyB = tokensOf(await generate(client, { requestId: 'd2', instanceId: 'file-1', promptTokenIds: prompt, maxTokens: 12 }));
  t.same(greedyA, greedyB);
  const sampling = { temperature: 1.5, topP: 0.95, seed: 2024 };
  const seededA = tokensOf(await generate(client, { requestId: 'd3', instanceId: 'file-1', promptTokenIds: prompt, maxTokens: 24, sampling }));
  const seededB = tokensOf(await generate(client, { requestId: 'd4', instanceId: 'file-1', promptTokenIds: prompt, maxTokens: 24, sampling }));
  const other = tokensOf(
    await generate(client, { requestId: 'd5', instanceId: 'file-1', promptTokenIds: prompt, maxTokens: 24, sampling: { ...sampling, seed: 7 } }),
  );
  t.equal(seededA.length, 24);
  t.same(seededA, seededB);
  t.notSame(seededA, other);
  const unseeded = { temperature: 1.5, topP: 1 };
  const freeA = tokensOf(await generate(client, { requestId: 'd6', instanceId: 'file-1', promptTokenIds: prompt, maxTokens: 24, sampling: unseeded }));
  const freeB = tokensOf(await generate(client, { requestId: 'd7', instanceId: 'file-1', promptTokenIds: prompt, maxTokens: 24, sampling: unseeded }));
  t.notSame(freeA, freeB, 'without a seed each request draws its own');
});

t.test('a stop token ends generation with STOP and is emitted', async (t) => {
  const greedy = tokensOf(await generate(client, { requestId: 's0', instanceId: 'file-1', promptTokenIds: prompt, maxTokens: 6 }));
  const stop = greedy[3]!;
  const firstAt = greedy.indexOf(stop);
  const outcome = await generate(client, { requestId: 's1', instanceId: 'file-1', promptTokenIds: prompt, maxTokens: 6, stopTokenIds: [stop] });
  t.same(tokensOf(outcome), greedy.slice(0, firstAt + 1));
  t.equal(outcome.messages.at(-1)!.finish!.reason, 'STOP');
});

t.test('LoadStage over http:// with Range gives the same model', async (t) => {
  const outcome = await loadStage(client, loadRequest(model, 'http-1', http.url));
  t.equal(outcome.code, grpc.status.OK, outcome.details);
  t.equal(outcome.messages.at(-1)!.phase, 'READY');
  const viaHttp = tokensOf(await generate(client, { requestId: 'h1', instanceId: 'http-1', promptTokenIds: prompt, maxTokens: 10 }));
  const viaFile = tokensOf(await generate(client, { requestId: 'h2', instanceId: 'file-1', promptTokenIds: prompt, maxTokens: 10 }));
  t.same(viaHttp, viaFile);
  const health = await unary<HealthReply__Output>((o, cb) => client.Health({}, o, cb));
  t.same(health.reply, { workerId: 'test-worker', state: 'READY', backend: 'cpu' });
});

t.test('LoadStage with the tensor layout given reads no header and gives the same model', async (t) => {
  const served = await serveDirectory(model.dir);
  t.teardown(() => served.close());
  const config = parseModelConfig(JSON.parse(model.configJson) as unknown);
  const tensors = layoutOf(planStageTensors(await readCheckpointTensors(openModelSource(model.uri)), config, wholeModelRange(config)));
  const outcome = await loadStage(client, { ...loadRequest(model, 'layout-1', served.url), tensors, warmUpTokenCounts: [prompt.length] });
  t.equal(outcome.code, grpc.status.OK, outcome.details);
  t.notOk(
    served.requests.some((r) => r.endsWith('bytes=0-7')),
    `no request for a header's length prefix (${served.requests.filter((r) => !r.startsWith('GET')).join('; ')})`,
  );
  t.ok(served.requests.some((r) => r.startsWith('HEAD /model.safetensors')), 'the file size is still checked against the registration');
  const viaLayout = tokensOf(await generate(client, { requestId: 'l1', instanceId: 'layout-1', promptTokenIds: prompt, maxTokens: 10 }));
  const viaFile = tokensOf(await generate(client, { requestId: 'l2', instanceId: 'file-1', promptTokenIds: prompt, maxTokens: 10 }));
  t.same(viaLayout, viaFile);

  // A file whose size changed since registration still fails the load, though the fetch runs
  // before the size check answers.
  const registered = model.files.map((f) => ({ path: f.path, size: f.size + 1, sha256: '' }));
  const changed = await loadStage(client, { ...loadRequest(model, 'layout-changed', served.url), source: { uri: served.url, files: registered }, tensors });
  t.equal(changed.code, grpc.status.FAILED_PRECONDITION, changed.details);
  t.match(changed.details, /model\.safetensors is \d+ bytes at the source but was registered with \d+/);
  const snapshot = await waitForSnapshot(client, () => true);
  t.notOk(snapshot.instances.some((i) => i.instanceId === 'layout-changed'), 'nothing of it stays');
});

t.test('a sharded checkpoint loads too', async (t) => {
  const sharded = await makeModel(join(scratch.path, 'sharded'), 'tiny-qwen2', true);
  const outcome = await loadStage(client, { ...loadRequest(sharded, 'sharded-1'), model: 'tiny-qwen2' });
  t.equal(outcome.code, grpc.status.OK, outcome.details);
  const gen = await generate(client, { requestId: 'q1', instanceId: 'sharded-1', promptTokenIds: prompt, maxTokens: 4 });
  t.equal(tokensOf(gen).length, 4);
  const unload = await unary<UnloadStageReply__Output>((o, cb) => client.UnloadStage({ instanceId: 'sharded-1' }, o, cb));
  t.ok(unload.reply!.freedBytes > 0);
});

/** The `long` instance (room for thousands of tokens) once no request runs on the worker. */
async function idleLongInstance() {
  const snapshot = await waitForSnapshot(client, (s) => s.activeRequests === 0 && s.instances.some((i) => i.instanceId === 'long'));
  return snapshot.instances.find((i) => i.instanceId === 'long')!;
}

t.test('max_context sets the KV capacity of an instance', async (t) => {
  const outcome = await loadStage(client, { ...loadRequest(model, 'long'), maxContext: 4096 });
  t.equal(outcome.code, grpc.status.OK, outcome.details);
  const fits = await generate(client, { requestId: 'l0', instanceId: 'long', promptTokenIds: Array.from({ length: 600 }, (_, i) => i % 500), maxTokens: 2 });
  t.equal(tokensOf(fits).length, 2, 'a 600-token prompt fits a 4096 context');
});

t.test('Cancel by request id ends the stream with CANCELLED and frees the sequence', async (t) => {
  const before = await idleLongInstance();
  const call = client.Generate({ requestId: 'long-1', instanceId: 'long', promptTokenIds: prompt, maxTokens: 0 });
  const done = collect(call);
  await firstToken(call);
  const cancel = await unary<CancelReply__Output>((o, cb) => client.Cancel({ requestId: 'long-1' }, o, cb));
  t.same(cancel.reply, { found: true });
  const outcome = await done;
  t.equal(outcome.code, grpc.status.OK);
  t.equal(outcome.messages.at(-1)!.finish!.reason, 'CANCELLED');
  t.ok(tokensOf(outcome).length < 4096 - prompt.length, 'stopped before the context filled');
  const after = await idleLongInstance();
  t.equal(after.deviceBytes, before.deviceBytes, 'KV cache released');
  const again = await unary<CancelReply__Output>((o, cb) => client.Cancel({ requestId: 'long-1' }, o, cb));
  t.same(again.reply, { found: false });
});

t.test('a client that cancels its call frees the sequence', async (t) => {
  const before = await idleLongInstance();
  const call = client.Generate({ requestId: 'long-2', instanceId: 'long', promptTokenIds: prompt, maxTokens: 0 });
  const done = collect(call);
  await firstToken(call);
  call.cancel();
  t.equal((await done).code, grpc.status.CANCELLED);
  const after = await idleLongInstance();
  t.equal(after.deviceBytes, before.deviceBytes, 'KV cache released');
  t.equal(after.activeRequests, 0);
});

t.test('concurrent requests on one instance each get their own sequence', async (t) => {
  const runs = await Promise.all(
    [0, 1, 2].map((i) => generate(client, { requestId: `c${i}`, instanceId: 'file-1', promptTokenIds: prompt, maxTokens: 10 })),
  );
  const [a, b, c] = runs.map(tokensOf);
  t.same(a, b);
  t.same(b, c);
  t.equal(a!.length, 10);
});

t.test('bad requests get precise statuses and the worker keeps serving', async (t) => {
  const unknown = await generate(client, { requestId: 'b1', instanceId: 'nope', promptTokenIds: prompt, maxTokens: 4 });
  t.equal(unknown.code, grpc.status.NOT_FOUND);
  t.match(unknown.details, /unknown instance "nope"/);

  const empty = await generate(client, { requestId: 'b2', instanceId: 'file-1', promptTokenIds: [], maxTokens: 4 });
  t.equal(empty.code, grpc.status.INVALID_ARGUMENT);
  t.match(empty.details, /prompt is empty/);

  const tooLong = await generate(client, {
    requestId: 'b3',
    instanceId: 'file-1',
    promptTokenIds: Array.from({ length: 600 }, (_, i) => i % 500),
    maxTokens: 4,
  });
  t.equal(tooLong.code, grpc.status.INVALID_ARGUMENT);
  t.match(tooLong.details, /600 tokens.*context of 512/);

  const badSampling = await generate(client, { requestId: 'b4', instanceId: 'file-1', promptTokenIds: prompt, sampling: { temperature: -1 } });
  t.equal(badSampling.code, grpc.status.INVALID_ARGUMENT);
  t.match(badSampling.details, /temperature/);

  const badToken = await generate(client, { requestId: 'b5', instanceId: 'file-1', promptTokenIds: [1, 100000], maxTokens: 2 });
  t.equal(badToken.code, grpc.status.INVALID_ARGUMENT, badToken.details);

  const emptyDir = join(scratch.path, 'empty');
  await mkdir(emptyDir);
  const missing = await loadStage(client, { ...loadRequest(model, 'bad-missing', pathToFileURL(emptyDir).href), source: { uri: pathToFileURL(emptyDir).href } });
  t.equal(missing.code, grpc.status.NOT_FOUND);
  t.match(missing.details, /model\.safetensors/);

  const corruptDir = join(scratch.path, 'corrupt');
  await mkdir(corruptDir);
  for (const f of model.files) await copyFile(join(model.dir, f.path), join(corruptDir, f.path));
  const handle = await open(join(corruptDir, 'model.safetensors'), 'r+');
  await handle.write(Buffer.from('{"bogus": [1, 2'), 0, 15, 8);
  await handle.close();
  const corrupt = await loadStage(client, { ...loadRequest(model, 'bad-corrupt', pathToFileURL(corruptDir).href), source: { uri: pathToFileURL(corruptDir).href } });
  t.equal(corrupt.code, grpc.status.INVALID_ARGUMENT);
  t.match(corrupt.details, /model\.safetensors/);

  const changed = await loadStage(client, {
    ...loadRequest(model, 'bad-size'),
    source: { uri: model.uri, files: [{ path: 'model.safetensors', size: 12, sha256: '' }] },
  });
  t.equal(changed.code, grpc.status.FAILED_PRECONDITION);
  t.match(changed.details, /model\.safetensors is \d+ bytes at the source but was registered with 12/);

  const badConfig = await loadStage(client, { ...loadRequest(model, 'bad-config'), configJson: '{"architectures": ["GPT2"]' });
  t.equal(badConfig.code, grpc.status.INVALID_ARGUMENT);
  t.match(badConfig.details, /config_json/);

  const badStage = await loadStage(client, {
    ...loadRequest(model, 'bad-stage'),
    stage: { layerStart: 1, layerEnd: 7, hasEmbeddings: false, hasHead: true, stageIndex: 1, stageCount: 2 },
  });
  t.equal(badStage.code, grpc.status.INVALID_ARGUMENT);
  t.match(badStage.details, /stage layers \[1, 7\)/);

  const layoutEntry = { name: 'model.norm.weight', dtype: 'F32', shape: [4], file: 'model.safetensors', begin: 8, end: 24 };
  for (const [tensors, message] of [
    [[{ ...layoutEntry, file: 'other.safetensors' }], /tensors: tensor "model\.norm\.weight" lies in "other\.safetensors", not a file of the source/],
    [[{ ...layoutEntry, end: 20 }], /tensors: model\.safetensors: tensor "model\.norm\.weight": data_offsets \[8, 20\] hold 12 bytes but F32 \[4\] needs 16/],
    [[{ ...layoutEntry, dtype: 'I64' }], /tensors: model\.safetensors: unsupported dtype I64/],
    [[layoutEntry, layoutEntry], /tensors: model\.safetensors: tensor "model\.norm\.weight" is listed twice/],
  ] as const) {
    const badLayout = await loadStage(client, { ...loadRequest(model, 'bad-layout'), tensors: [...tensors] });
    t.equal(badLayout.code, grpc.status.INVALID_ARGUMENT, badLayout.details);
    t.match(badLayout.details, message);
  }
  for (const counts of [[0], Array.from({ length: 9 }, (_, i) => i + 1)]) {
    const badWarmUp = await loadStage(client, { ...loadRequest(model, 'bad-warm-up'), warmUpTokenCounts: counts });
    t.equal(badWarmUp.code, grpc.status.INVALID_ARGUMENT, badWarmUp.details);
    t.match(badWarmUp.details, /warm_up_token_counts: /);
  }

  const badDevice = await loadStage(client, { ...loadRequest(model, 'bad-device'), device: 3 });
  t.equal(badDevice.code, grpc.status.INVALID_ARGUMENT);
  t.match(badDevice.details, /device 3/);

  const closed = await serveDirectory(model.dir);
  await closed.close();
  const unreachable = await loadStage(client, loadRequest(model, 'bad-unreachable', closed.url));
  t.equal(unreachable.code, grpc.status.UNAVAILABLE);
  t.match(unreachable.details, /127\.0\.0\.1/);

  const other = await loadStage(client, { ...loadRequest(model, 'file-1'), model: 'other' });
  t.equal(other.code, grpc.status.ALREADY_EXISTS);

  const snapshot = await waitForSnapshot(client, () => true);
  t.same(snapshot.instances.map((i) => i.instanceId).sort(), ['file-1', 'http-1', 'layout-1', 'long'], 'failed loads left nothing behind');
  const ok = await generate(client, { requestId: 'b9', instanceId: 'file-1', promptTokenIds: prompt, maxTokens: 3 });
  t.equal(tokensOf(ok).length, 3, 'still serving');
});

t.test('a failed load is reported FAILED before it is removed', async (t) => {
  const { events, call: watch } = await watchEvents(client);
  const removed = new Promise<void>((resolve) => {
    watch.on('data', (e: WorkerEvent__Output) => {
      const seenFailed = events.some((x) => x.snapshot?.instances.some((i) => i.instanceId === 'fail-1' && i.residency === 'FAILED'));
      if (seenFailed && e.snapshot && !e.snapshot.instances.some((i) => i.instanceId === 'fail-1')) resolve();
    });
  });
  const outcome = await loadStage(client, { ...loadRequest(model, 'fail-1'), source: { uri: `${model.uri}/missing-subdir` } });
  t.equal(outcome.code, grpc.status.NOT_FOUND);
  await removed;
  watch.cancel();
  const failed = events.flatMap((e) => e.snapshot?.instances ?? []).find((i) => i.instanceId === 'fail-1' && i.residency === 'FAILED')!;
  t.match(failed.error, /missing file/);
});

t.test('WatchEvents starts with a full snapshot', async (t) => {
  const first = await new Promise<WorkerEvent__Output>((resolve) => {
    const call = client.WatchEvents({});
    call.once('data', (e: WorkerEvent__Output) => {
      resolve(e);
      call.cancel();
    });
    call.on('error', () => undefined);
  });
  t.equal(first.event, 'snapshot');
  t.ok(Math.abs(first.timeMs - Date.now()) < 60_000);
  const s = first.snapshot!;
  t.equal(s.workerId, 'test-worker');
  t.equal(s.state, 'READY');
  t.equal(s.backend, 'cpu');
  t.equal(s.devices.length, 1);
  const device = s.devices[0]!;
  t.same([device.index, device.kind, device.name, device.totalBytes], [0, 'cpu', os.cpus()[0]!.model.trim(), os.totalmem()]);
  t.ok(device.freeBytes <= os.totalmem());
  t.equal(s.hostCacheLimit, options.hostCacheBytes);
  t.equal(s.hostCacheBytes, s.instances.reduce((sum, i) => sum + i.hostBytes, 0));
  t.ok(s.hostCacheBytes > 0);
  t.equal(s.activeRequests, 0);
  t.ok(s.fetchBytesPerS > 0, 'fetch bandwidth measured');
});

t.test('SwapIn of an instance on its device is a no-op', async (t) => {
  const swapIn = await unary<SwapReply__Output>((o, cb) => client.SwapIn({ instanceId: 'file-1', device: 0 }, o, cb));
  t.equal(swapIn.error, null);
  t.same([swapIn.reply?.bytes, swapIn.reply?.source, swapIn.reply?.device], [0, '', 0]);
});

t.test('an activation stream must start with its request', async (t) => {
  const forward = client.ForwardActivations();
  const status = new Promise<grpc.StatusObject>((resolve) => {
    forward.on('status', resolve);
    forward.on('error', () => undefined);
    forward.on('data', () => undefined);
  });
  forward.write({ requestId: 'r', position: 0, tokenCount: 1, hidden: Buffer.alloc(4) });
  const ended = await status;
  t.equal(ended.code, grpc.status.INVALID_ARGUMENT, 'an activation stream must start with its request');
  t.match(ended.details, /must carry the request/);
});

t.test('UnloadStage frees the instance', async (t) => {
  const unload = await unary<UnloadStageReply__Output>((o, cb) => client.UnloadStage({ instanceId: 'http-1' }, o, cb));
  t.ok(unload.reply!.freedBytes > 0);
  const gone = await generate(client, { requestId: 'u1', instanceId: 'http-1', promptTokenIds: prompt, maxTokens: 2 });
  t.equal(gone.code, grpc.status.NOT_FOUND);
  const again = await unary<UnloadStageReply__Output>((o, cb) => client.UnloadStage({ instanceId: 'http-1' }, o, cb));
  t.equal(again.error?.code, grpc.status.NOT_FOUND);
});

t.test('the host cache limit refuses loads that do not fit', async (t) => {
  const small = await startWorker({ ...options, id: 'small-worker', hostCacheBytes: 1024 });
  const smallClient = workerClient(small.address);
  t.teardown(async () => {
    smallClient.close();
    await small.close();
  });
  const outcome = await loadStage(smallClient, loadRequest(model, 'big'));
  t.equal(outcome.code, grpc.status.RESOURCE_EXHAUSTED);
  t.match(outcome.details, /host cache full/);
  const snapshot = await waitForSnapshot(smallClient, () => true);
  t.equal(snapshot.hostCacheBytes, 0);
  t.same(snapshot.instances, []);
});

t.test('Drain cancels what outlives the deadline and refuses new work', async (t) => {
  const draining = await startWorker({ ...options, id: 'drain-worker' });
  const drainClient = workerClient(draining.address);
  t.teardown(async () => {
    drainClient.close();
    await draining.close();
  });
  t.equal((await loadStage(drainClient, { ...loadRequest(model, 'd'), maxContext: 4096 })).code, grpc.status.OK);

  const call = drainClient.Generate({ requestId: 'slow', instanceId: 'd', promptTokenIds: prompt, maxTokens: 0 });
  const done = collect<GenerateEvent__Output>(call);
  await firstToken(call);
  const drain = await unary<DrainReply__Output>((o, cb) => drainClient.Drain({ deadlineMs: 1 }, o, cb));
  t.same(drain.reply, { finished: 0, cancelled: 1 });
  t.equal((await done).messages.at(-1)!.finish!.reason, 'CANCELLED');

  const refused = await generate(drainClient, { requestId: 'late', instanceId: 'd', promptTokenIds: prompt, maxTokens: 2 });
  t.equal(refused.code, grpc.status.UNAVAILABLE);
  t.equal(refused.details, 'worker is draining');
  const refusedLoad = await loadStage(drainClient, loadRequest(model, 'd2'));
  t.equal(refusedLoad.code, grpc.status.UNAVAILABLE);
  const health = await unary<HealthReply__Output>((o, cb) => drainClient.Health({}, o, cb));
  t.equal(health.reply!.state, 'DRAINED');
  const snapshot = await waitForSnapshot(drainClient, (s) => s.activeRequests === 0);
  t.equal(snapshot.state, 'DRAINED');
  const second = await unary<DrainReply__Output>((o, cb) => drainClient.Drain({ deadlineMs: 1 }, o, cb));
  t.same(second.reply, { finished: 0, cancelled: 0 });
});
