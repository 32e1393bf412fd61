// decide() is pure: every case is a row of (state, request) → expected action.
import t from 'tap';
import type { InstanceView, WorkerView } from '../../gateway/cluster/worker-view.js';
import { decide, nextInstanceId } from '../../gateway/scheduler/decide.js';
import type { InFlightLoad, ScheduleRequest, SchedulerState } from '../../gateway/scheduler/types.js';
import { schedulerState as state } from './fixtures/scheduler-views.js';

const GiB = 1024 ** 3;
const NOW = 1_000_000;

function createInstance(o: Partial<InstanceView> = {}): InstanceView {
  return {
    instanceId: 'm@w1#0',
    model: 'm',
    stage: { layerStart: 0, layerEnd: 2, hasEmbeddings: true, hasHead: true, stageIndex: 0, stageCount: 1 },
    device: 0,
    residency: 'ON_DEVICE',
    deviceBytes: GiB,
    hostBytes: GiB,
    activeRequests: 0,
    error: null,
    lastUsedMs: 0,
    ...o,
  };
}

function createWorker(o: Partial<WorkerView> & { free?: number[] } = {}): WorkerView {
  const { free = [10 * GiB], ...rest } = o;
  return {
    id: 'w1',
    address: '127.0.0.1:1',
    backend: 'cpu',
    state: 'READY',
    devices: free.map((f, index) => ({ index, kind: 'cpu', name: 'cpu', totalBytes: 16 * GiB, freeBytes: f })),
    instances: [],
    activeRequests: 0,
    hostCacheBytes: 0,
    hostCacheLimit: 0,
    hostCachePinned: false,
    deviceLinks: false,
    fetchBytesPerS: 0,
    lastSeenMs: NOW,
    ...rest,
  };
}

function createLoad(o: Partial<InFlightLoad> = {}): InFlightLoad {
  return { instanceId: 'm@w1#0', model: 'm', workerId: 'w1', device: 0, bytes: GiB, startedMs: NOW - 500, status: 'loading', pipelineStage: null, ...o };
}

function createRequest(o: Partial<ScheduleRequest> = {}): ScheduleRequest {
  return { model: 'm', modelBytes: GiB, range: { layerStart: 0, layerEnd: 2, hasEmbeddings: true, hasHead: true }, pipeline: null, coldStart: null, ...o };
}

interface Row {
  name: string;
  state: SchedulerState;
  request?: ScheduleRequest;
  expect: Record<string, unknown>;
}

