// The worker's pure decisions, without a server or native code: how a stage's tensors are laid
// out and fetched, which stage and device a LoadStage resolves to, how a Generate request is
// read (proto3 zeros meaning "unset"), what a snapshot reports, and how errors become statuses.
import os from 'node:os';
import { status } from '@grpc/grpc-js';
import t from 'tap';
import type { GenerateRequest__Output } from '../../protos/generated/paraserve/v1/GenerateRequest.js';
import type { ModelConfig } from '../../worker/models/model-config.js';
import { ModelFormatError } from '../../worker/models/errors.js';
import { toStatus, WorkerError } from '../../worker/daemon/errors.js';
import { planFetch } from '../../worker/daemon/fetch-plan.js';
import { resolveStage, sizeMismatches } from '../../worker/daemon/loader.js';
import { chooseDevice } from '../../worker/daemon/memory.js';
import { advertisedHost, formatAddress } from '../../worker/daemon/address.js';
import { backoffMs } from '../../worker/daemon/registration.js';
import { toGenerationRequest } from '../../worker/daemon/requests.js';
import { GenerationError } from '../../worker/engine/generator.js';
import { SamplingError } from '../../worker/engine/sampling.js';
import { buildSnapshot, workerDevices, type InstanceFacts } from '../../worker/daemon/snapshot.js';

const config: ModelConfig = {
  architecture: 'llama',
  vocabSize: 100,
  hiddenSize: 8,
  intermediateSize: 16,
  numLayers: 4,
  numAttentionHeads: 2,
  numKeyValueHeads: 1,
  headDim: 4,
  maxPositionEmbeddings: 256,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  rope: { kind: 'none' },
  attentionBias: false,
  tieWordEmbeddings: false,
  dtype: 'f16',
  bosTokenId: 1,
  eosTokenIds: [2],
};

t.test('planFetch coalesces contiguous tensors, splits long spans, aligns spans', async (t) => {
  const plan = planFetch(
    [
      { name: 'a', file: 'x', begin: 100, end: 110 },
      { name: 'b', file: 'x', begin: 110, end: 130 },
      { name: 'c', file: 'x', begin: 200, end: 250 },
      { name: 'd', file: 'y', begin: 8, end: 12 },
    ],
    { maxRangeBytes: 32, alignment: 16 },
  );
  const whole = (file: string, begin: number, end: number, bufferOffset: number) => ({
    file,
    begin,
    end,
    targets: [{ begin, end, bufferOffset }],
    chunks: [],
  });
  t.same(plan.ranges, [whole('x', 100, 130, 0), whole('x', 200, 232, 32), whole('x', 232, 250, 64), whole('y', 8, 12, 96)]);
  t.same(plan.unverifiedFiles, ['x', 'y']);
  t.same([...plan.offsets], [
    ['a', 0],
    ['b', 10],
    ['c', 32],
    ['d', 96],
  ]);
  t.equal(plan.totalBytes, 100);
  t.equal(plan.fetchBytes, 30 + 50 + 4);
  t.equal(plan.tensorBytes, 30 + 50 + 4);
});

t.test('resolveStage: absent stage is the whole model; ranges are checked', async (t) => {
  const whole = resolveStage(null, 0, 4096, config);
  t.same(typeof whole === 'string' ? whole : [whole.spec, whole.maxContext], [
    { layerStart: 0, layerEnd: 4, hasEmbeddings: true, hasHead: true },
    256,
  ]);
  const head = resolveStage({ layerStart: 2, layerEnd: 4, hasEmbeddings: false, hasHead: true, stageIndex: 1, stageCount: 2 }, 64, 4096, config);
  t.same(typeof head === 'string' ? head : head.maxContext, 64);
  t.match(resolveStage({ layerStart: 2, layerEnd: 9, hasEmbeddings: false, hasHead: true, stageIndex: 1, stageCount: 2 }, 0, 64, config), /4 layers/);
  t.match(resolveStage({ layerStart: 0, layerEnd: 0, hasEmbeddings: true, hasHead: false, stageIndex: 0, stageCount: 1 }, 0, 64, config), /non-empty/);
  t.match(resolveStage({ layerStart: 0, layerEnd: 2, hasEmbeddings: false, hasHead: false, stageIndex: 0, stageCount: 2 }, 0, 64, config), /has_embeddings/);
  t.match(resolveStage({ layerStart: 0, layerEnd: 2, hasEmbeddings: true, hasHead: true, stageIndex: 0, stageCount: 2 }, 0, 64, config), /has_head/);
  t.match(resolveStage({ layerStart: 0, layerEnd: 4, hasEmbeddings: true, hasHead: true, stageIndex: 3, stageCount: 2 }, 0, 64, config), /stage_index/);
});

t.test('chooseDevice picks the freest device for -1 and checks indexes', async (t) => {
  const devices = [
    { index: 0, freeBytes: 10 },
    { index: 1, freeBytes: 30 },
  ];
  t.equal(chooseDevice(-1, devices), 1);
  t.equal(chooseDevice(0, devices), 0);
  t.match(chooseDevice(3, devices), /device 3 does not exist/);
  t.match(chooseDevice(-1, []), /no devices/);
});

t.test('sizeMismatches compares registered sizes (0 = not recorded)', async (t) => {
  const files = [
    { path: 'a', size: 10, sha256: '', chunkBytes: 0, chunkSha256: [] },
    { path: 'b', size: 0, sha256: '', chunkBytes: 0, chunkSha256: [] },
    { path: 'c', size: 5, sha256: '', chunkBytes: 0, chunkSha256: [] },
  ];
  t.same(sizeMismatches(files, [10, 99, 6]), ['c is 6 bytes at the source but was registered with 5']);
});

