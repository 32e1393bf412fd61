// The whole gateway path with the official openai client: HTTP → validation → scheduler →
// LoadStage + Generate on a fake worker over real gRPC → detokenization → JSON or SSE.
import OpenAI from 'openai';
import t from 'tap';
import { nextEvent } from './fixtures/fake-worker.js';
import { MODEL, startCluster } from './fixtures/helpers.js';

function client(url: string): OpenAI {
  return new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
}

t.test('chat and completions through one fake worker', async (t) => {
  const c = await startCluster(t, {
    script: (req) => {
      const tokens = c.tokenizer.encode('Hello world, héllo 😀!', false);
      return req.maxTokens < tokens.length ? { tokens: tokens.slice(0, req.maxTokens), end: 'length' } : { tokens, end: 'stop' };
    },
  });
  const openai = client(c.url);
  const full = 'Hello world, héllo 😀!';
  const fullTokens = c.tokenizer.encode(full, false).length;

  await t.test('non-streaming chat', async (t) => {
    const res = await openai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], seed: 42, temperature: 0.5, top_p: 0.9 });
    t.match(res.id, /^chatcmpl-/);
    t.equal(res.object, 'chat.completion');
    t.equal(res.model, MODEL);
    t.equal(res.system_fingerprint, null);
    t.equal(res.choices[0]?.message.content, full);
    t.equal(res.choices[0]?.message.role, 'assistant');
    t.equal(res.choices[0]?.finish_reason, 'stop');
    const prompt = c.tokenizer.encode(c.tokenizer.applyChatTemplate([{ role: 'user', content: 'hi' }], true), false);
    t.same(res.usage, { prompt_tokens: prompt.length, completion_tokens: fullTokens, total_tokens: prompt.length + fullTokens });

    t.equal(c.worker.loads.length, 1, 'one cold load');
    t.match(c.worker.loads[0], {
      instanceId: `${MODEL}@w1#0`,
      model: MODEL,
      stage: { layerStart: 0, layerEnd: 2, hasEmbeddings: true, hasHead: true, stageIndex: 0, stageCount: 1 },
      maxContext: 4096,
      device: 0,
      configJson: /"num_hidden_layers"/,
    });
    t.ok(c.worker.loads[0]?.source?.files.every((f) => /^[0-9a-f]{64}$/.test(f.sha256)), 'files carry digests');
    const gen = c.worker.generates.at(-1);
    t.same(gen?.promptTokenIds, prompt);
    t.equal(gen?.maxTokens, 256, 'default budget');
    t.same(gen?.stopTokenIds.slice().sort(), [...new Set([...c.tokenizer.eosTokenIds, 508, 511])].sort());
    t.match(gen?.sampling, { topP: Math.fround(0.9), seed: 42 });
    t.ok(Math.abs((gen?.sampling?.temperature ?? 0) - 0.5) < 1e-6);
    t.equal(gen?.requestId, res.id);
  });

  await t.test('a second request runs warm: no new load', async (t) => {
    await openai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'again' }] });
    t.equal(c.worker.loads.length, 1);
    t.equal(c.worker.generates.at(-1)?.sampling?.seed, undefined, 'no seed sent when none given');
  });

  await t.test('max_completion_tokens wins over max_tokens; finish_reason length', async (t) => {
    const res = await openai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: 50, max_completion_tokens: 3 });
    t.equal(c.worker.generates.at(-1)?.maxTokens, 3);
    t.equal(res.choices[0]?.finish_reason, 'length');
    t.equal(res.usage?.completion_tokens, 3);
    t.equal(res.choices[0]?.message.content, c.tokenizer.decode(c.tokenizer.encode(full, false).slice(0, 3), true));
  });

  await t.test('streaming chat with include_usage', async (t) => {
    const stream = await openai.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: [{ type: 'text', text: 'hi' }] }],
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    t.equal(chunks[0]?.choices[0]?.delta.role, 'assistant', 'role first');
    t.ok(chunks.every((ch) => ch.id === chunks[0]?.id && ch.object === 'chat.completion.chunk'));
    const text = chunks.map((ch) => ch.choices[0]?.delta.content ?? '').join('');
    t.equal(text, full);
    t.notOk(chunks.some((ch) => (ch.choices[0]?.delta.content ?? '').includes('\uFFFD')), 'no split characters');
    const finish = chunks.find((ch) => ch.choices[0]?.finish_reason);
    t.equal(finish?.choices[0]?.finish_reason, 'stop');
    const last = chunks.at(-1);
    t.same(last?.choices, []);
    t.match(last?.usage, { completion_tokens: fullTokens, prompt_tokens: Number, total_tokens: Number });
    t.ok(chunks.slice(0, -1).every((ch) => ch.usage === null), 'usage null on the other chunks');
  });

  await t.test('stop sequences across tokens, in both endpoints and modes', async (t) => {
    const res = await openai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }], stop: ['o w', 'zzz'] });
    t.equal(res.choices[0]?.message.content, 'Hell');
    t.equal(res.choices[0]?.finish_reason, 'stop');
    t.ok((res.usage?.completion_tokens ?? 99) < fullTokens);

    const stream = await openai.completions.create({ model: MODEL, prompt: 'Say', stop: '😀', stream: true });
    let text = '';
    let reason = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? '';
      reason = chunk.choices[0]?.finish_reason ?? reason;
    }
    t.equal(text, 'Hello world, héllo ');
    t.equal(reason, 'stop');
  });

  await t.test('non-streaming completion', async (t) => {
    const res = await openai.completions.create({ model: MODEL, prompt: ['Once upon'], max_tokens: 4 });
    t.match(res.id, /^cmpl-/);
    t.equal(res.object, 'text_completion');
    t.equal(res.choices[0]?.finish_reason, 'length');
    t.same(c.worker.generates.at(-1)?.promptTokenIds, c.tokenizer.encode('Once upon', true));
    t.equal(res.usage?.prompt_tokens, c.tokenizer.encode('Once upon', true).length);
  });

  await t.test('errors come back as OpenAI errors the client understands', async (t) => {
    const err = await openai.chat.completions.create({ model: 'missing', messages: [{ role: 'user', content: 'x' }] }).catch((e: unknown) => e);
    t.ok(err instanceof OpenAI.NotFoundError);
    t.match(err, { status: 404, code: 'model_not_found', param: 'model' });
    const bad = await openai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }], temperature: 7 }).catch((e: unknown) => e);
    t.ok(bad instanceof OpenAI.BadRequestError);
    t.match(bad, { status: 400, param: 'temperature' });
  });

  await t.test('health, workers and metrics reflect the traffic', async (t) => {
    t.same(await (await fetch(`${c.url}/health`)).json(), { status: 'ok', workers: 1 });
    const workers = (await c.app.inject({ method: 'GET', url: '/admin/workers' })).json();
    t.match(workers, {
      data: [{ id: 'w1', address: c.worker.address, backend: 'cpu', state: 'READY', activeRequests: 0, lastSeenMs: Number, devices: [{ index: 0 }], instances: [{ instanceId: `${MODEL}@w1#0`, residency: 'ON_DEVICE' }] }],
    });
    const metrics = await (await fetch(`${c.url}/metrics`)).text();
    t.match(metrics, /paraserve_model_loads_total\{model="tiny",outcome="ok"\} 1/);
    t.match(metrics, /paraserve_workers\{state="READY"\} 1/);
    t.match(metrics, /paraserve_generated_tokens_total\{model="tiny"\} \d+/);
    t.match(metrics, /paraserve_time_to_first_token_seconds_count\{model="tiny"\} [1-9]/);
    t.match(metrics, /paraserve_http_requests_total\{method="POST",route="\/v1\/chat\/completions",status="200"\} [1-9]/);
    t.match(metrics, /paraserve_http_requests_total\{method="POST",route="\/v1\/chat\/completions",status="404"\} 1/);
    t.match(metrics, /paraserve_http_request_duration_seconds_bucket/);
  });
});

