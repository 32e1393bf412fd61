// Chunk verification in the worker: the fetch plan covers whole chunks of the stage's tensors
// (and nothing of other layers), a chunk corrupted once is refetched and the load succeeds with
// the right weights, a chunk corrupted on every request fails the load with DATA_LOSS naming
// file, chunk and digests while the worker keeps serving and holds nothing of the failed load
// (tensors bound from verified chunks before the failure are freed with it).
import { open, readFile, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import t from 'tap';
import type { LoadStageRequest } from '../../protos/generated/paraserve/v1/LoadStageRequest.js';
import type { StageRange } from '../../protos/generated/paraserve/v1/StageRange.js';
import { planFetch, subRange } from '../../worker/daemon/fetch-plan.js';
import { registeredChunks } from '../../worker/daemon/loader.js';
import { startWorker, type WorkerOptions } from '../../worker/daemon/main.js';
import { parseModelConfig } from '../../worker/models/config.js';
import { hashModelFiles, type HashedFile } from '../../worker/models/inspect.js';
import { readCheckpointTensors } from '../../worker/models/safetensors.js';
import { openModelSource } from '../../worker/models/source.js';
import { planStageTensors, wholeModelRange } from '../../worker/models/stage-plan.js';
import { writeSyntheticModel } from '../../worker/models/synthetic.js';
import { generate, loadStage, tempDir, tokensOf, unary, waitForSnapshot, workerClient } from './fixtures/harness.js';

t.test('planFetch with chunks: union of touched chunks, merged, split on chunk edges', async (t) => {
  const hashes = Array.from({ length: 10 }, (_, i) => String(i).repeat(64));
  const chunks = new Map([['x', { size: 95, chunkBytes: 10, sha256: hashes }]]);
  const plan = planFetch(
    [
      { name: 'a', file: 'x', begin: 12, end: 25 }, // chunks 1, 2
      { name: 'b', file: 'x', begin: 25, end: 31 }, // chunks 2, 3 (contiguous with a)
      { name: 'c', file: 'x', begin: 33, end: 38 }, // chunk 3, already planned
      { name: 'd', file: 'x', begin: 60, end: 95 }, // chunks 6..9, the last short
      { name: 'e', file: 'y', begin: 0, end: 4 }, // no hashes: unverified
    ],
    { maxRangeBytes: 20, alignment: 8 },
    chunks,
  );
  const chunk = (index: number) => ({ index, begin: index * 10, end: Math.min(index * 10 + 10, 95), sha256: hashes[index]! });
  t.same([...plan.offsets], [
    ['a', 0],
    ['b', 13],
    ['c', 24],
    ['d', 32],
    ['e', 72],
  ]);
  t.same(plan.ranges, [
    { file: 'x', begin: 10, end: 30, targets: [{ begin: 12, end: 30, bufferOffset: 0 }], chunks: [chunk(1), chunk(2)] },
    {
      file: 'x',
      begin: 30,
      end: 40,
      targets: [
        { begin: 30, end: 31, bufferOffset: 18 },
        { begin: 33, end: 38, bufferOffset: 24 },
      ],
      chunks: [chunk(3)],
    },
    { file: 'x', begin: 60, end: 80, targets: [{ begin: 60, end: 80, bufferOffset: 32 }], chunks: [chunk(6), chunk(7)] },
    { file: 'x', begin: 80, end: 95, targets: [{ begin: 80, end: 95, bufferOffset: 52 }], chunks: [chunk(8), chunk(9)] },
    { file: 'y', begin: 0, end: 4, targets: [{ begin: 0, end: 4, bufferOffset: 72 }], chunks: [] },
  ]);
  t.equal(plan.tensorBytes, 13 + 6 + 5 + 35 + 4);
  t.equal(plan.fetchBytes, 20 + 10 + 20 + 15 + 4);
  t.equal(plan.totalBytes, 76);
  t.same(plan.unverifiedFiles, ['y']);
  t.same(subRange(plan.ranges[1]!, chunk(3)), plan.ranges[1], 'a one-chunk range refetches as itself');
  t.same(subRange(plan.ranges[0]!, chunk(2)), { file: 'x', begin: 20, end: 30, targets: [{ begin: 20, end: 30, bufferOffset: 8 }], chunks: [chunk(2)] });

  const withoutB = planFetch(
    [
      { name: 'a', file: 'x', begin: 12, end: 25 },
      { name: 'b', file: 'x', begin: 25, end: 31 },
      { name: 'c', file: 'x', begin: 33, end: 38 },
      { name: 'd', file: 'x', begin: 60, end: 95 },
      { name: 'e', file: 'y', begin: 0, end: 4 },
    ],
    { maxRangeBytes: 20, alignment: 8 },
    chunks,
    new Set(['b', 'd']),
  );
  t.same([...withoutB.offsets], [...plan.offsets], 'tensors had from elsewhere keep their place in the buffer');
  t.equal(withoutB.totalBytes, plan.totalBytes);
  t.same(
    withoutB.ranges.map((r) => [r.begin, r.end, r.targets]),
    [
      [10, 30, [{ begin: 12, end: 25, bufferOffset: 0 }]],
      [30, 40, [{ begin: 33, end: 38, bufferOffset: 24 }]],
      [0, 4, [{ begin: 0, end: 4, bufferOffset: 72 }]],
    ],
    'they are not fetched; chunks they share with fetched tensors still are, whole',
  );

  const big = planFetch([{ name: 'a', file: 'x', begin: 0, end: 95 }], { maxRangeBytes: 4, alignment: 8 }, chunks);
  t.equal(big.ranges.length, 10, 'a chunk longer than maxRangeBytes is one request');
  t.ok(big.ranges.every((r) => r.chunks.length === 1 && r.begin === r.chunks[0]!.begin && r.end === r.chunks[0]!.end));
});

t.test('registeredChunks checks what the gateway sent', async (t) => {
  const file = (chunkBytes: number, chunkSha256: string[]) => ({ path: 'm', size: 25, sha256: '', chunkBytes, chunkSha256 });
  const ok = registeredChunks([file(10, ['a'.repeat(64), 'b'.repeat(64), 'c'.repeat(64)]), { ...file(0, []), path: 'n' }]);
  t.same(ok, new Map([['m', { size: 25, chunkBytes: 10, sha256: ['a'.repeat(64), 'b'.repeat(64), 'c'.repeat(64)] }]]));
  t.match(registeredChunks([file(10, ['a'.repeat(64)])]), /m: 1 chunk hashes, but 25 bytes in chunks of 10 make 3/);
  t.match(registeredChunks([file(30, ['A'.repeat(64)])]), /chunk_sha256\[0\] is not a lowercase hex sha256/);
  t.match(registeredChunks([file(0, ['a'.repeat(64)])]), /chunk_sha256 given without chunk_bytes/);
});

// --- A worker loading over HTTP from a range server that can corrupt a byte ---------------

const CHUNK_BYTES = 64 * 1024;
const WEIGHTS = 'model.safetensors';

interface ServedRange {
  path: string;
  begin: number;
  end: number; // exclusive
}

interface Corruption {
  offset: number;
  mode: 'once' | 'always';
  /** Requests whose bytes covered `offset`. */
  hits: number;
}

/** A directory over HTTP with HEAD and single ranges; records every range, may flip one byte of WEIGHTS. */
async function startCorruptingServer(root: string): Promise<{ url: string; served: ServedRange[]; corrupt: (c: Corruption | null) => void; close: () => Promise<void> }> {
  const served: ServedRange[] = [];
  let corruption: Corruption | null = null;
  const server: Server = createServer((req, res) => {
    void (async () => {
      const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname).replace(/^\/+/, '');
      const size = await stat(join(root, path)).then((s) => s.size, () => null);
      if (size === null) {
        res.writeHead(404).end();
        return;
      }
      const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
      const begin = range === null ? 0 : Number(range[1]);
      const end = range === null || range[2] === '' ? size : Math.min(Number(range[2]) + 1, size);
      if (req.method === 'HEAD') {
        res.writeHead(200, { 'content-length': size, 'accept-ranges': 'bytes' }).end();
        return;
      }
      served.push({ path, begin, end });
      const bytes = Buffer.alloc(end - begin);
      const handle = await open(join(root, path));
      await handle.read(bytes, 0, bytes.length, begin);
      await handle.close();
      const c = corruption;
      if (c !== null && path === WEIGHTS && begin <= c.offset && c.offset < end) {
        if (c.mode === 'always' || c.hits === 0) bytes[c.offset - begin]! ^= 0xff;
        c.hits++;
      }
      const headers = range === null ? { 'content-length': bytes.length } : { 'content-length': bytes.length, 'content-range': `bytes ${begin}-${end - 1}/${size}` };
      res.writeHead(range === null ? 200 : 206, headers).end(bytes);
    })().catch((e: unknown) => res.destroy(e as Error));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    served,
    corrupt: (c) => {
      corruption = c;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

const options: WorkerOptions = {
  id: 'integrity-worker',
  host: '127.0.0.1',
  port: 0,
  gatewayUrl: null,
  backend: 'cpu',
  hostCacheBytes: 256 * 1024 * 1024,
  maxContext: 256,
  drainTimeoutMs: 5_000,
  logLevel: 'silent',
  fetchBandwidthBytesPerS: null,
  loadOverlap: true,
  fetchThreads: 1,
};

const scratch = await tempDir('integrity');
const dir = join(scratch.path, 'demo');
const { files } = await writeSyntheticModel({ dir, preset: 'demo', seed: 5, dtype: null, sharded: false }, null);
const configJson = await readFile(join(dir, 'config.json'), 'utf8');
const config = parseModelConfig(JSON.parse(configJson) as unknown);
const hashed: HashedFile[] = await hashModelFiles(openModelSource(pathToFileURL(dir).href), files, null, CHUNK_BYTES);
const tensors = await readCheckpointTensors(openModelSource(pathToFileURL(dir).href));
const weightsSize = files.find((f) => f.path === WEIGHTS)!.size;
const server = await startCorruptingServer(dir);
const worker = await startWorker(options);
const client = workerClient(worker.address);
t.teardown(async () => {
  client.close();
  await worker.close();
  await server.close();
  await scratch.remove();
});

function request(instanceId: string, stage: StageRange | null = null, withChunks = true): LoadStageRequest {
  return {
    instanceId,
    model: 'demo',
    source: { uri: server.url, files: withChunks ? hashed : hashed.map((f) => ({ path: f.path, size: f.size, sha256: f.sha256 })) },
    configJson,
    device: -1,
    maxContext: 0,
    // A partial stage names its pipeline's workers; the last stage sends to no one.
    ...(stage === null ? {} : { stage, peers: ['127.0.0.1:1', worker.address] }),
  };
}

/**
 * The request without whole-file digests: its chunks are still verified, but it takes no
 * tensors from the host copies of earlier loads (local-copies.ts), so it fetches them all.
 */
function fetchingAll(r: LoadStageRequest): LoadStageRequest {
  return { ...r, source: { ...r.source, files: r.source!.files!.map((f) => ({ ...f, sha256: '' })) } };
}

const prompt = [5, 17, 42, 99, 3];
let generations = 0;
const greedy = async (instanceId: string): Promise<number[]> => {
  const outcome = await generate(client, { requestId: `g-${instanceId}-${generations++}`, instanceId, promptTokenIds: prompt, maxTokens: 6 });
  if (outcome.code !== grpc.status.OK) throw new Error(`generate on ${instanceId}: ${outcome.details}`);
  return tokensOf(outcome);
};

// The high byte of the first bf16 element of layer 0's q_proj: flipped, the weight is wild.
const qProj = tensors.get('model.layers.0.self_attn.q_proj.weight')!;
const target = qProj.begin + 1;
const targetChunk = Math.floor(target / CHUNK_BYTES);

t.test('files registered without chunk hashes still load, unverified, as before', async (t) => {
  const outcome = await loadStage(client, request('plain', null, false));
  t.equal(outcome.code, grpc.status.OK, outcome.details);
});

t.test('a chunk corrupted on its first fetch is refetched; the load succeeds with the right bytes', async (t) => {
  const corruption: Corruption = { offset: target, mode: 'once', hits: 0 };
  server.corrupt(corruption);
  const before = server.served.length;
  const outcome = await loadStage(client, request('refetched'));
  server.corrupt(null);
  t.equal(outcome.code, grpc.status.OK, outcome.details);
  t.equal(corruption.hits, 2, 'the corrupted chunk was fetched twice');
  const refetches = server.served.slice(before).filter((r) => r.path === WEIGHTS && r.begin === targetChunk * CHUNK_BYTES && r.end === (targetChunk + 1) * CHUNK_BYTES);
  t.ok(refetches.length >= 1, 'the refetch asked for exactly the failed chunk');
  t.same(await greedy('refetched'), await greedy('plain'), 'same tokens as the instance loaded from clean bytes');
});

t.test('a chunk corrupted on every fetch fails the load with DATA_LOSS; the worker keeps serving', async (t) => {
  const corruption: Corruption = { offset: target, mode: 'always', hits: 0 };
  server.corrupt(corruption);
  const outcome = await loadStage(client, fetchingAll(request('poisoned')));
  server.corrupt(null);
  t.equal(outcome.code, grpc.status.DATA_LOSS, outcome.details);
  t.equal(corruption.hits, 2, 'fetched once, refetched once, then given up');
  const expected = hashed.find((f) => f.path === WEIGHTS)!.chunkSha256[targetChunk]!;
  t.match(outcome.details, new RegExp(`^${WEIGHTS.replace('.', '\\.')} chunk ${targetChunk} \\(bytes ${targetChunk * CHUNK_BYTES}-${(targetChunk + 1) * CHUNK_BYTES}\\) failed verification twice: expected sha256 ${expected}, got [0-9a-f]{64}$`));
  t.notOk(outcome.messages.some((m) => m.phase === 'READY'), 'never ready');
  // The copy overlaps the fetch: tensors whose chunks verified may be bound (then freed with
  // the stage), but none from the first one touching the corrupted chunk on.
  const planned = planStageTensors(tensors, config, wholeModelRange(config));
  const chunkBegin = targetChunk * CHUNK_BYTES;
  const firstTouching = planned.findIndex((x) => x.file === WEIGHTS && x.begin < chunkBegin + CHUNK_BYTES && chunkBegin < x.end);
  const boundable = planned.slice(0, firstTouching).reduce((sum, x) => sum + (x.end - x.begin), 0);
  const copied = Math.max(0, ...outcome.messages.filter((m) => m.phase === 'COPY').map((m) => m.bytesDone));
  t.ok(firstTouching >= 0 && copied <= boundable, `bound ${copied} bytes, all before the corrupted chunk (${boundable})`);

  const snapshot = await waitForSnapshot(client, (s) => !s.instances.some((i) => i.instanceId === 'poisoned'));
  t.same(snapshot.instances.map((i) => i.instanceId).sort(), ['plain', 'refetched']);
  t.equal(snapshot.instances.length, 2);
  t.same(await greedy('plain'), await greedy('refetched'), 'the loaded instances still serve');

  const retry = await loadStage(client, request('poisoned'));
  t.equal(retry.code, grpc.status.OK, 'the same instance id loads once the source is healthy');
  const { error } = await unary((o, cb) => client.UnloadStage({ instanceId: 'poisoned' }, o, cb));
  t.equal(error, null);
});

t.test('a stage of a 2-stage split fetches only the chunks of its layers', async (t) => {
  t.ok(weightsSize > 8 * CHUNK_BYTES, `the weights span many chunks (${weightsSize} bytes)`);
  const stage = { layerStart: 2, layerEnd: 4, hasEmbeddings: false, hasHead: true, stageIndex: 1, stageCount: 2 };
  const stageTensors = planStageTensors(tensors, config, stage);
  const stageBytes = stageTensors.reduce((sum, x) => sum + (x.end - x.begin), 0);
  const dataStart = Math.min(...[...tensors.values()].map((x) => x.begin));
  const before = server.served.length;
  const outcome = await loadStage(client, fetchingAll(request('second-half', stage)));
  t.equal(outcome.code, grpc.status.OK, outcome.details);
  // The header reads end where the tensor data starts; every other request is for tensors.
  const weightRanges = server.served.slice(before).filter((r) => r.path === WEIGHTS && r.end > dataStart);
  const servedBytes = weightRanges.reduce((sum, r) => sum + (r.end - r.begin), 0);
  t.ok(servedBytes >= stageBytes, `served ${servedBytes} covers the stage's ${stageBytes} tensor bytes`);
  t.ok(servedBytes <= stageBytes + 2 * CHUNK_BYTES * stageTensors.length, 'at most the chunk edges around the tensors beyond them');
  t.ok(servedBytes < 0.6 * weightsSize, `served ${servedBytes} of ${weightsSize} bytes`);
  t.ok(
    weightRanges.every((r) => r.begin % CHUNK_BYTES === 0 && (r.end % CHUNK_BYTES === 0 || r.end === weightsSize)),
    'every request is whole chunks',
  );
  const firstLayerOwn = tensors.get('model.layers.0.mlp.down_proj.weight')!;
  t.notOk(weightRanges.some((r) => r.begin < firstLayerOwn.end - CHUNK_BYTES && r.end > firstLayerOwn.begin + CHUNK_BYTES), "layer 0's bytes are not fetched");
  const fetches = outcome.messages.filter((m) => m.phase === 'FETCH');
  t.equal(fetches.at(-1)!.bytesTotal, servedBytes, 'FETCH progress counts the bytes requested');
});

t.test('a load copies what a host copy of the same files on the worker holds and fetches only the rest', async (t) => {
  for (const id of ['refetched', 'poisoned', 'second-half']) {
    await unary((o, cb) => client.UnloadStage({ instanceId: id }, o, cb));
  }
  const front = { layerStart: 0, layerEnd: 2, hasEmbeddings: true, hasHead: false, stageIndex: 0, stageCount: 2 };
  const frontTensors = planStageTensors(tensors, config, front);
  const first = await loadStage(client, request('front', front));
  t.equal(first.code, grpc.status.OK, first.details);

  const before = server.served.length;
  const whole = await loadStage(client, request('whole-again'));
  t.equal(whole.code, grpc.status.OK, whole.details);
  const dataStart = Math.min(...[...tensors.values()].map((x) => x.begin));
  const weightRanges = server.served.slice(before).filter((r) => r.path === WEIGHTS && r.end > dataStart);
  const fetched = weightRanges.reduce((sum, r) => sum + (r.end - r.begin), 0);
  const frontBytes = frontTensors.reduce((sum, x) => sum + (x.end - x.begin), 0);
  const allBytes = planStageTensors(tensors, config, wholeModelRange(config)).reduce((sum, x) => sum + (x.end - x.begin), 0);
  t.ok(fetched <= allBytes - frontBytes + 2 * CHUNK_BYTES, `fetched ${fetched} bytes: the model's ${allBytes} less the front stage's ${frontBytes}, give or take chunk edges`);
  const embeddings = tensors.get('model.embed_tokens.weight')!;
  t.notOk(weightRanges.some((r) => r.begin < embeddings.end - CHUNK_BYTES && r.end > embeddings.begin + CHUNK_BYTES), 'the embeddings were not fetched again');
  t.same(await greedy('whole-again'), await greedy('plain'), 'same tokens as the instance loaded from the source alone');

  const fetchesAfterUnload = server.served.length;
  await unary((o, cb) => client.UnloadStage({ instanceId: 'front' }, o, cb));
  await unary((o, cb) => client.UnloadStage({ instanceId: 'whole-again' }, o, cb));
  const alone = await loadStage(client, request('whole-alone'));
  t.equal(alone.code, grpc.status.OK, alone.details);
  const refetched = server.served.slice(fetchesAfterUnload).filter((r) => r.path === WEIGHTS && r.end > dataStart);
  t.ok(refetched.reduce((sum, r) => sum + (r.end - r.begin), 0) >= allBytes, 'with no host copy left, every byte is fetched');
});