t.test('toGenerationRequest reads proto3 zeros as unset', async (t) => {
  const message: GenerateRequest__Output = {
    requestId: 'r',
    instanceId: 'i',
    promptTokenIds: [1, 2],
    maxTokens: 0,
    sampling: null,
    stopTokenIds: [2],
  };
  const greedy = toGenerationRequest(message, 128, 3, 0);
  t.same([greedy.maxTokens, greedy.sampling, greedy.sequence, greedy.maxContext], [null, { temperature: 0, topP: 1, seed: null }, 3, 128]);
  const seeded = toGenerationRequest({ ...message, maxTokens: 5, sampling: { temperature: 0.5, topP: 0, seed: 9 } }, 128, 1, 0);
  t.same([seeded.maxTokens, seeded.sampling], [5, { temperature: 0.5, topP: 1, seed: 9 }]);
  const nucleus = toGenerationRequest({ ...message, sampling: { temperature: 1, topP: 0.5 } }, 128, 1, 0);
  t.same(nucleus.sampling, { temperature: 1, topP: 0.5, seed: null });
});

t.test('snapshots account host cache, active requests and CPU free memory', async (t) => {
  const stage = { layerStart: 0, layerEnd: 4, hasEmbeddings: true, hasHead: true, stageIndex: 0, stageCount: 1 };
  const instances: InstanceFacts[] = [
    { id: 'a', model: 'm', stage, device: 0, residency: 'ON_DEVICE', deviceBytes: 300, hostBytes: 100, activeRequests: 2, error: '', lastUsedMs: 1234, secondCopy: null },
    { id: 'b', model: 'm', stage, device: 0, residency: 'LOADING', deviceBytes: 0, hostBytes: 50, activeRequests: 0, error: '', lastUsedMs: 0, secondCopy: null },
  ];
  const devices = workerDevices('cpu', [], { name: 'Test CPU', totalBytes: 10_000, freeBytes: 1_000 }, null, instances);
  t.same(devices, [{ index: 0, kind: 'cpu', name: 'Test CPU', totalBytes: 10_000, freeBytes: 700 }]);
  const cuda = workerDevices('cuda', [{ index: 1, kind: 'cuda', name: 'H100', totalBytes: 80, freeBytes: 70 }], { name: 'x', totalBytes: 1, freeBytes: 1 }, 60, instances);
  t.same(cuda, [{ index: 1, kind: 'cuda', name: 'H100', totalBytes: 60, freeBytes: 60 }], 'the budget, and nothing held on device 1');
  const snapshot = buildSnapshot({ workerId: 'w', lifecycle: 'READY', backend: 'cpu', devices, hostCacheLimit: 1000, hostCachePinned: true, deviceLinks: false, instances, fetchBytesPerS: 5 });
  t.equal(snapshot.hostCachePinned, true);
  t.equal(snapshot.hostCacheBytes, 150);
  t.equal(snapshot.activeRequests, 2);
  t.equal(snapshot.instances.length, 2);
  t.same(snapshot.instances[0], {
    instanceId: 'a',
    model: 'm',
    stage,
    device: 0,
    residency: 'ON_DEVICE',
    deviceBytes: 300,
    hostBytes: 100,
    activeRequests: 2,
    error: '',
    lastUsedMs: 1234,
  });
});

t.test('errors map to statuses with details', async (t) => {
  t.same(toStatus(new ModelFormatError('missing file model.safetensors at x', 'model.safetensors', 'missing_file')), {
    code: status.NOT_FOUND,
    details: 'missing file model.safetensors at x',
  });
  t.equal(toStatus(new ModelFormatError('bad header', 'model.safetensors', 'invalid')).code, status.INVALID_ARGUMENT);
  t.equal(toStatus(new ModelFormatError('refused', null, 'unreachable')).code, status.UNAVAILABLE);
  t.equal(toStatus(new WorkerError(status.RESOURCE_EXHAUSTED, 'full')).code, status.RESOURCE_EXHAUSTED);
  const oom = new Error('cudaMalloc failed');
  oom.name = 'OutOfMemoryError';
  t.equal(toStatus(oom).code, status.RESOURCE_EXHAUSTED);
  const refused = Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
  t.equal(toStatus(refused).code, status.UNAVAILABLE);
  t.same(toStatus('weird'), { code: status.INTERNAL, details: 'weird' });
  t.same(toStatus(new SamplingError('logit 3 is NaN')), { code: status.INTERNAL, details: 'logit 3 is NaN' });
  t.equal(toStatus(new GenerationError('prompt is empty')).code, status.INVALID_ARGUMENT);
});

t.test('registration backoff doubles and caps', async (t) => {
  t.same([0, 1, 2, 3, 10, 100].map((a) => backoffMs(a, 200, 5000)), [200, 400, 800, 1600, 5000, 5000]);
});

t.test('advertised address: wildcards become an external address; IPv6 gets brackets', async (t) => {
  t.equal(advertisedHost('127.0.0.1', {}), '127.0.0.1');
  const interfaces: NodeJS.Dict<os.NetworkInterfaceInfo[]> = {
    lo: [{ address: '127.0.0.1', netmask: '255.0.0.0', family: 'IPv4', mac: '00:00:00:00:00:00', internal: true, cidr: null }],
    eth0: [{ address: '10.1.2.3', netmask: '255.0.0.0', family: 'IPv4', mac: '02:00:00:00:00:01', internal: false, cidr: null }],
  };
  t.equal(advertisedHost('0.0.0.0', interfaces), '10.1.2.3');
  t.equal(advertisedHost('::', {}), '127.0.0.1');
  t.equal(formatAddress('::1', 80), '[::1]:80');
  t.equal(formatAddress('10.0.0.1', 80), '10.0.0.1:80');
});