t.test('concurrent requests for a cold model share one load', async (t) => {
  let release: () => void = () => undefined;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const c = await startCluster(t, { loadGate: () => gate });
  const openai = client(c.url);
  const loadStarted = nextEvent(c.worker, 'load');
  const requests = [1, 2, 3].map((i) => openai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: `q${i}` }] }));
  await loadStarted;
  release();
  const results = await Promise.all(requests);
  t.same(results.map((r) => r.choices[0]?.message.content), ['Hello world', 'Hello world', 'Hello world']);
  t.equal(c.worker.loads.length, 1);
  t.equal(c.worker.generates.length, 3);
});

t.test('raw SSE framing', async (t) => {
  const c = await startCluster(t);
  const res = await fetch(`${c.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, prompt: 'x', stream: true, stream_options: { include_usage: true } }),
  });
  t.equal(res.status, 200);
  t.match(res.headers.get('content-type'), /^text\/event-stream/);
  const body = await res.text();
  t.ok(body.endsWith('data: [DONE]\n\n'), 'ends with [DONE]');
  const events = body.split('\n\n').filter((e) => e !== '');
  t.ok(events.every((e) => e.startsWith('data: ') && !e.includes('\n')), 'one data line per event');
  const payloads = events.slice(0, -1).map((e) => JSON.parse(e.slice('data: '.length)));
  t.match(payloads.at(-1), { object: 'text_completion', choices: [], usage: { prompt_tokens: c.tokenizer.encode('x', true).length, completion_tokens: c.tokenizer.encode('Hello world', false).length } });
  t.match(payloads.at(-2), { choices: [{ text: '', finish_reason: 'stop', index: 0, logprobs: null }], usage: null });
  t.equal(payloads.map((p) => p.choices[0]?.text ?? '').join(''), 'Hello world');
});
