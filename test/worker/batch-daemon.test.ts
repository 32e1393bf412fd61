// Continuous batching through the worker daemon on the real CPU addon: concurrent Generate
// calls to one instance share forwardBatch steps and get exactly the tokens each gets alone
// (greedy and seeded), a request joins a running batch and finishes first, and a request
// cancelled mid-batch ends CANCELLED, frees its KV cache and leaves the others untouched.
// The addon is wrapped to count forwardBatch calls and to hold steps while the test lines
// requests up, so which requests share a step never depends on timing.
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import t from 'tap';
import type { CancelReply__Output } from '../../protos/generated/paraserve/v1/CancelReply.js';
import type { GenerateEvent__Output } from '../../protos/generated/paraserve/v1/GenerateEvent.js';
import type { GenerateRequest } from '../../protos/generated/paraserve/v1/GenerateRequest.js';
import { startWorkerWith, type WorkerOptions } from '../../worker/daemon/main.js';
import { loadNativeAddon } from '../../worker/native/addon.js';
import type { NativeAddon } from '../../worker/native/addon-types.js';
import { collect, generate, loadRequest, loadStage, makeModel, tempDir, tokensOf, unary, waitForSnapshot, workerClient } from './fixtures/harness.js';

const options: WorkerOptions = {
  id: 'batch-worker',
  host: '127.0.0.1',
  port: 0,
  gatewayUrl: null,
  backend: 'cpu',
  hostCacheBytes: 64 * 1024 * 1024,
  maxContext: 512,
  drainTimeoutMs: 5_000,
  logLevel: 'silent',
  fetchBandwidthBytesPerS: null,
  loadOverlap: true,
  fetchThreads: 1,
};

/** Holds every forwardBatch call while closed; counts calls and their sizes. */
class StepGate {
  readonly sizes: number[] = [];
  private closed: Promise<void> | null = null;
  private release: () => void = () => undefined;

  close(): void {
    this.closed ??= new Promise((resolve) => (this.release = resolve));
  }

  open(): void {
    this.closed = null;
    this.release();
  }

  wrap(addon: NativeAddon): NativeAddon {
    return {
      ...addon,
      forwardBatch: async (stage, inputs) => {
        this.sizes.push(inputs.length);
        while (this.closed !== null) await this.closed;
        return addon.forwardBatch(stage, inputs);
      },
    };
  }
}

const scratch = await tempDir('batch-worker');
const model = await makeModel(join(scratch.path, 'model'));
const gate = new StepGate();
const worker = await startWorkerWith(options, { addon: gate.wrap(loadNativeAddon()), backend: 'cpu', logger: pino({ level: 'silent' }) });
const client = workerClient(worker.address);
t.teardown(async () => {
  client.close();
  await worker.close();
  await scratch.remove();
});

let weightsOnly = 0;
/** Resolves once the instance runs `count` requests (all of them are in the batcher). */
function active(count: number): Promise<unknown> {
  return waitForSnapshot(client, (s) => s.instances.some((i) => i.instanceId === 'a' && i.activeRequests === count));
}

/** Resolves once every request ended and their KV caches are freed. */
function allFreed(): Promise<unknown> {
  return waitForSnapshot(client, (s) => s.instances.some((i) => i.instanceId === 'a' && i.activeRequests === 0 && i.deviceBytes === weightsOnly));
}

const requests: GenerateRequest[] = [
  { requestId: 'g1', instanceId: 'a', promptTokenIds: [5, 17, 42, 99, 3], maxTokens: 24 },
  { requestId: 'g2', instanceId: 'a', promptTokenIds: [8, 1], maxTokens: 16 },
  { requestId: 's1', instanceId: 'a', promptTokenIds: [11, 12, 13, 14, 15, 16, 17], maxTokens: 20, sampling: { temperature: 0.8, topP: 0.9, seed: 1234 } },
  { requestId: 's2', instanceId: 'a', promptTokenIds: [2, 4, 6], maxTokens: 24, sampling: { temperature: 1.2, topP: 1, seed: 99 } },
];

const expected = new Map<string, number[]>();

