// GPU sharing as the gateway's loop performs it, against the fake worker (one device, instances
// that keep a host copy): a full model queue answers 429 with Retry-After while a queued request
// waits for a busy instance's batch slot; keep-alive swaps an idle model out, then unloads its
// host copy (scale to zero), with per-model values from the registry; a host-cached model is
// swapped in after the idle model in its way is swapped out, and the path, timing, trace and
// metrics say so; requests waiting for room are served least slack first; a model that fits
// nowhere, or a worker whose swap-ins fail, gives a 503 that says why; without swapping (the
// baseline) an evicted model is unloaded and starts cold.
import * as grpc from '@grpc/grpc-js';
import OpenAI from 'openai';
import { pino } from 'pino';
import t, { type Test } from 'tap';
import type { GatewayDeps } from '../../gateway/app.js';
import type { RequestTrace } from '../../gateway/scheduler/trace.js';
import { nextEvent } from './fixtures/fake-worker.js';
import { MODEL, startCluster, tinyModelUri, type Cluster } from './fixtures/helpers.js';
import { until } from './fixtures/real-workers.js';

const MiB = 1024 * 1024;

function post(url: string, model: string, signal: AbortSignal | null = null): Promise<Response> {
  return fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt: 'Once', max_tokens: 4, temperature: 0 }),
    signal,
  });
}