const rows: Row[] = [
  { name: 'no workers: 503', state: state([]), expect: { kind: 'reject', status: 503, reason: /no worker is registered/ } },
  {
    name: 'no READY worker: 503 listing states',
    state: state([createWorker({ state: 'DRAINING' }), createWorker({ id: 'w2', state: 'DOWN' })]),
    expect: { kind: 'reject', reason: /no worker is READY \(w1: DRAINING, w2: DOWN\)/ },
  },
  {
    name: 'warm instance: run on it',
    state: state([createWorker({ instances: [createInstance()] })]),
    expect: { kind: 'run-on', workerId: 'w1', instanceId: 'm@w1#0', reason: /warm/ },
  },
  {
    name: 'two warm instances: fewest active requests',
    state: state([
      createWorker({ instances: [createInstance({ activeRequests: 3 })] }),
      createWorker({ id: 'w2', instances: [createInstance({ instanceId: 'm@w2#0', activeRequests: 1 })] }),
    ]),
    expect: { kind: 'run-on', instanceId: 'm@w2#0' },
  },
  {
    name: "the gateway's own in-flight counts beat stale snapshots",
    state: state(
      [createWorker({ instances: [createInstance()] }), createWorker({ id: 'w2', instances: [createInstance({ instanceId: 'm@w2#0' })] })],
      [],
      [['m@w1#0', 4]],
    ),
    expect: { kind: 'run-on', instanceId: 'm@w2#0' },
  },
  {
    name: 'a warm instance on a DRAINING worker is not used; cold load elsewhere',
    state: state([createWorker({ state: 'DRAINING', instances: [createInstance()] }), createWorker({ id: 'w2' })]),
    expect: { kind: 'load-then-run', workerId: 'w2', instanceId: 'm@w2#0' },
  },
  {
    name: 'instances of other models, FAILED ones and pipeline stages do not serve',
    state: state([
      createWorker({
        instances: [
          createInstance({ model: 'other', instanceId: 'other@w1#0' }),
          createInstance({ residency: 'FAILED', error: 'boom' }),
          createInstance({
            instanceId: 'm@w1#1',
            stage: { layerStart: 0, layerEnd: 1, hasEmbeddings: true, hasHead: false, stageIndex: 0, stageCount: 2 },
          }),
        ],
      }),
    ]),
    expect: { kind: 'load-then-run', instanceId: 'm@w1#2' },
  },
  {
    name: 'a load under way: wait for it (the oldest)',
    state: state([createWorker(), createWorker({ id: 'w2' })], [createLoad({ instanceId: 'm@w2#0', workerId: 'w2', startedMs: NOW - 10 }), createLoad({ startedMs: NOW - 900 })]),
    expect: { kind: 'await-load', instanceId: 'm@w1#0', reason: /900 ms ago/ },
  },
  {
    name: 'a load of another model is not joined',
    state: state([createWorker()], [createLoad({ model: 'other', instanceId: 'other@w1#0' })]),
    expect: { kind: 'load-then-run', instanceId: 'm@w1#0' },
  },
  {
    name: 'a finished load the snapshot does not list yet runs at once',
    state: state([createWorker()], [createLoad({ status: 'ready' })]),
    expect: { kind: 'run-on', instanceId: 'm@w1#0' },
  },
  {
    name: 'a finished load whose snapshot still says LOADING runs at once',
    state: state([createWorker({ instances: [createInstance({ residency: 'LOADING' })] })], [createLoad({ status: 'ready' })]),
    expect: { kind: 'run-on', instanceId: 'm@w1#0' },
  },
  {
    name: 'a LOADING instance the gateway did not start is not joined (nothing to wait on)',
    state: state([createWorker({ instances: [createInstance({ residency: 'LOADING' })] })]),
    expect: { kind: 'load-then-run', instanceId: 'm@w1#1' },
  },
  {
    name: 'a load on a worker that went DOWN is not waited for',
    state: state([createWorker({ state: 'DOWN' }), createWorker({ id: 'w2' })], [createLoad()]),
    expect: { kind: 'load-then-run', workerId: 'w2' },
  },
  {
    name: 'cold: the device with the most free memory that fits',
    state: state([createWorker({ free: [2 * GiB, 5 * GiB] }), createWorker({ id: 'w2', free: [4 * GiB] })]),
    expect: { kind: 'load-then-run', workerId: 'w1', device: 1, bytes: GiB, startedMs: NOW, range: { layerStart: 0, layerEnd: 2 } },
  },
  {
    name: 'cold: bytes of loads the worker has not reported yet count as used',
    state: state(
      [createWorker({ free: [5 * GiB] }), createWorker({ id: 'w2', free: [4 * GiB] })],
      [createLoad({ model: 'other', instanceId: 'other@w1#0', bytes: 3 * GiB })],
    ),
    expect: { kind: 'load-then-run', workerId: 'w2' },
  },
  {
    name: 'cold: equal free memory goes to the less busy worker',
    state: state([createWorker({ activeRequests: 2 }), createWorker({ id: 'w2', activeRequests: 0 })]),
    expect: { kind: 'load-then-run', workerId: 'w2' },
  },
  {
    name: 'nothing fits: 503 with the sizes',
    state: state([createWorker({ free: [GiB / 2] })]),
    request: createRequest({ modelBytes: 2 * GiB }),
    expect: { kind: 'reject', status: 503, reason: /no device has 2\.0 GiB free for model 'm'; the most free is 512\.0 MiB on device 0 of worker w1/ },
  },
  {
    name: 'a READY worker without devices cannot take a load',
    state: state([createWorker({ free: [] })]),
    expect: { kind: 'reject', reason: /reports any device/ },
  },
];

for (const row of rows) {
  t.test(row.name, async (t) => {
    t.match(decide(row.state, row.request ?? createRequest(), NOW), row.expect);
  });
}

t.test('instance ids take the smallest free number per worker and model', async (t) => {
  const w = createWorker({ instances: [createInstance(), createInstance({ instanceId: 'm@w1#2' })] });
  t.equal(nextInstanceId('m', w, []), 'm@w1#1');
  t.equal(nextInstanceId('m', w, [createLoad({ instanceId: 'm@w1#1' })]), 'm@w1#3');
  t.equal(nextInstanceId('n', w, []), 'n@w1#0');
});

t.test('decide does not mutate its input', async (t) => {
  const s = state([createWorker({ instances: [createInstance()] })], [createLoad({ model: 'x', instanceId: 'x@w1#0' })]);
  const before = JSON.stringify({ workers: s.workers, loads: s.loads });
  decide(s, createRequest(), NOW);
  decide(s, createRequest({ model: 'y' }), NOW);
  t.equal(JSON.stringify({ workers: s.workers, loads: s.loads }), before);
});