t.before(async () => {
  const loaded = await loadStage(client, loadRequest(model, 'a'));
  if (loaded.code !== grpc.status.OK) throw new Error(`load failed: ${loaded.details}`);
  const ready = await waitForSnapshot(client, (s) => s.instances.some((i) => i.instanceId === 'a' && i.residency === 'ON_DEVICE'));
  weightsOnly = ready.instances[0]!.deviceBytes;
  for (const request of requests) {
    const outcome = await generate(client, { ...request, requestId: `${request.requestId}-alone` });
    if (outcome.code !== grpc.status.OK) throw new Error(`${request.requestId} failed alone: ${outcome.details}`);
    expected.set(request.requestId!, tokensOf(outcome));
  }
  await allFreed();
});

t.test('concurrent requests share steps and get the tokens they get alone', async (t) => {
  gate.sizes.length = 0;
  gate.close();
  const outcomes = requests.map((r) => generate(client, r));
  await active(requests.length);
  gate.open();
  for (const [i, outcome] of (await Promise.all(outcomes)).entries()) {
    const id = requests[i]!.requestId!;
    t.equal(outcome.code, grpc.status.OK, outcome.details);
    t.same(tokensOf(outcome), expected.get(id), `${id}: same tokens as alone`);
  }
  const tokens = requests.reduce((sum, r) => sum + r.maxTokens!, 0);
  t.ok(gate.sizes.length <= 25, `${gate.sizes.length} forwardBatch calls for ${tokens} tokens`);
  t.equal(Math.max(...gate.sizes), requests.length, 'all four requests ran in one step');
  await allFreed();
});

t.test('a request joins a running batch and finishes before it', async (t) => {
  const order: string[] = [];
  const track = (call: grpc.ClientReadableStream<GenerateEvent__Output>, name: string): typeof call => {
    call.on('data', (m: GenerateEvent__Output) => order.push(m.finish ? `${name}:end` : `${name}:token`));
    return call;
  };
  const long = track(client.Generate(requests[0]!), 'long');
  const longDone = collect(long);
  await new Promise<void>((resolve) => long.once('data', () => resolve()));
  gate.close();
  const short = collect(track(client.Generate({ ...requests[1]!, maxTokens: 4 }), 'short'));
  await active(2);
  gate.open();
  const [longOutcome, shortOutcome] = await Promise.all([longDone, short]);
  t.same(tokensOf(longOutcome), expected.get('g1'));
  t.same(tokensOf(shortOutcome), expected.get('g2')!.slice(0, 4), 'greedy: a prefix of its tokens alone');
  t.ok(order.indexOf('short:token') < order.indexOf('long:end'), 'the newcomer streamed while the first ran');
  t.ok(order.indexOf('short:end') < order.indexOf('long:end'), `and finished first: ${order.join(' ')}`);
  await allFreed();
});

t.test('cancelling one request mid-batch frees its sequence; the others finish unchanged', async (t) => {
  const doomed = client.Generate({ requestId: 'doomed', instanceId: 'a', promptTokenIds: [7, 7, 7], maxTokens: 400 });
  const doomedDone = collect(doomed);
  const keptCall = client.Generate(requests[2]!);
  let keptEnded = false;
  keptCall.on('data', (m: GenerateEvent__Output) => {
    if (m.finish) keptEnded = true;
  });
  const kept = collect(keptCall);
  await new Promise<void>((resolve) => doomed.once('data', () => resolve()));
  gate.close();
  const cancel = await unary<CancelReply__Output>((o, cb) => client.Cancel({ requestId: 'doomed' }, o, cb));
  t.equal(cancel.reply?.found, true);
  t.notOk(keptEnded, 'the request beside it was still running');
  gate.open();
  const outcome = await doomedDone;
  t.equal(outcome.code, grpc.status.OK, outcome.details);
  t.equal(outcome.messages.at(-1)!.finish!.reason, 'CANCELLED');
  t.ok(tokensOf(outcome).length < 400);
  t.same(tokensOf(await kept), expected.get('s1'), 'the request beside it is unaffected');
  await allFreed();
  t.pass('KV caches of both are freed');
});
