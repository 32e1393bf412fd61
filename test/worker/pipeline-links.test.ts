// Pipelines whose stages pass activations over device links (NCCL on GPUs), on the CPU backend
// with in-process loopback links (fixtures/loopback-links.ts): link ids from CreateLinkId on
// the sending stages' workers, passed in LoadStage, opened during runtime init; each step's
// hidden states then go over the link and the gRPC message carries only their tag. Tokens
// must equal the whole model's on one worker, exactly as over gRPC; a link that cannot open
// leaves that hop on gRPC with the same tokens; unloading closes the links, and so does a load
// that fails after its link opened; a worker without links refuses CreateLinkId with
// FAILED_PRECONDITION.
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import t, { type Test } from 'tap';
import type { CreateLinkIdReply__Output } from '../../protos/generated/paraserve/v1/CreateLinkIdReply.js';
import type { GenerateRequest } from '../../protos/generated/paraserve/v1/GenerateRequest.js';
import type { StageRange } from '../../protos/generated/paraserve/v1/StageRange.js';
import type { UnloadStageReply__Output } from '../../protos/generated/paraserve/v1/UnloadStageReply.js';
import type { WorkerClient } from '../../protos/generated/paraserve/v1/Worker.js';
import { startWorker, startWorkerWith, type RunningWorker } from '../../worker/daemon/main.js';
import { loadNativeAddon } from '../../worker/native/addon.js';
import { generate, loadRequest, loadStage, makeModel, pipelineRanges, tempDir, testWorkerOptions, tokensOf, unary, workerClient, type TestModel } from './fixtures/harness.js';
import { LoopbackLinks } from './fixtures/loopback-links.js';

const NUM_LAYERS = 4;
const scratch = await tempDir('pipeline-links');
const model: TestModel = await makeModel(join(scratch.path, 'model'), 'demo');
const links = new LoopbackLinks(loadNativeAddon());
const logger = pino({ level: 'silent' });
const workers: RunningWorker[] = await Promise.all(
  [0, 1, 2, 3].map((i) => startWorkerWith(testWorkerOptions({ id: `linked-${i}`, hostCacheBytes: 256 * 1024 * 1024 }), { addon: links.addon(), backend: 'cpu', logger })),
);
const clients: WorkerClient[] = workers.map((w) => workerClient(w.address));

t.teardown(async () => {
  for (const c of clients) c.close();
  await Promise.all(workers.map((w) => w.close()));
  await scratch.remove();
});

function ranges(k: number): StageRange[] {
  return pipelineRanges(NUM_LAYERS, k);
}

async function createLinkId(client: WorkerClient): Promise<{ id: Buffer | null; error: grpc.ServiceError | null }> {
  const outcome = await unary<CreateLinkIdReply__Output>((o, cb) => client.CreateLinkId({}, o, cb));
  return { id: outcome.reply?.uniqueId ?? null, error: outcome.error };
}

/** Loads a k-stage pipeline as the gateway does: link ids from the sending stages' workers first. */
async function loadLinkedPipeline(t: Test, instanceId: string, k: number): Promise<void> {
  const ids = await Promise.all(clients.slice(0, k - 1).map(async (c) => (await createLinkId(c)).id!));
  const peers = workers.slice(0, k).map((w) => w.address);
  const outcomes = await Promise.all(
    ranges(k).map((stage, i) =>
      loadStage(clients[i]!, {
        ...loadRequest(model, instanceId),
        stage,
        peers,
        linkIdFromPrevious: ids[i - 1] ?? Buffer.alloc(0),
        linkIdToNext: ids[i] ?? Buffer.alloc(0),
      }),
    ),
  );
  for (const [i, o] of outcomes.entries()) t.equal(o.code, grpc.status.OK, `stage ${i} of ${instanceId} loaded: ${o.details}`);
}

const prompt = [5, 17, 42, 99, 3, 1000, 7];

function request(instanceId: string, requestId: string, extra: Partial<GenerateRequest> = {}): GenerateRequest {
  return { requestId, instanceId, promptTokenIds: prompt, maxTokens: 12, stopTokenIds: [], ...extra };
}

