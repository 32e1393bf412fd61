// When workers fail or clients leave: errors reach the client promptly (never a hang), and a
// client that goes away cancels the worker's Generate call.
import http from 'node:http';
import OpenAI from 'openai';
import t from 'tap';
import { nextEvent } from './fixtures/fake-worker.js';
import { captureLogs, MODEL, startCluster } from './fixtures/helpers.js';

const chat = { model: MODEL, messages: [{ role: 'user' as const, content: 'hi' }] };

function client(url: string): OpenAI {
  return new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 10_000 });
}

t.test('a worker error after some tokens', async (t) => {
  const c = await startCluster(t, { script: () => ({ tokens: c.tokenizer.encode('Hello world', false), end: 'error' }) });
  const openai = client(c.url);

  await t.test('non-streaming: 502 naming the worker', async (t) => {
    const err = await openai.chat.completions.create(chat).catch((e: unknown) => e);
    t.ok(err instanceof OpenAI.APIError);
    t.match(err, { status: 502, code: 'worker_failed', message: /worker w1 failed mid-request after \d+ token\(s\): scripted failure/ });
  });

  await t.test('streaming: the text so far, then an error event the client raises', async (t) => {
    const stream = await openai.chat.completions.create({ ...chat, stream: true });
    let text = '';
    const err = await (async () => {
      for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    })().catch((e: unknown) => e);
    t.ok(err instanceof OpenAI.APIError, 'the stream raised');
    t.match(err, { message: /failed mid-request/ });
    t.ok('Hello world'.startsWith(text));
  });
});

t.test('a worker that dies mid-stream: error within seconds, worker marked DOWN', async (t) => {
  const { logger, lines } = captureLogs();
  const c = await startCluster(t, { script: () => ({ tokens: c.tokenizer.encode('Hello', false), end: 'stall' }) }, { logger });
  const openai = client(c.url);
  const stream = await openai.chat.completions.create({ ...chat, stream: true });
  const started = Date.now();
  const err = await (async () => {
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta.content) c.worker.crash();
    }
  })().catch((e: unknown) => e);
  t.ok(err instanceof OpenAI.APIError, 'the client got an error');
  t.match(err, { message: /worker w1/ });
  t.ok(Date.now() - started < 5_000, 'promptly');

  const workers = (await c.app.inject({ method: 'GET', url: '/admin/workers' })).json();
  t.match(workers, { data: [{ id: 'w1', state: 'DOWN' }] });
  t.match(lines.find((l) => l.msg === 'worker down'), { worker: 'w1', address: c.worker.address, component: 'cluster', level: 40 }, 'logged as a warning');
  t.match(lines.find((l) => l.msg === 'stream failed after it started'), { code: 'worker_failed', completion: /^chatcmpl-/ });
  t.same((await c.app.inject({ method: 'GET', url: '/health' })).json(), { status: 'ok', workers: 0 });
  const next = await openai.chat.completions.create(chat).catch((e: unknown) => e);
  t.match(next, { status: 503, message: /no worker is READY \(w1: DOWN\)/ });
});

