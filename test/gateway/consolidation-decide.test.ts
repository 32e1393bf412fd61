// chooseConsolidationTarget and decide()'s preference, table-driven: a READY pipeline is loaded
// whole on its stage-0 worker when that has room, else on the next member with room, else on
// the non-member with the most free memory; never twice (a whole-model instance exists or is
// loading) nor where nothing fits; once the whole-model instance is runnable it wins over the
// pipeline whatever their active counts, and while it loads the pipeline keeps serving.
import t from 'tap';
import type { InstanceView, WorkerView } from '../../gateway/cluster/worker-view.js';
import { chooseConsolidationTarget, decide } from '../../gateway/scheduler/decide.js';
import type { ConsolidationRequest, InFlightLoad, ScheduleRequest, SchedulerState } from '../../gateway/scheduler/types.js';
import { GiB, readyWorker, stageView } from './fixtures/scheduler-views.js';

const NOW = 7_000_000;
const RANGE = { layerStart: 0, layerEnd: 2, hasEmbeddings: true, hasHead: true };
const PIPE = 'm@a#0';

function stage(index: number, o: Partial<InstanceView> = {}): InstanceView {
  return { instanceId: PIPE, model: 'm', stage: stageView(index, 2), device: 0, residency: 'ON_DEVICE', deviceBytes: GiB, hostBytes: GiB, activeRequests: 0, error: null, lastUsedMs: 0, ...o };
}

function whole(id: string, o: Partial<InstanceView> = {}): InstanceView {
  return { instanceId: id, model: 'm', stage: null, device: 0, residency: 'ON_DEVICE', deviceBytes: 2 * GiB, hostBytes: 2 * GiB, activeRequests: 0, error: null, lastUsedMs: 0, ...o };
}

/** Pipeline m@a#0: stage 0 on a, stage 1 on b; `freeA`/`freeB` their free bytes; `others` more workers. */
function state(freeA: number, freeB: number, others: WorkerView[] = [], loads: InFlightLoad[] = [], extraA: InstanceView[] = []): SchedulerState {
  return {
    workers: [readyWorker('a', freeA, { instances: [stage(0), ...extraA] }), readyWorker('b', freeB, { instances: [stage(1)] }), ...others],
    loads,
    gatewayActive: new Map(),
  };
}

const PIPELINE: ConsolidationRequest = { model: 'm', instanceId: PIPE, workers: ['a', 'b'], range: RANGE, bytes: 2 * GiB };

function wholeLoad(workerId: string, instanceId: string, status: InFlightLoad['status']): InFlightLoad {
  return { instanceId, model: 'm', workerId, device: 0, bytes: 2 * GiB, startedMs: NOW, status, pipelineStage: null };
}

const targetCases: { name: string; state: SchedulerState; want: { worker: string; instance: string; why: RegExp } | { skip: RegExp } }[] = [
  { name: "stage 0's worker has room", state: state(4 * GiB, 4 * GiB), want: { worker: 'a', instance: 'm@a#1', why: /a runs stage 0 of m@a#0/ } },
  { name: 'stage 0 full: the next member', state: state(GiB, 3 * GiB), want: { worker: 'b', instance: 'm@b#0', why: /b is stage 1 of m@a#0 .*stage 0's worker a has not/ } },
  {
    name: 'no member fits: the non-member with the most free',
    state: state(GiB, GiB, [readyWorker('c', 3 * GiB), readyWorker('d', 5 * GiB)]),
    want: { worker: 'd', instance: 'm@d#0', why: /no member of m@a#0 has room; d/ },
  },
  {
    name: 'a load already headed to stage 0 counts against its room',
    state: state(3 * GiB, 4 * GiB, [], [{ instanceId: 'x@a#0', model: 'x', workerId: 'a', device: 0, bytes: 2 * GiB, startedMs: NOW, status: 'loading', pipelineStage: null }]),
    want: { worker: 'b', instance: 'm@b#0', why: /stage 1/ },
  },
  { name: 'a DOWN member is passed over', state: { ...state(4 * GiB, 4 * GiB), workers: [readyWorker('a', 4 * GiB, { state: 'DOWN', instances: [stage(0)] }), readyWorker('b', 4 * GiB, { instances: [stage(1)] })] }, want: { worker: 'b', instance: 'm@b#0', why: /stage 1/ } },
  { name: 'nothing fits', state: state(GiB, 1.5 * GiB, [readyWorker('c', GiB)]), want: { skip: /no device has 2(\.0)? GiB free to consolidate m@a#0; the most free is 1\.5 GiB on b/ } },
  { name: 'a whole-model instance is loading', state: state(4 * GiB, 4 * GiB, [], [wholeLoad('b', 'm@b#0', 'loading')]), want: { skip: /already has a whole-model instance \(m@b#0, loading\)/ } },
  { name: 'a whole-model instance is on a device', state: state(4 * GiB, 4 * GiB, [], [], [whole('m@a#1')]), want: { skip: /already has a whole-model instance \(m@a#1\)/ } },
];

for (const c of targetCases) {
  t.test(`consolidation target: ${c.name}`, async (t) => {
    const got = chooseConsolidationTarget(c.state, PIPELINE, NOW);
    if ('skip' in c.want) {
      t.equal(got.kind, 'skip');
      if (got.kind === 'skip') t.match(got.reason, c.want.skip);
      return;
    }
    t.equal(got.kind, 'consolidate');
    if (got.kind !== 'consolidate') return;
    t.match(got.load, { kind: 'load-then-run', workerId: c.want.worker, instanceId: c.want.instance, device: 0, range: RANGE, bytes: 2 * GiB, startedMs: NOW });
    t.match(got.load.reason, c.want.why);
    t.match(got.load.coldStart, { source: 'default', degree: 1, workers: [c.want.worker] });
  });
}

const REQ: ScheduleRequest = { model: 'm', modelBytes: 2 * GiB, range: RANGE, pipeline: null, coldStart: null };

t.test('a runnable whole-model instance wins over the pipeline, whatever the active counts', async (t) => {
  const s = state(4 * GiB, 4 * GiB, [], [], [whole('m@a#1', { activeRequests: 5 })]);
  t.match(decide(s, REQ, NOW), { kind: 'run-on', workerId: 'a', instanceId: 'm@a#1' });
  const answered = state(4 * GiB, 4 * GiB, [], [wholeLoad('b', 'm@b#0', 'ready')]);
  t.match(decide(answered, REQ, NOW), { kind: 'run-on', workerId: 'b', instanceId: 'm@b#0' }, 'READY answered before the snapshot lists it');
});

t.test('while the whole-model instance loads, the pipeline serves', async (t) => {
  const s = state(4 * GiB, 4 * GiB, [], [wholeLoad('a', 'm@a#1', 'loading')], [whole('m@a#1', { residency: 'LOADING' })]);
  const got = decide(s, REQ, NOW);
  t.match(got, { kind: 'run-on', workerId: 'a', instanceId: PIPE });
  t.match(got.kind === 'run-on' ? got.reason : '', /\(a pipeline\)/);
});