t.test('activations over device links give the single worker tokens, one send per step and hop', async (t) => {
  t.equal((await loadStage(clients[0]!, loadRequest(model, 'whole'))).code, grpc.status.OK);
  await loadLinkedPipeline(t, 'linked-2', 2);
  await loadLinkedPipeline(t, 'linked-4', 4);
  t.equal(links.opened, 2 * (1 + 3), 'both ends of every hop opened');
  for (const [name, extra] of [
    ['greedy', {}],
    ['seeded sampling', { sampling: { temperature: 0.9, topP: 0.95, seed: 99 } }],
  ] as const) {
    const expected = tokensOf(await generate(clients[0]!, request('whole', `whole-${name}`, extra)));
    t.equal(expected.length, 12, `${name}: the single worker generated tokens`);
    for (const [instance, k] of [['linked-2', 2], ['linked-4', 4]] as const) {
      const sentBefore = links.sent;
      const piped = await generate(clients[0]!, request(instance, `${instance}-${name}`, extra));
      t.equal(piped.code, grpc.status.OK, piped.details);
      t.same(tokensOf(piped), expected, `${name} through ${k} linked stages equals the single worker`);
      t.equal(links.sent - sentBefore, expected.length * (k - 1), 'every step crossed every hop over its link');
    }
  }
  t.equal(links.taken, links.sent, 'every activation sent was taken');
});

t.test('unloading a linked stage closes its links', async (t) => {
  const closedBefore = links.closed;
  for (const i of [0, 1]) {
    const out = await unary<UnloadStageReply__Output>((o, cb) => clients[i]!.UnloadStage({ instanceId: 'linked-2' }, o, cb));
    t.equal(out.error, null);
  }
  t.equal(links.closed - closedBefore, 2, 'the sending and the receiving end');
});

t.test('a link that cannot open leaves its hop on gRPC, with the same tokens', async (t) => {
  links.failOpen = true;
  t.teardown(() => {
    links.failOpen = false;
  });
  const openedBefore = links.opened;
  await loadLinkedPipeline(t, 'unlinked-2', 2);
  t.equal(links.opened, openedBefore, 'no end opened');
  const sentBefore = links.sent;
  const expected = tokensOf(await generate(clients[0]!, request('whole', 'whole-fallback')));
  t.same(tokensOf(await generate(clients[0]!, request('unlinked-2', 'unlinked-2-r'))), expected);
  t.equal(links.sent, sentBefore, 'nothing went over a link');
});

t.test('a stage whose init fails after its link opened closes the link', async (t) => {
  const failing = links.addon();
  const doomed = await startWorkerWith(testWorkerOptions({ id: 'linked-doomed', hostCacheBytes: 256 * 1024 * 1024 }), {
    addon: {
      ...failing,
      warmUpStage: () => Promise.reject(Object.assign(new Error('no device memory for the warm-up'), { name: 'OutOfMemoryError' })),
    },
    backend: 'cpu',
    logger,
  });
  const client = workerClient(doomed.address);
  t.teardown(async () => {
    client.close();
    await doomed.close();
  });
  const { id } = await createLinkId(client);
  const [opened, closed] = [links.opened, links.closed];
  const peers = [doomed.address, workers[1]!.address];
  const [front, back] = await Promise.all(
    ranges(2).map((stage, i) =>
      loadStage(i === 0 ? client : clients[1]!, {
        ...loadRequest(model, 'doomed-2'),
        stage,
        peers,
        linkIdToNext: i === 0 ? id! : Buffer.alloc(0),
        linkIdFromPrevious: i === 1 ? id! : Buffer.alloc(0),
      }),
    ),
  );
  t.equal(front?.code, grpc.status.RESOURCE_EXHAUSTED, `stage 0 failed: ${front?.details}`);
  t.equal(back?.code, grpc.status.OK, 'stage 1 loaded');
  t.equal(links.opened - opened, 2, 'both ends had opened');
  t.equal(links.closed - closed, 1, 'the failed stage closed its end');
  const out = await unary<UnloadStageReply__Output>((o, cb) => clients[1]!.UnloadStage({ instanceId: 'doomed-2' }, o, cb));
  t.equal(out.error, null);
  t.equal(links.closed - closed, 2, 'and unloading the other stage closed the other end');
});

t.test('a worker whose backend has no links refuses CreateLinkId with FAILED_PRECONDITION', async (t) => {
  const plain = await startWorker(testWorkerOptions({ id: 'plain-cpu' }));
  const client = workerClient(plain.address);
  t.teardown(async () => {
    client.close();
    await plain.close();
  });
  const { id, error } = await createLinkId(client);
  t.equal(id, null);
  t.equal(error?.code, grpc.status.FAILED_PRECONDITION);
  t.match(error?.details, /cpu backend has no device links/);
});