t.test('client disconnects cancel the worker call', async (t) => {
  const c = await startCluster(t, { script: () => ({ tokens: c.tokenizer.encode('Hi', false), end: 'stall' }) });

  await t.test('streaming: aborting the openai stream', async (t) => {
    const openai = client(c.url);
    const controller = new AbortController();
    const stream = await openai.chat.completions.create({ ...chat, stream: true }, { signal: controller.signal });
    const cancelled = nextEvent<string>(c.worker, 'cancelled');
    await (async () => {
      for await (const chunk of stream) {
        if (chunk.choices[0]?.delta.content) controller.abort();
      }
    })().catch(() => undefined);
    const requestId = await cancelled;
    t.match(requestId, /^chatcmpl-/);
  });

  await t.test('non-streaming: closing the socket while the worker generates', async (t) => {
    const generating = nextEvent(c.worker, 'generate');
    const cancelled = nextEvent<string>(c.worker, 'cancelled');
    const req = http.request(`${c.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' } });
    req.on('error', () => undefined);
    req.end(JSON.stringify({ model: MODEL, prompt: 'x' }));
    await generating;
    req.destroy();
    t.match(await cancelled, /^cmpl-/);
  });

  await t.test('a stop sequence also cancels the generation', async (t) => {
    const openai = client(c.url);
    const cancelled = nextEvent<string>(c.worker, 'cancelled');
    const res = await openai.chat.completions.create({ ...chat, stop: [c.tokenizer.decode(c.tokenizer.encode('Hi', false).slice(-1), true)] });
    t.equal(res.choices[0]?.finish_reason, 'stop');
    t.equal(await cancelled, res.id);
  });
});

t.test('a generation past the request timeout is a 504', async (t) => {
  const c = await startCluster(t, { script: () => ({ tokens: [], end: 'stall' }) }, { requestTimeoutMs: 300 });
  const err = await client(c.url).chat.completions.create(chat).catch((e: unknown) => e);
  t.match(err, { status: 504, message: /did not finish within 300 ms/ });
});

t.test('a draining worker gets no new work', async (t) => {
  const c = await startCluster(t);
  const changed = new Promise<void>((resolve) => {
    const off = c.app.cluster.onChange(() => {
      if (c.app.cluster.view('w1')?.state === 'DRAINING') {
        off();
        resolve();
      }
    });
  });
  c.worker.setState('DRAINING');
  await changed;
  const err = await client(c.url).chat.completions.create(chat).catch((e: unknown) => e);
  t.match(err, { status: 503, message: /w1: DRAINING/ });
  t.equal(c.worker.generates.length, 0);
});

t.test('re-registration of a live worker keeps its event stream', async (t) => {
  const c = await startCluster(t);
  t.equal(c.worker.watcherCount, 1);
  const res = await c.app.inject({ method: 'POST', url: '/admin/workers', payload: { id: 'w1', address: c.worker.address, backend: 'cpu' } });
  t.equal(res.statusCode, 200);
  t.equal(c.worker.watcherCount, 1);
  t.match(res.json(), { worker: { id: 'w1', state: 'READY' } });
});

t.test('registration of an unreachable or mismatched worker fails clearly', async (t) => {
  const c = await startCluster(t, {}, { cluster: { healthTimeoutMs: 1_000, firstSnapshotTimeoutMs: 1_000, downGraceMs: 1_000 } });
  const unreachable = await c.app.inject({ method: 'POST', url: '/admin/workers', payload: { id: 'w9', address: '127.0.0.1:1', backend: 'cpu' } });
  t.equal(unreachable.statusCode, 502);
  t.match(unreachable.json(), { error: { code: 'worker_unreachable', param: 'address', message: /cannot reach worker 'w9' at 127\.0\.0\.1:1/ } });
  const mismatch = await c.app.inject({ method: 'POST', url: '/admin/workers', payload: { id: 'other', address: c.worker.address, backend: 'cpu' } });
  t.equal(mismatch.statusCode, 400);
  t.match(mismatch.json(), { error: { code: 'worker_identity_mismatch', message: /reports id 'w1', not 'other'/ } });
  const bad = await c.app.inject({ method: 'POST', url: '/admin/workers', payload: { id: 'a@b', address: 'nohost', backend: 'cpu' } });
  t.equal(bad.statusCode, 400);
  t.equal(c.app.cluster.views().length, 1);
});

t.test('closing the gateway ends in-flight streams after a short drain', async (t) => {
  const c = await startCluster(t, { script: () => ({ tokens: c.tokenizer.encode('Hi', false), end: 'stall' }) }, { closeDrainMs: 100 });
  const stream = await client(c.url).chat.completions.create({ ...chat, stream: true });
  let closed: Promise<void> | null = null;
  const err = await (async () => {
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta.content) closed = c.app.close();
    }
  })().catch((e: unknown) => e);
  t.ok(err instanceof OpenAI.APIError, 'the stream ended with an error event');
  t.match(err, { message: /shutting down/ });
  await closed;
  t.equal(c.worker.cancelled.length, 1, 'the worker call was cancelled');
});
