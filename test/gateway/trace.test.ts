// Request traces as data: LoadProgress reports folded into phase spans, the path and timing
// headers a trace becomes, and the store keeping only the last requests.
import t from 'tap';
import { pathHeader, phaseMs, recordProgress, RequestTracer, timingHeader, TraceStore, type StageLoadTrace, type SwapTrace } from '../../gateway/scheduler/trace.js';
import type { ColdStartExplanation } from '../../gateway/scheduler/types.js';

const explanation: ColdStartExplanation = {
  source: 'policy',
  degree: 2,
  workers: ['w0', 'w 1'],
  reason: 'cold: degree 2',
  note: null,
  sloMs: 500,
  prediction: null,
  considered: [],
};

t.test('recordProgress: each phase spans its first to its last report, interleaved or not', async (t) => {
  const stage: StageLoadTrace = { workerId: 'w0', stageIndex: 0, spans: [], readyMs: null, linkToNext: null };
  const reports = [['FETCH', 1], ['INIT', 2], ['FETCH', 5], ['INIT', 9], ['COPY', 20], ['FETCH', 40], ['COPY', 75], ['READY', 80]] as const;
  for (const [phase, ms] of reports) {
    recordProgress(stage, { phase, elapsedMs: ms, linkToNext: phase === 'READY' });
    if (phase !== 'READY') t.equal(stage.linkToNext, null, 'link use is known only at READY');
  }
  t.equal(stage.linkToNext, true);
  t.same(stage.spans, [
    { phase: 'FETCH', startMs: 1, endMs: 40 },
    { phase: 'INIT', startMs: 2, endMs: 9 },
    { phase: 'COPY', startMs: 20, endMs: 75 },
  ]);
  t.equal(stage.readyMs, 80);
  t.equal(phaseMs(stage, 'FETCH'), 39);
  t.equal(phaseMs(stage, 'INIT'), 7);
  t.equal(phaseMs(stage, 'COPY'), 55);
});

t.test('a cold request: path and timing headers, load phases the longest over stages', async (t) => {
  const tracer = new RequestTracer('req-1', 'm', 1_000);
  const stages: StageLoadTrace[] = [
    { workerId: 'w0', stageIndex: 0, spans: [{ phase: 'FETCH', startMs: 0, endMs: 100 }], readyMs: 120, linkToNext: true },
    { workerId: 'w 1', stageIndex: 1, spans: [{ phase: 'FETCH', startMs: 0, endMs: 150 }, { phase: 'INIT', startMs: 150, endMs: 160 }], readyMs: 170, linkToNext: false },
  ];
  tracer.decided('cold: degree 2');
  tracer.waitedOnLoad({ instanceId: 'm@w0#0', joined: false, coldStart: { ...explanation, prediction: { totalMs: 412.4 } as ColdStartExplanation['prediction'] }, stages }, 200);
  tracer.placed('w0', 'm@w0#0', 2, 1_210, false);
  tracer.firstToken(1_230);
  tracer.finished(0.5, 12, 30);
  const trace = tracer.snapshot();
  t.match(trace.path, { kind: 'cold', degree: 2, workers: ['w0', 'w 1'], predictedTtftMs: 412.4, sloMs: 500, joined: false });
  t.equal(pathHeader(trace), 'cold;k=2;workers=w0,w%201;instance=m@w0#0;links=1/1;predicted_ms=412;slo_ms=500', 'one hop of one over a device link');
  t.match(trace.timings, { queueMs: 10, loadMs: 200, fetchMs: 150, initMs: 10, copyMs: null, firstTokenMs: 230, prefillMs: 12, decodeMs: 30 });
  t.equal(timingHeader(trace, true), 'queue;dur=10, load;dur=200, fetch;dur=150, init;dur=10, first_token;dur=230');
  t.equal(timingHeader(trace, false), 'queue;dur=10, load;dur=200, fetch;dur=150, init;dur=10, first_token;dur=230, prefill;dur=12, decode;dur=30');
  t.equal(trace.status, 'running');
  tracer.end(1_300, null);
  t.match(tracer.snapshot(), { status: 'ok', error: null, timings: { totalMs: 300 } });
  stages[0]!.readyMs = 999;
  t.equal(trace.loads[0]?.stages[0]?.readyMs, 120, 'a snapshot is a copy');
  stages[1]!.linkToNext = null;
  t.equal(pathHeader(tracer.snapshot()), 'cold;k=2;workers=w0,w%201;instance=m@w0#0;predicted_ms=412;slo_ms=500', 'no link count before every stage is READY');
});

