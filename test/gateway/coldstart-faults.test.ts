// Workers dying during a cold start, against in-process fake workers (real gRPC): a load whose
// worker dies is re-placed on another worker and the trace shows both attempts; with no worker
// left the client gets a 503 naming the worker, well before its deadline; re-placement stops
// after MAX_REPLACEMENTS and at the request's deadline (never a hang).
import t from 'tap';
import { MAX_REPLACEMENTS } from '../../gateway/scheduler/loop.js';
import type { RequestTrace } from '../../gateway/scheduler/trace.js';
import type { FakeWorker } from './fixtures/fake-worker.js';
import { addFakeWorker, MODEL, startCluster, type Cluster } from './fixtures/helpers.js';

/** A load gate that never opens: the load stays in FETCH until the worker dies. */
const held = (): Promise<void> => new Promise<void>(() => undefined);


/** Crashes the worker as soon as the gateway asks it to load something. */
function crashOnLoad(w: FakeWorker): void {
  w.once('load', () => w.crash());
}

async function complete(c: Cluster): Promise<{ status: number; body: Record<string, unknown>; path: string | null; trace: RequestTrace; ms: number }> {
  const started = Date.now();
  const res = await fetch(`${c.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, prompt: 'Once', max_tokens: 4 }),
  });
  const body = (await res.json()) as Record<string, unknown>;
  const ms = Date.now() - started;
  const id = res.headers.get('x-paraserve-request-id');
  const trace = (await c.app.inject({ method: 'GET', url: `/admin/traces/${id ?? 'none'}` })).json<RequestTrace>();
  return { status: res.status, body, path: res.headers.get('x-paraserve-path'), trace, ms };
}

t.test('a worker that dies mid-load: the request is served by another worker', async (t) => {
  // w1 has the most free memory, so the first decision picks it.
  const c = await startCluster(t, { id: 'w1', freeBytes: 4e9, loadGate: held }, { requestTimeoutMs: 10_000 });
  crashOnLoad(c.worker);
  const w2 = await addFakeWorker(t, c, { id: 'w2' });

  const r = await complete(c);
  t.equal(r.status, 200, JSON.stringify(r.body));
  t.match(r.path, /^cold;k=1;workers=w2;instance=tiny@w2#0/, 'the path names the surviving worker');
  t.equal(c.worker.loads.length, 1, 'w1 was asked first');
  t.equal(w2.loads.length, 1, 'then w2');
  t.match(r.trace.failedAttempts, [{ workerId: 'w1', instanceId: 'tiny@w1#0', reason: /worker w1 (went DOWN|became unreachable)/ }]);
  t.same(
    r.trace.loads.map((l) => l.instanceId),
    ['tiny@w1#0', 'tiny@w2#0'],
    'both attempts are among the loads waited on',
  );
  t.match(r.trace.decisions, [/^cold: loading tiny@w1#0/, /^failed: loading model 'tiny' on worker w1 failed: .*; re-placing without worker w1$/, /^cold: loading tiny@w2#0/, /^warm: tiny@w2#0/]);
  t.equal(r.trace.status, 'ok');
});

t.test('the only worker dies mid-load: a 503 naming it, long before the deadline', async (t) => {
  const timeoutMs = 10_000;
  const c = await startCluster(t, { id: 'w1', loadGate: held }, { requestTimeoutMs: timeoutMs });
  crashOnLoad(c.worker);
  const r = await complete(c);
  t.equal(r.status, 503);
  t.match(r.body, { error: { code: 'worker_lost', message: /loading model 'tiny' on worker w1 failed: worker w1 (went DOWN|became unreachable) \(.+\); re-placing the request failed: no worker is READY \(w1: DOWN\)/ } });
  t.ok(r.ms < timeoutMs / 4, `answered in ${r.ms} ms (deadline ${timeoutMs} ms)`);
  t.match(r.trace.failedAttempts, [{ workerId: 'w1' }]);
  t.match(r.trace.decisions[r.trace.decisions.length - 1], /^rejected: no worker is READY/);
});

t.test(`re-placement stops after ${MAX_REPLACEMENTS} attempts`, async (t) => {
  const c = await startCluster(t, { id: 'w1', freeBytes: 4e9, loadGate: held }, { requestTimeoutMs: 10_000 });
  crashOnLoad(c.worker);
  const w2 = await addFakeWorker(t, c, { id: 'w2', freeBytes: 3e9, loadGate: held });
  crashOnLoad(w2);
  const w3 = await addFakeWorker(t, c, { id: 'w3', freeBytes: 2e9, loadGate: held });
  crashOnLoad(w3);
  const w4 = await addFakeWorker(t, c, { id: 'w4', freeBytes: 1e9 });
  const r = await complete(c);
  t.equal(r.status, 503);
  t.match(r.body, { error: { code: 'worker_lost', message: new RegExp(`worker w3 .*not re-placed: ${MAX_REPLACEMENTS} re-placements tried`) } });
  t.same(r.trace.failedAttempts.map((f) => f.workerId), ['w1', 'w2', 'w3']);
  t.equal(w4.loads.length, 0, 'no fourth load');
});

t.test('a re-placed load is waited on no longer than the request deadline', async (t) => {
  const timeoutMs = 1_500;
  const c = await startCluster(t, { id: 'w1', freeBytes: 4e9, loadGate: held }, { requestTimeoutMs: timeoutMs });
  crashOnLoad(c.worker);
  const w2 = await addFakeWorker(t, c, { id: 'w2', loadGate: held });
  const r = await complete(c);
  t.equal(w2.loads.length, 1, 'the load was re-placed');
  t.equal(r.status, 503);
  t.match(r.body, { error: { code: 'worker_lost', message: /worker w1 .*the re-placed load did not finish before the request's deadline/ } });
  t.ok(r.ms >= timeoutMs - 50 && r.ms < timeoutMs + 1_000, `answered after ${r.ms} ms (deadline ${timeoutMs} ms)`);
});

t.test('a pipeline stage whose worker dies: the loaded stage is unloaded, the pipeline re-placed', async (t) => {
  // Without consolidation, whose whole-model load on w1 would follow the served request.
  const c = await startCluster(t, { id: 'w1', freeBytes: 4e9 }, { requestTimeoutMs: 10_000, forcedPipelineDegree: 2, consolidate: false });
  const w2 = await addFakeWorker(t, c, { id: 'w2', freeBytes: 3e9, loadGate: held });
  crashOnLoad(w2);
  const w3 = await addFakeWorker(t, c, { id: 'w3', freeBytes: 1e9 });
  const unloaded: string[] = [];
  c.worker.on('unload', (id: string) => unloaded.push(id));

  const r = await complete(c);
  t.equal(r.status, 200, JSON.stringify(r.body));
  t.match(r.path, /^cold;k=2;workers=w1,w3;/, 'the second pipeline avoids the dead worker');
  t.same(c.worker.loads.map((l) => l.stage?.stageIndex), [0, 0], 'w1 loaded stage 0 twice');
  t.equal(w3.loads[0]?.stage?.stageIndex, 1);
  const [first, second] = c.worker.loads.map((l) => l.instanceId);
  t.not(first, second, 'under a new instance id');
  t.same(unloaded, [first], 'the stage of the failed pipeline that did load was unloaded');
  t.same(c.worker.generates.map((g) => g.instanceId), [second], 'only the re-placed pipeline ran');
  t.match(r.trace.failedAttempts, [{ workerId: 'w2', instanceId: first, reason: /stage 1 of model 'tiny' on worker w2 failed/ }]);
});