t.test('a full queue answers 429 with Retry-After; the queued request runs when the slot frees', async (t) => {
  let generates = 0;
  const c = await startCluster(
    t,
    { script: () => ({ tokens: c.tokenizer.encode('Hello', false), end: generates++ === 0 ? 'stall' : 'stop' }) },
    { queueCapacity: 1, sharing: { maxBatch: 1, ttftSloMs: 10_000, gpuKeepAliveMs: 600_000, hostKeepAliveMs: 600_000 } },
  );
  const first = new AbortController();
  const running = nextEvent(c.worker, 'generate');
  const held = post(c.url, MODEL, first.signal).catch((e: unknown) => e);
  await running;

  // Two more while the only slot is taken: one waits in the queue (capacity 1), the other is refused.
  const answer = async (): Promise<{ status: number; headers: Headers; body: string }> => {
    const res = await post(c.url, MODEL);
    return { status: res.status, headers: res.headers, body: await res.text() };
  };
  const both = [answer(), answer()];
  const refused = await Promise.race(both.map((p) => p.then((r) => (r.status === 429 ? r : new Promise<never>(() => undefined)))));
  t.match(JSON.parse(refused.body), { error: { type: 'rate_limit_error', code: 'queue_full', param: null, message: /queue of 'tiny' is full \(1 waiting\)/ } });
  const retryAfter = Number(refused.headers.get('retry-after'));
  t.ok(Number.isInteger(retryAfter) && retryAfter >= 1, `Retry-After is whole seconds (${retryAfter})`);

  const openai = new OpenAI({ baseURL: `${c.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const err = await openai.completions.create({ model: MODEL, prompt: 'Once', max_tokens: 4 }).catch((e: unknown) => e);
  t.ok(err instanceof OpenAI.RateLimitError, 'the official client raises a RateLimitError');
  t.equal((err as InstanceType<typeof OpenAI.APIError>).headers?.get('retry-after'), String(retryAfter));

  first.abort();
  await held;
  const [x, y] = await Promise.all(both);
  const served = x!.status === 429 ? y! : x!;
  t.equal(served.status, 200, 'the queued request ran once the slot freed');
  t.equal(served.headers.get('x-paraserve-path'), 'warm;k=1;instance=tiny@w1#0;worker=w1;waited');
  t.match(served.headers.get('x-paraserve-timing'), /^queue;dur=[0-9.]+, first_token/);
});

t.test('a load the worker refuses for lack of room is decided again, not failed', async (t) => {
  const c = await startCluster(t, {}, { sharing: { maxBatch: 16, ttftSloMs: 10_000, gpuKeepAliveMs: 600_000, hostKeepAliveMs: 600_000 } });
  c.worker.refuseLoads = 2;
  const res = await post(c.url, MODEL);
  t.equal(res.status, 200, await res.clone().text());
  t.equal(c.worker.loads.length, 3, 'two refused loads, then one that succeeded');
  const trace = (await c.app.inject({ method: 'GET', url: `/admin/traces/${res.headers.get('x-paraserve-request-id')}` })).json() as RequestTrace;
  t.match(JSON.stringify(trace), /the worker had no room after all: deciding again \(2 of 5\)/);

  const full = await startCluster(t, {}, { sharing: { maxBatch: 16, ttftSloMs: 10_000, gpuKeepAliveMs: 600_000, hostKeepAliveMs: 600_000 } });
  full.worker.refuseLoads = 100;
  const refused = await post(full.url, MODEL);
  t.equal(refused.status, 503, 'a worker that always refuses fails the request');
  t.match(await refused.json(), { error: { code: 'worker_busy', message: /needs more bytes than are free/ } });
  t.equal(full.worker.loads.length, 6, 'after the first load and 5 more');
});

t.test('keep-alive: an idle model is swapped out, then unloaded; the registry sets its keep-alive', async (t) => {
  const c = await startCluster(t, {}, { sharing: { maxBatch: 16, ttftSloMs: 10_000, gpuKeepAliveMs: 600_000, hostKeepAliveMs: 600_000 } });
  const reg = await c.app.inject({
    method: 'POST',
    url: '/admin/models',
    payload: { name: 'brief', source: await tinyModelUri(), files: null, ttftSloMs: null, gpuKeepAliveMs: 150, hostKeepAliveMs: 400 },
  });
  t.equal(reg.statusCode, 201, reg.body);
  t.match(reg.json(), { model: { gpuKeepAliveMs: 150, hostKeepAliveMs: 400 } });

  const at = (name: string): Promise<{ id: string; ms: number }> => new Promise((resolve) => c.worker.once(name, (id: string) => resolve({ id, ms: Date.now() })));
  const swappedOut = at('swap-out');
  const unloaded = at('unload');
  const res = await post(c.url, 'brief');
  t.equal(res.status, 200);
  await res.text();
  const trace = (await (await fetch(`${c.url}/admin/traces/${res.headers.get('x-paraserve-request-id')}`)).json()) as RequestTrace;
  const ended = trace.arrivalMs + (trace.timings.totalMs ?? 0);
  const out = await swappedOut;
  t.equal(out.id, 'brief@w1#0', 'swapped out after its GPU keep-alive');
  t.ok(out.ms - ended >= 145, `not before its GPU keep-alive (${out.ms - ended} ms idle)`);
  t.same(c.worker.residencies(), { 'brief@w1#0': 'HOST_ONLY' }, 'its host copy stays');
  const gone = await unloaded;
  t.equal(gone.id, 'brief@w1#0', 'unloaded after its host keep-alive: scaled to zero');
  t.ok(gone.ms - ended >= 395, `not before its host keep-alive (${gone.ms - ended} ms idle)`);
  t.same(c.worker.calls, [
    { kind: 'swap-out', instanceId: 'brief@w1#0' },
    { kind: 'unload', instanceId: 'brief@w1#0' },
  ]);

  const again = await post(c.url, 'brief');
  t.equal(again.status, 200, 'the next request starts it cold');
  t.match(again.headers.get('x-paraserve-path'), /^cold;k=1;workers=w1;instance=brief@w1#0/);
  t.equal(c.worker.loads.length, 2);
});

/** A device with room for one of two models: 'other' on it (idle), 'tiny' in host memory. */
async function oneRoomTwoModels(t: Test, deps: Partial<GatewayDeps> = {}): Promise<Cluster> {
  const c = await startCluster(t, { freeBytes: 15 * MiB, instanceBytes: 10 * MiB }, deps);
  t.ok(c.app.registry.getModel(MODEL)!.bytes < 10 * MiB, 'the tiny model fits in an instance of the fake worker');
  const reg = await c.app.inject({ method: 'POST', url: '/admin/models', payload: { name: 'other', source: await tinyModelUri(), files: null, ttftSloMs: null } });
  t.equal(reg.statusCode, 201, reg.body);
  c.worker.addInstance('other@w1#0', 'other');
  c.worker.addInstance('tiny@w1#0', MODEL, 'HOST_ONLY');
  await until(c.app, () => (c.app.cluster.view('w1')?.instances.length ?? 0) === 2);
  return c;
}

t.test('a host-cached model is swapped in after the idle model in its way is swapped out', async (t) => {
  const c = await oneRoomTwoModels(t);

  const res = await post(c.url, MODEL);
  t.equal(res.status, 200);
  await res.text();
  t.same(c.worker.calls, [
    { kind: 'swap-out', instanceId: 'other@w1#0' },
    { kind: 'swap-in', instanceId: 'tiny@w1#0', device: 0 },
  ], 'room first, then the swap-in');
  t.equal(res.headers.get('x-paraserve-path'), 'swap;from=host;instance=tiny@w1#0;worker=w1;evicted=other@w1#0');
  t.match(res.headers.get('x-paraserve-timing'), /^queue;dur=[0-9.]+, swap_in;dur=[0-9.]+, first_token/);
  t.equal(c.worker.generates.at(-1)?.instanceId, 'tiny@w1#0');
  const trace = (await (await fetch(`${c.url}/admin/traces/${res.headers.get('x-paraserve-request-id')}`)).json()) as RequestTrace;
  t.match(trace, {
    status: 'ok',
    path: { kind: 'swap', source: 'host', moved: false, joined: false, evicted: ['other@w1#0'] },
    swaps: [{ instanceId: 'tiny@w1#0', workerId: 'w1', device: 0, source: 'host', evicted: ['other@w1#0'], workerMs: 2, reason: /^swap-in: / }],
    loads: [],
    timings: { swapMs: Number, loadMs: null },
  });

  const back = await post(c.url, 'other');
  t.equal(back.status, 200);
  t.equal(back.headers.get('x-paraserve-path'), 'swap;from=host;instance=other@w1#0;worker=w1;evicted=tiny@w1#0', 'and back again');
  const warm = await post(c.url, 'other');
  t.equal(warm.headers.get('x-paraserve-path'), 'warm;k=1;instance=other@w1#0;worker=w1');
  t.equal(c.worker.loads.length, 0, 'nothing was loaded from storage');

  const metrics = await (await fetch(`${c.url}/metrics`)).text();
  t.match(metrics, /^paraserve_swap_seconds_count\{model="tiny",direction="in",outcome="ok"\} 1$/m);
  t.match(metrics, /^paraserve_swap_seconds_count\{model="tiny",direction="out",outcome="ok"\} 1$/m);
  t.match(metrics, /^paraserve_request_phase_seconds_count\{path="swap",degree="1",phase="swap_in"\} 2$/m);
});

t.test('requests waiting for room go least slack first', async (t) => {
  // Both waiting requests must have found no room before the device frees: the gateway's debug
  // log says when each did (it sleeps in the same step).
  const noRoom = new Set<string>();
  let bothWaiting: () => void = () => undefined;
  const waiting = new Promise<void>((resolve) => (bothWaiting = resolve));
  const logger = pino({ level: 'debug' }, {
    write: (line: string) => {
      const entry = JSON.parse(line) as { msg?: string; route?: string; model?: string };
      if (entry.msg === 'swap routing' && entry.route === 'no-room' && entry.model) noRoom.add(entry.model);
      if (noRoom.has('relaxed') && noRoom.has('urgent')) bothWaiting();
    },
  });
  let generates = 0;
  const c = await startCluster(
    t,
    {
      freeBytes: 15 * MiB,
      instanceBytes: 10 * MiB,
      script: () => ({ tokens: c.tokenizer.encode('Hello', false), end: generates++ === 0 ? 'stall' : 'stop' }),
    },
    { logger },
  );
  for (const [name, ttftSloMs] of [['relaxed', 60_000], ['urgent', 2_000]] as const) {
    const reg = await c.app.inject({ method: 'POST', url: '/admin/models', payload: { name, source: await tinyModelUri(), files: null, ttftSloMs } });
    t.equal(reg.statusCode, 201, reg.body);
  }
  c.worker.addInstance('tiny@w1#0', MODEL);
  c.worker.addInstance('relaxed@w1#0', 'relaxed', 'HOST_ONLY');
  c.worker.addInstance('urgent@w1#0', 'urgent', 'HOST_ONLY');
  await until(c.app, () => (c.app.cluster.view('w1')?.instances.length ?? 0) === 3);

  // tiny's request holds the device (a busy copy is never evicted); the other two wait for room.
  const holder = new AbortController();
  const running = nextEvent(c.worker, 'generate');
  const held = post(c.url, MODEL, holder.signal).catch((e: unknown) => e);
  await running;
  const relaxed = post(c.url, 'relaxed');
  const urgent = post(c.url, 'urgent');
  await waiting;
  t.same(c.worker.calls, [], 'nothing moved while the device was busy');

  holder.abort();
  await held;
  const [r, u] = await Promise.all([relaxed, urgent]);
  t.equal(u.status, 200);
  t.equal(r.status, 200);
  const swapIns = c.worker.calls.filter((x) => x.kind === 'swap-in').map((x) => x.instanceId);
  t.same(swapIns, ['urgent@w1#0', 'relaxed@w1#0'], 'the request with less slack (a 2 s SLO against 60 s) was swapped in first');
  t.equal(u.headers.get('x-paraserve-path'), 'swap;from=host;instance=urgent@w1#0;worker=w1;evicted=tiny@w1#0');
  t.equal(r.headers.get('x-paraserve-path'), 'swap;from=host;instance=relaxed@w1#0;worker=w1;evicted=urgent@w1#0');
  const trace = (await (await fetch(`${c.url}/admin/traces/${r.headers.get('x-paraserve-request-id')}`)).json()) as RequestTrace;
  t.match(trace.decisions[0], /; waiting for room$/, 'its trace says it waited for room');
  t.match(trace.timings, { queueMs: Number, swapMs: Number });
});

t.test('a model that fits nowhere, with nothing under way to make room: 503 saying so', async (t) => {
  const c = await startCluster(t, { freeBytes: 5 * MiB, instanceBytes: 10 * MiB });
  c.worker.addInstance('tiny@w1#0', MODEL, 'HOST_ONLY');
  await until(c.app, () => (c.app.cluster.view('w1')?.instances.length ?? 0) === 1);
  const res = await post(c.url, MODEL);
  t.equal(res.status, 503);
  t.match(await res.json(), { error: { type: 'server_error', code: 'no_worker_available', message: /^no room for 'tiny'.*nothing under way will make room$/ } });
  t.same(c.worker.calls, [], 'no swap was tried');
  t.equal(c.worker.loads.length, 0, 'and no load');
});

t.test('a worker whose swap-ins fail: the request tries a few times, then gets a 503 that says why', async (t) => {
  const c = await startCluster(t, { swapError: grpc.status.INTERNAL });
  c.worker.addInstance('tiny@w1#0', MODEL, 'HOST_ONLY');
  await until(c.app, () => (c.app.cluster.view('w1')?.instances.length ?? 0) === 1);
  const res = await post(c.url, MODEL);
  t.equal(res.status, 503);
  t.match(await res.json(), { error: { code: 'swap_failed', message: /^swapping tiny@w1#0 in on worker w1 failed: scripted swap failure$/ } });
  t.equal(c.worker.calls.filter((x) => x.kind === 'swap-in').length, 3, 'three tries');
  const trace = (await (await fetch(`${c.url}/admin/traces/${res.headers.get('x-paraserve-request-id')}`)).json()) as RequestTrace;
  t.match(trace, { status: 'error', path: null, decisions: [/^swap-in: /, /^failed: swapping/, /^swap-in: /, /^failed: /, /^swap-in: /, /^failed: /] });
  const metrics = await (await fetch(`${c.url}/metrics`)).text();
  t.match(metrics, /^paraserve_swap_seconds_count\{model="tiny",direction="in",outcome="error"\} 3$/m);
});

t.test('without swapping (a baseline), an evicted model is unloaded and the next request starts cold', async (t) => {
  const c = await oneRoomTwoModels(t, { swapping: false });
  const res = await post(c.url, MODEL);
  t.equal(res.status, 200);
  t.match(res.headers.get('x-paraserve-path'), /^cold;k=1;workers=w1;instance=tiny@w1#1/, 'its host copy is not used');
  t.same(c.worker.calls, [{ kind: 'unload', instanceId: 'other@w1#0' }], 'the idle model in the way went back to storage');
  t.equal(c.worker.loads.length, 1);
});

t.test('a freed batch slot goes to one of the requests waiting for it, not to both', async (t) => {
  const c = await startCluster(
    t,
    { script: () => ({ tokens: c.tokenizer.encode('Hello', false), end: 'stall' }) },
    { queueCapacity: 4, sharing: { maxBatch: 1, ttftSloMs: 10_000, gpuKeepAliveMs: 600_000, hostKeepAliveMs: 600_000 } },
  );
  const clients = [new AbortController(), new AbortController(), new AbortController()];
  t.teardown(() => clients.forEach((c) => c.abort()));
  const first = post(c.url, MODEL, clients[0]!.signal).catch((e: unknown) => e);
  await nextEvent(c.worker, 'generate');
  const waiting = [1, 2].map((i) => post(c.url, MODEL, clients[i]!.signal).catch((e: unknown) => e));
  await new Promise((resolve) => setTimeout(resolve, 300));
  t.equal(c.worker.generates.length, 1, 'both wait while the only slot is taken');

  const next = nextEvent(c.worker, 'generate');
  clients[0]!.abort();
  await first;
  await next;
  await new Promise((resolve) => setTimeout(resolve, 300));
  t.equal(c.worker.generates.length, 2, 'one of them runs; the other still waits');
  clients[1]!.abort();
  clients[2]!.abort();
  await Promise.all(waiting);
});
