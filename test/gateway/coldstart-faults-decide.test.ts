// The pure parts of cold-start fault handling: no instance is runnable until its load answered
// READY (even when a worker's snapshot already lists it ON_DEVICE, or one stage of a pipeline
// is ready and another's worker died); withoutWorkers() re-places a request away from a worker
// whose stream has not ended yet; which load failures count as the worker lost (re-placed),
// which wait for its event stream to confirm, and which are the load's own (never re-placed).
import { status } from '@grpc/grpc-js';
import t from 'tap';
import type { InstanceView, WorkerView } from '../../gateway/cluster/worker-view.js';
import { decide, withoutInstances, withoutWorkers } from '../../gateway/scheduler/decide.js';
import { loadFailureKind } from '../../gateway/scheduler/loop.js';
import type { InFlightLoad, ScheduleRequest } from '../../gateway/scheduler/types.js';
import { GiB, readyWorker, schedulerState as state } from './fixtures/scheduler-views.js';

const NOW = 1_000_000;

function instance(id: string, stage: { index: number; count: number } | null): InstanceView {
  return {
    instanceId: id,
    model: 'm',
    stage:
      stage === null
        ? null
        : {
            layerStart: stage.index,
            layerEnd: stage.index + 1,
            hasEmbeddings: stage.index === 0,
            hasHead: stage.index === stage.count - 1,
            stageIndex: stage.index,
            stageCount: stage.count,
          },
    device: 0,
    residency: 'ON_DEVICE',
    deviceBytes: GiB,
    hostBytes: GiB,
    activeRequests: 0,
    error: null,
    lastUsedMs: 0,
  };
}

function load(id: string, workerId: string, status: InFlightLoad['status'], stage: { index: number; count: number } | null): InFlightLoad {
  return { instanceId: id, model: 'm', workerId, device: 0, bytes: GiB, startedMs: NOW - 50, status, pipelineStage: stage };
}

const request: ScheduleRequest = {
  model: 'm',
  modelBytes: GiB,
  range: { layerStart: 0, layerEnd: 2, hasEmbeddings: true, hasHead: true },
  pipeline: null,
  coldStart: null,
};

t.test('an instance listed ON_DEVICE whose load has not answered READY is not run on', async (t) => {
  const s = state([readyWorker('w1', 4 * GiB, { instances: [instance('m@w1#0', null)] })], [load('m@w1#0', 'w1', 'loading', null)]);
  t.match(decide(s, request, NOW), { kind: 'await-load', instanceId: 'm@w1#0' });
  const answered = state([...s.workers], [load('m@w1#0', 'w1', 'ready', null)]);
  t.match(decide(answered, request, NOW), { kind: 'run-on', instanceId: 'm@w1#0' }, 'runnable once READY was answered');
});

t.test('a pipeline with a stage still loading, or a stage on a DOWN worker, is not run on', async (t) => {
  const stage0 = readyWorker('w1', 4 * GiB, { instances: [instance('m@w1#0', { index: 0, count: 2 })] });
  const stage1 = readyWorker('w2', 4 * GiB, { instances: [instance('m@w1#0', { index: 1, count: 2 })] });
  const loading = state([stage0, stage1], [load('m@w1#0', 'w1', 'ready', { index: 0, count: 2 }), load('m@w1#0', 'w2', 'loading', { index: 1, count: 2 })]);
  t.match(decide(loading, request, NOW), { kind: 'await-load', instanceId: 'm@w1#0' }, 'both stages listed ON_DEVICE, one not READY yet');

  const dead = state([stage0, { ...stage1, state: 'DOWN' }], [load('m@w1#0', 'w1', 'ready', { index: 0, count: 2 }), load('m@w1#0', 'w2', 'loading', { index: 1, count: 2 })]);
  const action = decide(dead, request, NOW);
  t.not(action.kind, 'run-on', 'the surviving stage alone is never used');
  t.not(action.kind, 'await-load', 'nor is the dead pipeline\'s load joined');
  t.match(action, { kind: 'load-then-run', workerId: 'w1' }, 'a fresh whole-model load on the live worker');
});

t.test('withoutWorkers re-places away from a worker that still looks READY', async (t) => {
  const s = state([readyWorker('w1', 8 * GiB), readyWorker('w2', 2 * GiB)]);
  t.match(decide(s, request, NOW), { kind: 'load-then-run', workerId: 'w1' });
  t.match(decide(withoutWorkers(s, new Set(['w1'])), request, NOW), { kind: 'load-then-run', workerId: 'w2' });
  t.match(decide(withoutWorkers(s, new Set(['w1', 'w2'])), request, NOW), { kind: 'reject', reason: /no worker is READY \(w1: DOWN, w2: DOWN\)/ });
  t.equal(withoutWorkers(s, new Set()), s, 'nothing excluded: the same state');
  t.equal(s.workers[0]?.state, 'READY', 'the input is not changed');
});

t.test('which load failures lose the worker', async (t) => {
  const rows: [number | null, WorkerView['state'] | null, ReturnType<typeof loadFailureKind>][] = [
    [status.UNAVAILABLE, 'READY', 'confirm'],
    [status.UNAVAILABLE, 'DOWN', 'lost'],
    [status.CANCELLED, 'DOWN', 'lost'],
    [status.INTERNAL, null, 'lost'],
    [null, 'DOWN', 'lost'],
    [status.INVALID_ARGUMENT, 'READY', 'own'],
    [status.DATA_LOSS, 'READY', 'own'],
    [status.NOT_FOUND, 'READY', 'own'],
    [status.RESOURCE_EXHAUSTED, 'READY', 'own'],
    [status.CANCELLED, 'READY', 'own'],
    [null, 'READY', 'own'],
  ];
  for (const [code, state, kind] of rows) t.equal(loadFailureKind(code, state), kind, `code ${String(code)} with the worker ${String(state)}`);
});

t.test('withoutInstances: a failed pipeline\'s stage is never run on and its id stays taken', async (t) => {
  const w1 = readyWorker('w1', 8 * GiB, { instances: [instance('m@w1#0', null)] });
  const s = state([w1]);
  t.match(decide(s, request, NOW), { kind: 'run-on', instanceId: 'm@w1#0' });
  const retired = withoutInstances(s, new Set(['m@w1#0']));
  t.match(decide(retired, request, NOW), { kind: 'load-then-run', workerId: 'w1', instanceId: 'm@w1#1' });
  t.equal(s.workers[0]?.instances[0]?.residency, 'ON_DEVICE', 'the input is not changed');
});