t.test('a warm request has no load part', async (t) => {
  const tracer = new RequestTracer('req-2', 'm', 0);
  tracer.placed('w0', 'm@w0#3', 1, 4, false);
  tracer.end(9, 'worker w0 failed');
  const trace = tracer.snapshot();
  t.equal(pathHeader(trace), 'warm;k=1;instance=m@w0#3;worker=w0');
  t.equal(timingHeader(trace, false), 'queue;dur=4, total;dur=9');
  t.match(trace, { status: 'error', error: 'worker w0 failed' });
  t.equal(pathHeader(new RequestTracer('req-3', 'm', 0).snapshot()), null, 'not placed: no path');
});

t.test('a request on a consolidated instance is warm with a consolidated marker', async (t) => {
  const tracer = new RequestTracer('req-4', 'm', 0);
  tracer.placed('w0', 'm@w0#1', 1, 2, true);
  const trace = tracer.snapshot();
  t.match(trace.path, { kind: 'warm', consolidated: true, degree: 1 });
  t.equal(pathHeader(trace), 'warm;k=1;instance=m@w0#1;worker=w0;consolidated');
});

t.test('a swapped-in request: swap path, swap_in phase out of the queue time', async (t) => {
  const tracer = new RequestTracer('req-5', 'm', 0);
  const swap: SwapTrace = {
    kind: 'swap-in',
    instanceId: 'm@w 0#0',
    workerId: 'w0',
    device: 0,
    source: 'host',
    joined: false,
    evicted: ['a@w0#0', 'b@w0#0'],
    workerMs: 30,
    bytes: 1000,
    reason: 'swap-in: …',
  };
  tracer.waitedOnSwap(swap, 40);
  tracer.placed('w0', 'm@w 0#0', 1, 50, false);
  tracer.firstToken(60);
  const trace = tracer.snapshot();
  t.match(trace.path, { kind: 'swap', source: 'host', moved: false, joined: false, evicted: ['a@w0#0', 'b@w0#0'] });
  t.equal(pathHeader(trace), 'swap;from=host;instance=m@w%200#0;worker=w0;evicted=a@w0#0,b@w0#0');
  t.equal(timingHeader(trace, true), 'queue;dur=10, swap_in;dur=40, first_token;dur=60');
  t.match(trace.timings, { queueMs: 10, swapMs: 40, loadMs: null });

  const mover = new RequestTracer('req-6', 'm', 0);
  mover.waitedOnSwap({ ...swap, kind: 'move', source: 'peer', joined: true, evicted: [] }, 5);
  mover.placed('w0', 'm@w 0#0', 1, 5, false);
  t.equal(pathHeader(mover.snapshot()), 'swap;from=peer;instance=m@w%200#0;worker=w0;moved;joined');
});

t.test('a request that waited for a batch slot is warm with a waited marker', async (t) => {
  const tracer = new RequestTracer('req-7', 'm', 0);
  tracer.waitedForInstance();
  tracer.placed('w0', 'm@w0#0', 1, 25, false);
  const trace = tracer.snapshot();
  t.equal(pathHeader(trace), 'warm;k=1;instance=m@w0#0;worker=w0;waited');
  t.equal(trace.timings.queueMs, 25, 'the wait is queue time');
});

t.test('TraceStore keeps the last `capacity` requests', async (t) => {
  const store = new TraceStore(2);
  store.start('a', 'm', 0);
  store.start('b', 'm', 0);
  store.start('c', 'm', 0);
  t.equal(store.get('a'), null);
  t.match(store.get('b'), { requestId: 'b', status: 'running' });
  t.match(store.get('c'), { requestId: 'c' });
});
