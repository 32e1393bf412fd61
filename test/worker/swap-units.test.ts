// The worker's memory decisions as pure functions (memory.ts, snapshot.ts): which host copy is
// evicted next, when a host copy or a stage does not fit and what the refusal says, the weight
// bytes a stage will take, and per-device accounting of what the worker's stages hold.
import t from 'tap';
import { deviceFitProblem, estimateWeightBytes, hostCacheProblem, nextEviction, type EvictionFacts } from '../../worker/daemon/memory.js';
import { deviceHeldBytes, workerDevices, type InstanceFacts } from '../../worker/daemon/snapshot.js';

function facts(id: string, o: Partial<EvictionFacts> = {}): EvictionFacts {
  return { id, residency: 'HOST_ONLY', hostBytes: 100, activeRequests: 0, lastUsedMs: 1_000, busy: false, ...o };
}

t.test('nextEviction takes the least recently used idle host-only copy', async (t) => {
  const table: [string, EvictionFacts[], string | null][] = [
    ['oldest first', [facts('a', { lastUsedMs: 30 }), facts('b', { lastUsedMs: 10 }), facts('c', { lastUsedMs: 20 })], 'b'],
    ['ties: the larger copy', [facts('a', { hostBytes: 100 }), facts('b', { hostBytes: 300 })], 'b'],
    ['never the instance making room', [facts('new', { lastUsedMs: 0 }), facts('a')], 'a'],
    ['instances on a device keep their copies', [facts('a', { residency: 'ON_DEVICE', lastUsedMs: 0 }), facts('b')], 'b'],
    ['loading instances are not evicted', [facts('a', { residency: 'LOADING', lastUsedMs: 0 })], null],
    ['busy ones (swapping, unloading) are skipped', [facts('a', { busy: true, lastUsedMs: 0 }), facts('b')], 'b'],
    ['nor ones with requests', [facts('a', { activeRequests: 1, lastUsedMs: 0 }), facts('b')], 'b'],
    ['nor ones without a copy', [facts('a', { hostBytes: 0, lastUsedMs: 0 })], null],
    ['nothing to evict', [], null],
  ];
  for (const [name, instances, expected] of table) t.equal(nextEviction(instances, 'new')?.id ?? null, expected, name);
});

t.test('hostCacheProblem and deviceFitProblem name the bytes needed and free', async (t) => {
  t.equal(hostCacheProblem('a', 40, 60, 100), null, 'exactly full fits');
  t.equal(hostCacheProblem('a', 41, 60, 100), 'host cache full: instance a needs 41 bytes, 40 of 100 are free and no idle host-only instance is left to evict');
  t.match(hostCacheProblem('a', 10, 120, 100), /0 of 100 are free/, 'over the limit already: nothing free');
  const device = { index: 1, kind: 'cuda', name: 'gpu', totalBytes: 1000, freeBytes: 300 };
  t.equal(deviceFitProblem('a', 300, device), null);
  t.equal(deviceFitProblem('a', 301, device), 'instance a needs 301 bytes on device 1 (cuda), 300 of 1000 are free');
});

t.test('estimateWeightBytes counts elements in the compute dtype', async (t) => {
  const tensors = [{ shape: [4, 8] }, { shape: [8] }];
  t.equal(estimateWeightBytes(tensors, 'f32'), 40 * 4);
  t.equal(estimateWeightBytes(tensors, 'bf16'), 40 * 2);
  t.equal(estimateWeightBytes([], 'f16'), 0);
});

t.test('devices account what the worker holds per device index', async (t) => {
  const stage = { layerStart: 0, layerEnd: 2, hasEmbeddings: true, hasHead: true, stageIndex: 0, stageCount: 1 };
  const base: InstanceFacts = { id: 'x', model: 'm', stage, device: 0, residency: 'ON_DEVICE', deviceBytes: 0, hostBytes: 10, activeRequests: 0, error: '', lastUsedMs: 0, secondCopy: null };
  const instances: InstanceFacts[] = [
    { ...base, id: 'a', device: 0, deviceBytes: 300 },
    { ...base, id: 'b', device: 1, deviceBytes: 200 },
    { ...base, id: 'c', device: 1, deviceBytes: 100, residency: 'LOADING' },
    { ...base, id: 'd', device: -1, deviceBytes: 0, residency: 'HOST_ONLY' },
  ];
  t.same([deviceHeldBytes(instances, 0), deviceHeldBytes(instances, 1), deviceHeldBytes(instances, -1)], [300, 300, 0]);
  const moving = [...instances, { ...base, id: 'e', device: 1, deviceBytes: 50, secondCopy: { device: 0, bytes: 70 } }];
  t.same([deviceHeldBytes(moving, 0), deviceHeldBytes(moving, 1)], [370, 350], 'a moving instance holds bytes on both devices');
  const gib = 1024 ** 3;
  const gpus = [
    { index: 0, kind: 'cuda' as const, name: 'g0', totalBytes: 80 * gib, freeBytes: 10 * gib },
    { index: 1, kind: 'cuda' as const, name: 'g1', totalBytes: 80 * gib, freeBytes: 5 * gib },
  ];
  t.same(
    workerDevices('cuda', gpus, { name: 'cpu', totalBytes: 1, freeBytes: 1 }, null, instances).map((d) => [d.totalBytes, d.freeBytes]),
    [
      [78 * gib, 78 * gib - 300],
      [78 * gib, 78 * gib - 300],
    ],
    'a GPU offers its size less the runtime reserve, minus what the worker holds; the driver figure (pooled memory counts as used there) is not used',
  );
  t.same(
    workerDevices('cuda', gpus, { name: 'cpu', totalBytes: 1, freeBytes: 1 }, 1000, instances).map((d) => [d.totalBytes, d.freeBytes]),
    [
      [1000, 700],
      [1000, 700],
    ],
    'a configured budget replaces the GPU size',
  );
  t.same(
    workerDevices('cpu', [], { name: 'cpu', totalBytes: 1000, freeBytes: 1000 }, null, instances).map((d) => [d.index, d.totalBytes, d.freeBytes]),
    [[0, 1000, 700]],
    'the CPU is device 0; only what is held on it counts',
  );
});
