// decide() for pipelines, table-driven: a forced degree k places k stages on k distinct READY
// workers with the most free memory (a stage its worker kept from an earlier pipeline going
// back there), a pipeline runs (on stage 0's worker) only once every
// stage is on a device of a READY worker, concurrent requests join its load, and a cluster
// too small or too full for the stages is a 503 that says why.
import t from 'tap';
import type { InstanceView } from '../../gateway/cluster/worker-view.js';
import { chooseColdStartPlan, decide } from '../../gateway/scheduler/decide.js';
import type { InFlightLoad, PlannedStage, ScheduleRequest } from '../../gateway/scheduler/types.js';
import { GiB, readyWorker, stageView, schedulerState as state, type DecideRow as Row } from './fixtures/scheduler-views.js';

const NOW = 5_000_000;

function stageInstance(id: string, index: number, count: number, o: Partial<InstanceView> = {}): InstanceView {
  return { instanceId: id, model: 'm', stage: stageView(index, count), device: 0, residency: 'ON_DEVICE', deviceBytes: GiB, hostBytes: GiB, activeRequests: 0, error: null, lastUsedMs: 0, ...o };
}

function plan(k: number, bytes = GiB): PlannedStage[] {
  return Array.from({ length: k }, (_, i) => {
    const { stageIndex: _i, stageCount: _c, ...range } = stageView(i, k);
    return { range, bytes };
  });
}

function request(k: number, bytes = GiB): ScheduleRequest {
  return {
    model: 'm',
    modelBytes: k * bytes,
    range: { layerStart: 0, layerEnd: k, hasEmbeddings: true, hasHead: true },
    pipeline: k > 1 ? plan(k, bytes) : null,
    coldStart: null,
  };
}

function stageLoad(id: string, workerId: string, index: number, count: number, status: InFlightLoad['status']): InFlightLoad {
  return { instanceId: id, model: 'm', workerId, device: 0, bytes: GiB, startedMs: NOW - 100, status, pipelineStage: { index, count } };
}

