// decide() with the cold-start policy wired in, table-driven: a model with a tight TTFT SLO gets
// a pipeline over distinct workers, one without an SLO the whole-model path as before, a worker
// whose link is busy with another load is avoided, a forced degree still wins, an SLO no degree
// meets gets the best degree with a note, and a model no device can take is a 503.
import t from 'tap';
import type { WorkerView } from '../../gateway/cluster/worker-view.js';
import { chooseColdStartPlan, decide } from '../../gateway/scheduler/decide.js';
import type { ColdStartRequest, InFlightLoad, ScheduleRequest } from '../../gateway/scheduler/types.js';
import type { StageByteProfile } from '../../worker/models/stage-plan.js';
import { GiB, readyWorker, schedulerState as state, type DecideRow as Row } from './fixtures/scheduler-views.js';

const NOW = 7_000_000;
const LAYERS = 8;

function worker(id: string, free: number, o: Partial<WorkerView> = {}): WorkerView {
  return readyWorker(id, free, { backend: 'cuda', devices: [{ index: 0, kind: 'cuda', name: 'gpu', totalBytes: 80 * GiB, freeBytes: free }], ...o });
}

/** 8 layers of 1 GiB, small ends: about 8 GiB, ~6.9 s to fetch at the default 10 Gbit/s. */
const profile: StageByteProfile = { layerBytes: new Array<number>(LAYERS).fill(GiB), embeddingBytes: 64 * 1024 ** 2, headBytes: 64 * 1024 ** 2, tiedEmbeddings: false };
const modelBytes = LAYERS * GiB + 128 * 1024 ** 2;

function coldStart(ttftSloMs: number, maxDegree = 8): ColdStartRequest {
  return { profile, ttftSloMs, maxDegree };
}

function request(o: Partial<ScheduleRequest> = {}): ScheduleRequest {
  return { model: 'm', modelBytes, range: { layerStart: 0, layerEnd: LAYERS, hasEmbeddings: true, hasHead: true }, pipeline: null, coldStart: null, ...o };
}

function otherModelLoading(workerId: string): InFlightLoad {
  return { instanceId: `other@${workerId}#0`, model: 'other', workerId, device: 0, bytes: GiB, startedMs: NOW - 50, status: 'loading', pipelineStage: null };
}

