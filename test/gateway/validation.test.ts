// Bad input never gets past the gateway's edge: each case is a 400 (or the fitting 4xx) with an
// OpenAI error object naming the parameter; nothing reaches a worker, nothing is a 500.
import t, { type Test } from 'tap';
import type { FastifyInstance, InjectOptions } from 'fastify';
import { MODEL, registerTiny, testApp } from './fixtures/helpers.js';

const CONTEXT = 64;
const chat = { model: MODEL, messages: [{ role: 'user', content: 'hi' }] };
const completion = { model: MODEL, prompt: 'hi' };

interface Case {
  name: string;
  url?: string;
  body: unknown;
  status?: number;
  param: string | null;
  code?: string;
  message?: RegExp;
}

const cases: Case[] = [
  { name: 'body is not an object', body: [1], param: null, code: 'invalid_type', message: /must be a JSON object/ },
  { name: 'missing model', body: { messages: chat.messages }, param: 'model', code: 'missing_required_parameter' },
  { name: 'empty model', body: { ...chat, model: '' }, param: 'model' },
  { name: 'missing messages', body: { model: MODEL }, param: 'messages', code: 'missing_required_parameter' },
  { name: 'messages empty', body: { ...chat, messages: [] }, param: 'messages', message: /at least 1/ },
  { name: 'messages wrong type', body: { ...chat, messages: 'hi' }, param: 'messages', code: 'invalid_type' },
  { name: 'unknown role', body: { ...chat, messages: [{ role: 'robot', content: 'x' }] }, param: 'messages[0].role', message: /one of system, developer, user, assistant/ },
  { name: 'missing content', body: { ...chat, messages: [{ role: 'user' }] }, param: 'messages[0].content' },
  { name: 'content wrong type', body: { ...chat, messages: [{ role: 'user', content: 5 }] }, param: 'messages[0].content', code: 'invalid_type' },
  { name: 'non-text content part', body: { ...chat, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, param: 'messages[0].content[0].type' },
  { name: 'temperature above 2', body: { ...chat, temperature: 2.5 }, param: 'temperature', message: /<= 2/ },
  { name: 'temperature below 0', body: { ...chat, temperature: -0.1 }, param: 'temperature' },
  { name: 'temperature as string', body: { ...chat, temperature: '1' }, param: 'temperature', code: 'invalid_type', message: /number or null/ },
  { name: 'top_p zero', body: { ...chat, top_p: 0 }, param: 'top_p' },
  { name: 'top_p above 1', body: { ...chat, top_p: 1.5 }, param: 'top_p' },
  { name: 'max_tokens zero', body: { ...chat, max_tokens: 0 }, param: 'max_tokens' },
  { name: 'max_tokens fractional', body: { ...chat, max_tokens: 1.5 }, param: 'max_tokens' },
  { name: 'max_tokens as string', body: { ...chat, max_tokens: '10' }, param: 'max_tokens', code: 'invalid_type' },
  { name: 'max_completion_tokens negative', body: { ...chat, max_completion_tokens: -1 }, param: 'max_completion_tokens' },
  { name: 'n > 1', body: { ...chat, n: 2 }, param: 'n', code: 'unsupported_value', message: /one choice per request/ },
  { name: 'n = 0', body: { ...chat, n: 0 }, param: 'n' },
  { name: 'stop wrong type', body: { ...chat, stop: 5 }, param: 'stop', code: 'invalid_type', message: /string or array or null/ },
  { name: 'more than 4 stop sequences', body: { ...chat, stop: ['a', 'b', 'c', 'd', 'e'] }, param: 'stop', message: /at most 4/ },
  { name: 'empty stop sequence', body: { ...chat, stop: [''] }, param: 'stop[0]', message: /must not be empty/ },
  { name: 'overlong stop sequence', body: { ...chat, stop: 'x'.repeat(300) }, param: 'stop', message: /at most 256 characters/ },
  { name: 'non-string stop sequence', body: { ...chat, stop: ['a', 1] }, param: 'stop[1]' },
  { name: 'negative seed', body: { ...chat, seed: -1 }, param: 'seed' },
  { name: 'fractional seed', body: { ...chat, seed: 1.5 }, param: 'seed' },
  { name: 'stream not boolean', body: { ...chat, stream: 'yes' }, param: 'stream' },
  { name: 'include_usage not boolean', body: { ...chat, stream: true, stream_options: { include_usage: 'yes' } }, param: 'stream_options.include_usage' },
  { name: 'logprobs requested', body: { ...chat, logprobs: true }, param: 'logprobs', code: 'unsupported_parameter' },
  { name: 'tools given', body: { ...chat, tools: [{ type: 'function' }] }, param: 'tools' },
  { name: 'presence_penalty non-zero', body: { ...chat, presence_penalty: 1 }, param: 'presence_penalty' },
  { name: 'user not a string', body: { ...chat, user: 5 }, param: 'user' },
  { name: 'unknown model', body: { ...chat, model: 'nope' }, status: 404, param: 'model', code: 'model_not_found' },
  {
    name: 'messages longer than the context',
    body: { ...chat, messages: [{ role: 'user', content: 'word '.repeat(200) }] },
    param: 'messages',
    code: 'context_length_exceeded',
    message: new RegExp(`maximum context length is ${CONTEXT} tokens\\. However, you requested \\d+ tokens \\(\\d+ in the messages, 1 in the completion\\)`),
  },
  {
    name: 'max_tokens past the context',
    body: { ...chat, max_tokens: 1000 },
    param: 'messages',
    code: 'context_length_exceeded',
    message: /\d+ in the messages, 1000 in the completion/,
  },
  { name: 'completions: missing prompt', url: '/v1/completions', body: { model: MODEL }, param: 'prompt' },
  { name: 'completions: prompt wrong type', url: '/v1/completions', body: { ...completion, prompt: 5 }, param: 'prompt', code: 'invalid_type' },
  { name: 'completions: several prompts', url: '/v1/completions', body: { ...completion, prompt: ['a', 'b'] }, param: 'prompt', code: 'unsupported_value' },
  { name: 'completions: empty prompt list', url: '/v1/completions', body: { ...completion, prompt: [] }, param: 'prompt' },
  { name: 'completions: logprobs', url: '/v1/completions', body: { ...completion, logprobs: 2 }, param: 'logprobs' },
  { name: 'completions: echo', url: '/v1/completions', body: { ...completion, echo: true }, param: 'echo' },
  { name: 'completions: best_of', url: '/v1/completions', body: { ...completion, best_of: 3 }, param: 'best_of' },
  { name: 'completions: n > 1', url: '/v1/completions', body: { ...completion, n: 3 }, param: 'n' },
  { name: 'completions: temperature out of range', url: '/v1/completions', body: { ...completion, temperature: 3 }, param: 'temperature' },
  {
    name: 'completions: prompt longer than the context',
    url: '/v1/completions',
    body: { ...completion, prompt: 'x y '.repeat(100) },
    param: 'prompt',
    code: 'context_length_exceeded',
    message: /in the prompt/,
  },
];

function assertErrorShape(t: Test, body: unknown): void {
  t.match(body, { error: { message: String, type: String } }, 'OpenAI error shape');
  const err = (body as { error: Record<string, unknown> }).error;
  t.ok('param' in err && 'code' in err, 'param and code present');
}

t.test('bad input', async (t) => {
  const app = await testApp(t, { maxContextTokens: CONTEXT });
  await registerTiny(app);

  for (const c of cases) {
    await t.test(c.name, async (t) => {
      const res = await app.inject({ method: 'POST', url: c.url ?? '/v1/chat/completions', payload: c.body as InjectOptions['payload'] });
      t.equal(res.statusCode, c.status ?? 400, res.body);
      const body = res.json();
      assertErrorShape(t, body);
      t.equal(body.error.param, c.param);
      if (c.code) t.equal(body.error.code, c.code);
      if (c.message) t.match(body.error.message, c.message);
      t.equal(body.error.type, 'invalid_request_error');
    });
  }

  await t.test('malformed JSON', async (t) => {
    const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'content-type': 'application/json' }, payload: '{"model": "tiny", ' });
    t.equal(res.statusCode, 400);
    t.match(res.json(), { error: { code: 'invalid_json', param: null, type: 'invalid_request_error', message: /could not parse the JSON body/ } });
  });

  await t.test('a body over the size limit: 413 in OpenAI shape', async (t) => {
    const res = await app.inject({ method: 'POST', url: '/v1/completions', payload: { ...completion, prompt: 'x'.repeat(2 * 1024 * 1024) } });
    t.equal(res.statusCode, 413);
    t.match(res.json(), { error: { code: 'payload_too_large', type: 'invalid_request_error' } });
  });

  await t.test('empty JSON body', async (t) => {
    const res = await app.inject({ method: 'POST', url: '/v1/completions', headers: { 'content-type': 'application/json' }, payload: '' });
    t.equal(res.statusCode, 400);
    t.match(res.json(), { error: { code: 'invalid_json' } });
  });

  await t.test('not JSON at all, whatever the content type', async (t) => {
    for (const type of ['text/plain', 'application/x-www-form-urlencoded']) {
      const res = await app.inject({ method: 'POST', url: '/v1/completions', headers: { 'content-type': type }, payload: 'model=tiny' });
      t.equal(res.statusCode, 400, type);
      t.match(res.json(), { error: { code: 'invalid_json' } });
    }
  });

  await t.test('JSON sent without a JSON content type is accepted (curl -d)', async (t) => {
    const res = await app.inject({
      method: 'POST',
      url: '/v1/completions',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      payload: JSON.stringify({ ...completion, temperature: 9 }),
    });
    t.equal(res.statusCode, 400);
    t.match(res.json(), { error: { param: 'temperature' } });
  });

  await t.test('wrong method on a known route: 405 with Allow', async (t) => {
    const res = await app.inject({ method: 'GET', url: '/v1/chat/completions' });
    t.equal(res.statusCode, 405);
    t.equal(res.headers.allow, 'POST');
    t.match(res.json(), { error: { code: 'method_not_allowed' } });
  });

  await t.test('unknown route: 404 in OpenAI shape', async (t) => {
    const res = await app.inject({ method: 'POST', url: '/v1/embeddings', payload: {} });
    t.equal(res.statusCode, 404);
    t.match(res.json(), { error: { code: 'unknown_url', message: /POST \/v1\/embeddings/ } });
  });

  await t.test('a valid request with no worker: 503, not a hang', async (t) => {
    const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { ...chat, max_tokens: 4 } });
    t.equal(res.statusCode, 503);
    t.match(res.json(), { error: { type: 'server_error', code: 'no_worker_available', message: /no worker is registered/ } });
  });

  await t.test('streaming request with no worker: a plain HTTP 503 too', async (t) => {
    const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { ...chat, stream: true } });
    t.equal(res.statusCode, 503);
    t.match(res.headers['content-type'], /application\/json/);
  });
});

t.test('model listing', async (t) => {
  const app: FastifyInstance = await testApp(t);
  await registerTiny(app);
  const list = await app.inject({ method: 'GET', url: '/v1/models' });
  t.equal(list.statusCode, 200);
  t.match(list.json(), { object: 'list', data: [{ id: MODEL, object: 'model', owned_by: 'paraserve', created: Number }] });
  const one = await app.inject({ method: 'GET', url: `/v1/models/${MODEL}` });
  t.match(one.json(), { id: MODEL, object: 'model' });
  const missing = await app.inject({ method: 'GET', url: '/v1/models/org/nope' });
  t.equal(missing.statusCode, 404);
  t.match(missing.json(), { error: { code: 'model_not_found', param: 'model', message: /'org\/nope'/ } });
});