const rows: Row[] = [
  {
    name: 'a forced degree 2 places stages on the two workers with the most free memory',
    state: state([readyWorker('w1', 3 * GiB), readyWorker('w2', 9 * GiB), readyWorker('w3', 6 * GiB)]),
    request: request(2),
    expect: (tt, a) => {
      tt.equal(a.kind, 'load-pipeline-then-run');
      if (a.kind !== 'load-pipeline-then-run') return;
      tt.same(a.stages.map((s) => s.workerId), ['w2', 'w3']);
      tt.same(a.stages.map((s) => [s.range.layerStart, s.range.hasEmbeddings, s.range.hasHead]), [[0, true, false], [1, false, true]]);
      tt.equal(a.instanceId, 'm@w2#0');
      tt.match(a.reason, /2 stages/);
    },
  },
  {
    name: 'workers that kept a stage of an earlier pipeline of this split get that stage back',
    state: state([
      readyWorker('w1', 9 * GiB),
      readyWorker('w2', 8 * GiB),
      readyWorker('w3', 3 * GiB, { instances: [stageInstance('m@w9#0', 0, 2, { residency: 'HOST_ONLY', deviceBytes: 0, device: -1 })] }),
      readyWorker('w4', 2 * GiB, { instances: [stageInstance('m@w8#0', 1, 3, { residency: 'HOST_ONLY', deviceBytes: 0, device: -1 })] }),
    ]),
    request: request(2),
    expect: (tt, a) => {
      tt.equal(a.kind, 'load-pipeline-then-run');
      if (a.kind !== 'load-pipeline-then-run') return;
      tt.same(a.stages.map((s) => s.workerId), ['w3', 'w1'], 'stage 0 to its holder; a stage of another split is no match; the rest by free memory');
    },
  },
  {
    name: 'too few READY workers for the degree: 503 saying how many',
    state: state([readyWorker('w1', 9 * GiB), readyWorker('w2', 9 * GiB, { state: 'DRAINING' })]),
    request: request(2),
    expect: (tt, a) => tt.match(a, { kind: 'reject', status: 503, reason: /needs 2 READY workers with a device; 1 are/ }),
  },
  {
    name: 'a stage that does not fit its worker: 503',
    state: state([readyWorker('w1', 9 * GiB), readyWorker('w2', GiB / 2)]),
    request: request(2),
    expect: (tt, a) => tt.match(a, { kind: 'reject', reason: /stage 1 .* worker w2/ }),
  },
  {
    name: 'a complete pipeline runs on stage 0\'s worker',
    state: state([
      readyWorker('w2', GiB, { instances: [stageInstance('m@w1#0', 1, 2)] }),
      readyWorker('w1', GiB, { instances: [stageInstance('m@w1#0', 0, 2)] }),
    ]),
    request: request(2),
    expect: (tt, a) => tt.match(a, { kind: 'run-on', workerId: 'w1', instanceId: 'm@w1#0' }),
  },
  {
    name: 'a pipeline missing a stage (its worker is DOWN) does not serve: a new pipeline loads',
    state: state([
      readyWorker('w1', 9 * GiB, { instances: [stageInstance('m@w1#0', 0, 2)] }),
      readyWorker('w2', 9 * GiB, { state: 'DOWN', instances: [stageInstance('m@w1#0', 1, 2)] }),
      readyWorker('w3', 8 * GiB),
    ]),
    request: request(2),
    expect: (tt, a) => {
      tt.equal(a.kind, 'load-pipeline-then-run');
      if (a.kind === 'load-pipeline-then-run') tt.not(a.instanceId, 'm@w1#0', 'a fresh instance id');
    },
  },
  {
    name: 'stages answered READY before snapshots show them: runnable',
    state: state([readyWorker('w1', GiB), readyWorker('w2', GiB)], [stageLoad('m@w1#0', 'w1', 0, 2, 'ready'), stageLoad('m@w1#0', 'w2', 1, 2, 'ready')]),
    request: request(2),
    expect: (tt, a) => tt.match(a, { kind: 'run-on', workerId: 'w1', instanceId: 'm@w1#0' }),
  },
  {
    name: 'one stage still loading: join the load',
    state: state([readyWorker('w1', GiB), readyWorker('w2', GiB)], [stageLoad('m@w1#0', 'w1', 0, 2, 'ready'), stageLoad('m@w1#0', 'w2', 1, 2, 'loading')]),
    request: request(2),
    expect: (tt, a) => tt.match(a, { kind: 'await-load', instanceId: 'm@w1#0' }),
  },
  {
    name: 'a warm whole-model instance wins over a pipelined cold start',
    state: state([
      readyWorker('w1', GiB, {
        instances: [{ ...stageInstance('m@w1#0', 0, 1), stage: { ...stageView(0, 1), layerEnd: 2, hasHead: true } }],
      }),
      readyWorker('w2', 9 * GiB),
    ]),
    request: request(2),
    expect: (tt, a) => tt.match(a, { kind: 'run-on', instanceId: 'm@w1#0' }),
  },
];

t.test('pipeline decisions', async (t) => {
  for (const row of rows) {
    await t.test(row.name, async (tt) => row.expect(tt, decide(row.state, row.request, NOW)));
  }
});

t.test('chooseColdStartPlan: the forced degree and READY workers by free memory', async (t) => {
  const s = state([readyWorker('a', 2 * GiB), readyWorker('b', 5 * GiB, { state: 'DRAINED' }), readyWorker('c', 7 * GiB), readyWorker('d', 7 * GiB, { activeRequests: 1 })]);
  const p = chooseColdStartPlan(s, request(4));
  t.equal(p.kind, 'configured');
  if (p.kind !== 'configured') return;
  t.equal(p.degree, 4);
  t.same(p.workers.map((w) => w.id), ['c', 'd', 'a']);
  t.match(chooseColdStartPlan(s, request(1)), { kind: 'configured', degree: 1 });
});