const rows: Row[] = [
  {
    name: 'tight SLO: the smallest degree that meets it, stages on distinct workers',
    state: state([worker('w1', 40 * GiB), worker('w2', 40 * GiB), worker('w3', 40 * GiB)]),
    request: request({ coldStart: coldStart(4_000) }),
    expect: (tt, a) => {
      tt.equal(a.kind, 'load-pipeline-then-run');
      if (a.kind !== 'load-pipeline-then-run') return;
      tt.equal(a.stages.length, 2, 'degree 1 predicts ~7 s, degree 2 ~3.6 s');
      tt.equal(new Set(a.stages.map((s) => s.workerId)).size, 2, 'distinct workers');
      tt.same(a.stages.map((s) => [s.range.hasEmbeddings, s.range.hasHead]), [[true, false], [false, true]]);
      tt.equal(a.stages[0]?.range.layerEnd, a.stages[1]?.range.layerStart, 'contiguous ranges');
      tt.equal(a.instanceId, `m@${a.stages[0]?.workerId}#0`);
      tt.match(a.coldStart, { source: 'policy', degree: 2, sloMs: 4_000, note: null, workers: a.stages.map((s) => s.workerId) });
      tt.ok((a.coldStart.prediction?.totalMs ?? Infinity) <= 4_000, 'the prediction meets the SLO');
      tt.same(a.coldStart.considered.map((c) => c.k), [1, 2]);
      tt.match(a.reason, /degree 2 .*≤ SLO 4000 ms/);
    },
  },
  {
    name: 'tighter SLO: degree 4',
    state: state([worker('w1', 40 * GiB), worker('w2', 40 * GiB), worker('w3', 40 * GiB), worker('w4', 40 * GiB)]),
    request: request({ coldStart: coldStart(2_000) }),
    expect: (tt, a) => {
      tt.equal(a.kind, 'load-pipeline-then-run');
      if (a.kind === 'load-pipeline-then-run') tt.same(a.stages.map((s) => s.workerId).sort(), ['w1', 'w2', 'w3', 'w4']);
    },
  },
  {
    name: 'no SLO: the whole model on the worker with the most free memory, as before',
    state: state([worker('w1', 20 * GiB), worker('w2', 40 * GiB)]),
    request: request(),
    expect: (tt, a) => {
      tt.match(a, { kind: 'load-then-run', workerId: 'w2', instanceId: 'm@w2#0', bytes: modelBytes, range: { layerStart: 0, layerEnd: LAYERS } });
      if (a.kind === 'load-then-run') tt.match(a.coldStart, { source: 'default', degree: 1, workers: ['w2'], prediction: null });
    },
  },
  {
    name: 'loose SLO: degree 1 through the policy, same instance ids as the whole-model path',
    state: state([worker('w1', 40 * GiB), worker('w2', 40 * GiB)]),
    request: request({ coldStart: coldStart(60_000) }),
    expect: (tt, a) => {
      tt.match(a, { kind: 'load-then-run', workerId: 'w1', instanceId: 'm@w1#0', device: 0, bytes: modelBytes });
      if (a.kind === 'load-then-run') tt.match(a.coldStart, { source: 'policy', degree: 1, sloMs: 60_000, prediction: { totalMs: Number } });
    },
  },
  {
    name: 'a worker whose link carries another load is avoided, though it has more free memory',
    state: state([worker('w1', 60 * GiB), worker('w2', 30 * GiB)], [otherModelLoading('w1')]),
    request: request({ coldStart: coldStart(60_000) }),
    expect: (tt, a) => tt.match(a, { kind: 'load-then-run', workerId: 'w2', coldStart: { workers: ['w2'] } }),
  },
  {
    name: 'busy links are avoided in a pipeline too',
    state: state([worker('w1', 40 * GiB), worker('w2', 40 * GiB), worker('w3', 40 * GiB)], [otherModelLoading('w2')]),
    request: request({ coldStart: coldStart(4_000) }),
    expect: (tt, a) => {
      tt.equal(a.kind, 'load-pipeline-then-run');
      if (a.kind === 'load-pipeline-then-run') tt.same(a.stages.map((s) => s.workerId).sort(), ['w1', 'w3']);
    },
  },
  {
    name: 'a forced degree wins over the policy',
    state: state([worker('w1', 40 * GiB), worker('w2', 40 * GiB), worker('w3', 40 * GiB)]),
    request: request({
      coldStart: coldStart(60_000),
      pipeline: [0, 1, 2].map((i) => ({ range: { layerStart: i, layerEnd: i + 1, hasEmbeddings: i === 0, hasHead: i === 2 }, bytes: GiB })),
    }),
    expect: (tt, a) => {
      tt.equal(a.kind, 'load-pipeline-then-run');
      if (a.kind === 'load-pipeline-then-run') tt.match(a.coldStart, { source: 'forced', degree: 3, prediction: null });
    },
  },
  {
    name: 'an SLO no degree meets: the best available degree, with a note',
    state: state([worker('w1', 40 * GiB), worker('w2', 40 * GiB, { state: 'DRAINING' })]),
    request: request({ coldStart: coldStart(1_000) }),
    expect: (tt, a) => {
      tt.equal(a.kind, 'load-then-run');
      if (a.kind !== 'load-then-run') return;
      tt.match(a.coldStart, { source: 'policy', degree: 1, sloMs: 1_000, note: /no degree meets the TTFT SLO of 1000 ms/ });
      tt.match(a.reason, /capped at 1 by 1 READY worker/);
    },
  },
  {
    name: 'no device with room for any split: 503 saying the most free',
    state: state([worker('w1', GiB / 2), worker('w2', GiB / 2)]),
    request: request({ coldStart: coldStart(4_000) }),
    expect: (tt, a) => tt.match(a, { kind: 'reject', status: 503, reason: /most free on one device is 512\.0 MiB/ }),
  },
];

for (const row of rows) {
  t.test(row.name, async (tt) => row.expect(tt, decide(row.state, row.request, NOW)));
}

t.test('chooseColdStartPlan: the policy only with an SLO and no forced degree', async (t) => {
  const s = state([worker('a', 40 * GiB), worker('b', 40 * GiB)]);
  t.match(chooseColdStartPlan(s, request()), { kind: 'configured', degree: 1 });
  t.match(chooseColdStartPlan(s, request({ coldStart: coldStart(60_000) })), { kind: 'chosen', choice: { k: 1 } });
  t.match(chooseColdStartPlan(s, request({ coldStart: coldStart(4_000) })), { kind: 'chosen', choice: { k: 2, sloMet: true } });
});
