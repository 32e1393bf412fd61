// Request explanation through the gateway against a real in-process CPU worker: a model with a
// TTFT SLO goes through the cold-start policy; its first request reports a cold path (degree,
// worker, predicted TTFT, SLO) and the load's phases in headers and at GET /admin/traces/:id,
// a later streaming one a warm path, one refused before any worker registered an error trace;
// /metrics shows the per-phase histogram series (skipped where the native addon is not built).
// A model whose checkpoint headers cannot be read for the policy still cold-starts on one worker.
import { cp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import t from 'tap';
import { prepareRegistration } from '../../gateway/admin/model-registration.js';
import type { RequestTrace } from '../../gateway/scheduler/trace.js';
import { MODEL, startCluster, tempDir, testApp, tinyModelUri } from './fixtures/helpers.js';
import { addonError, realWorker } from './fixtures/real-workers.js';

/** Phase name → duration of a server-timing style header. */
function timings(header: string | null): Map<string, number> {
  const out = new Map<string, number>();
  for (const part of (header ?? '').split(',')) {
    const m = /^\s*([a-z_]+);dur=([0-9.]+)\s*$/.exec(part);
    if (m) out.set(m[1]!, Number(m[2]));
  }
  return out;
}

t.test('path and phases of cold and warm requests', { skip: addonError ?? false }, async (t) => {
  const app = await testApp(t, { requestTimeoutMs: 60_000 });
  const reg = await app.inject({ method: 'POST', url: '/admin/models', payload: { name: MODEL, source: await tinyModelUri(), files: null, ttftSloMs: 60_000 } });
  t.equal(reg.statusCode, 201, reg.body);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  const post = (body: Record<string, unknown>): Promise<Response> =>
    fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt: 'Once', max_tokens: 4, temperature: 0, ...body }) });

  const refused = await post({});
  t.equal(refused.status, 503);
  const refusedId = refused.headers.get('x-paraserve-request-id');
  t.match(refusedId, /^cmpl-/, 'an error response names its request too');
  t.match(await (await fetch(`${url}/admin/traces/${refusedId}`)).json(), {
    status: 'error',
    error: /no worker is registered/,
    path: null,
    decisions: [/^rejected: no worker is registered/],
  });

  const worker = await realWorker(app, url, 'tw-1');
  t.teardown(() => worker.close());

  const cold = await post({});
  t.equal(cold.status, 200);
  await cold.json();
  const coldId = cold.headers.get('x-paraserve-request-id');
  t.match(coldId, /^cmpl-/);
  t.match(cold.headers.get('x-paraserve-path'), /^cold;k=1;workers=tw-1;instance=tiny@tw-1#0;predicted_ms=\d+;slo_ms=60000$/);
  const coldTiming = timings(cold.headers.get('x-paraserve-timing'));
  for (const phase of ['queue', 'load', 'fetch', 'copy', 'init', 'first_token', 'prefill', 'decode']) t.ok(coldTiming.has(phase), `cold timing has ${phase}`);
  t.ok((coldTiming.get('load') ?? 0) >= (coldTiming.get('fetch') ?? Infinity), 'the wait on the load covers its fetch');

  const coldTrace = (await (await fetch(`${url}/admin/traces/${coldId}`)).json()) as RequestTrace;
  t.match(coldTrace, {
    requestId: coldId,
    model: MODEL,
    status: 'ok',
    path: { kind: 'cold', degree: 1, workers: ['tw-1'], joined: false, sloMs: 60_000, predictedTtftMs: Number, reason: /cold: degree 1 on tw-1/ },
    loads: [{ instanceId: 'tiny@tw-1#0', coldStart: { source: 'policy', prediction: { totalMs: Number } }, stages: [{ workerId: 'tw-1', readyMs: Number }] }],
  });
  t.same(new Set(coldTrace.loads[0]?.stages[0]?.spans.map((s) => s.phase)), new Set(['FETCH', 'INIT', 'COPY']));
  t.ok(coldTrace.decisions.length >= 2, 'the load decision and the run decision');

  const warm = await post({ stream: true });
  t.equal(warm.status, 200);
  const warmId = warm.headers.get('x-paraserve-request-id');
  t.equal(warm.headers.get('x-paraserve-path'), 'warm;k=1;instance=tiny@tw-1#0;worker=tw-1');
  const warmTiming = timings(warm.headers.get('x-paraserve-timing'));
  t.same([...warmTiming.keys()].sort(), ['first_token', 'queue'], 'a stream says what is known when its headers go out');
  const body = await warm.text();
  t.match(body, /data: \[DONE\]/);
  const warmTrace = (await (await fetch(`${url}/admin/traces/${warmId}`)).json()) as RequestTrace;
  t.match(warmTrace, { status: 'ok', path: { kind: 'warm', instanceId: 'tiny@tw-1#0' }, loads: [], timings: { loadMs: null, prefillMs: Number, decodeMs: Number } });

  const missing = await fetch(`${url}/admin/traces/cmpl-nope`);
  t.equal(missing.status, 404);
  t.match(await missing.json(), { error: { code: 'trace_not_found' } });

  const metrics = await (await fetch(`${url}/metrics`)).text();
  const count = (labels: string): string | null => new RegExp(`^paraserve_request_phase_seconds_count\\{${labels}\\} (\\d+)$`, 'm').exec(metrics)?.[1] ?? null;
  t.equal(count('path="cold",degree="1",phase="load"'), '1');
  t.equal(count('path="cold",degree="1",phase="fetch"'), '1');
  t.equal(count('path="warm",degree="1",phase="queue"'), '1');
  t.equal(count('path="warm",degree="1",phase="first_token"'), '1');
  t.equal(count('path="warm",degree="1",phase="load"'), null, 'a warm request has no load phase');
});

t.test('unreadable checkpoint headers: the whole-model path, said in the trace', async (t) => {
  const c = await startCluster(t);
  const dir = await tempDir(t);
  await cp(fileURLToPath(await tinyModelUri()), dir, { recursive: true });
  // Registered straight into the registry, as by a gateway before this one started: the
  // admin route would also plan its cold starts from the headers it read, so they would not
  // be read again at request time.
  const { model } = await prepareRegistration({
    name: 'copy', source: pathToFileURL(dir).href, files: null, ttftSloMs: 1_000, gpuKeepAliveMs: null, hostKeepAliveMs: null,
  });
  c.app.registry.addModel(model);
  await rm(path.join(dir, 'model.safetensors'));

  const res = await fetch(`${c.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'copy', prompt: 'Once', max_tokens: 4 }) });
  t.equal(res.status, 200, 'the load itself is the fake worker\'s');
  t.equal(res.headers.get('x-paraserve-path'), 'cold;k=1;workers=w1;instance=copy@w1#0', 'no prediction: the policy did not run');
  const trace = (await (await fetch(`${c.url}/admin/traces/${res.headers.get('x-paraserve-request-id')}`)).json()) as RequestTrace;
  t.match(trace, { status: 'ok', loads: [{ coldStart: { source: 'default', prediction: null } }] });
});
