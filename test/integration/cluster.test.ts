// The whole cluster as operators and users meet it: real processes on loopback (the model
// store, the gateway, two workers) started through the CLI, a model registered with
// `paraserve models register`, and the official `openai` client talking to the gateway.
// Also the failures that must never hang a client: a worker killed mid-stream, and a client
// that goes away (its generation must stop on the worker).
import path from 'node:path';
import OpenAI from 'openai';
import t from 'tap';
import { request } from 'undici';
import { runCli } from '../cli/run-cli.js';
import { eventually, processCluster } from './fixtures/processes.js';

const ADMIN_TOKEN = 'integration-admin';

interface WorkerRow {
  id: string;
  state: string;
  activeRequests: number;
  instances: { instanceId: string; model: string; residency: string; activeRequests: number }[];
}

const { dir, env, unexpectedExits, start, workers: workerRows } = await processCluster(t, 'integration', ADMIN_TOKEN);
const workers = (gatewayUrl: string): Promise<WorkerRow[]> => workerRows<WorkerRow>(gatewayUrl);

// --- the cluster ---------------------------------------------------------------------------
const models = path.join(dir, 'models');
for (const [name, preset] of [['tiny', 'tiny-llama3'], ['demo', 'demo']] as const) {
  const made = await runCli(['make-model', '--preset', preset, '--out', path.join(models, name), '--seed', '7', '--json']);
  if (made.code !== 0) throw new Error(`make-model ${preset}: ${made.stderr}`);
}
const store = start('store', ['store', 'serve', '--root', models, '--port', '0']);
const storeUrl = (await store.ready(30_000)).url!;
const gateway = start('gateway', ['gateway', '--port', '0', '--data-dir', path.join(dir, 'gateway')]);
const gatewayUrl = (await gateway.ready(30_000)).url!;
const workerChildren = [0, 1].map((i) => start(`worker-${i}`, ['worker', '--gateway', gatewayUrl, '--port', '0', '--id', `w${i}`]));
await Promise.all(workerChildren.map((w) => w.ready(30_000)));
await eventually('two READY workers', 20_000, async () => (await workers(gatewayUrl)).filter((w) => w.state === 'READY').length === 2);

const admin = ['--gateway', gatewayUrl];
for (const name of ['tiny', 'demo']) {
  const registered = await runCli(['models', 'register', name, `${storeUrl}/${name}`, '--json', ...admin], env);
  if (registered.code !== 0) throw new Error(`models register ${name}: ${registered.stderr}`);
}
const created = await runCli(['keys', 'create', 'integration', '--json', ...admin], env);
const apiKey = (JSON.parse(created.stdout) as { key: string }).key;
const client = new OpenAI({ baseURL: `${gatewayUrl}/v1`, apiKey, maxRetries: 0, timeout: 60_000 });

// --- the API -------------------------------------------------------------------------------
t.test('models are listed', async (t) => {
  const listed = await client.models.list();
  t.same(listed.data.map((m) => m.id).sort(), ['demo', 'tiny']);
  const cli = await runCli(['models', 'ls', '--json', ...admin], env);
  t.equal(cli.code, 0);
  t.same((JSON.parse(cli.stdout) as { name: string }[]).map((m) => m.name).sort(), ['demo', 'tiny']);
});

const messages = [{ role: 'user' as const, content: 'Say something about cold starts.' }];

t.test('chat completion, non-streaming and streaming agree', async (t) => {
  const whole = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 24, temperature: 0 });
  const choice = whole.choices[0]!;
  t.equal(choice.message.role, 'assistant');
  t.type(choice.message.content, 'string');
  t.ok(['stop', 'length'].includes(choice.finish_reason), `finish_reason ${choice.finish_reason}`);
  t.ok(whole.usage!.prompt_tokens > 0, 'prompt tokens counted');
  t.ok(whole.usage!.completion_tokens > 0 && whole.usage!.completion_tokens <= 24, 'at most max_tokens generated');
  t.equal(whole.usage!.total_tokens, whole.usage!.prompt_tokens + whole.usage!.completion_tokens);

  const stream = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let finish: string | null = null;
  let usage: OpenAI.CompletionUsage | null = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta.content ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
    usage = chunk.usage ?? usage;
  }
  t.equal(text, choice.message.content, 'streamed text equals the non-streaming text (greedy)');
  t.equal(finish, choice.finish_reason);
  t.same(usage, whole.usage, 'include_usage sends the same usage');
});

t.test('max_tokens, max_completion_tokens, seed and the completions endpoint', async (t) => {
  const short = await client.chat.completions.create({ model: 'tiny', messages, max_completion_tokens: 3, temperature: 1, seed: 5 });
  t.ok(short.usage!.completion_tokens <= 3);
  const again = await client.chat.completions.create({ model: 'tiny', messages, max_completion_tokens: 3, temperature: 1, seed: 5 });
  t.equal(again.choices[0]!.message.content, short.choices[0]!.message.content, 'same seed, same tokens');
  const completion = await client.completions.create({ model: 'tiny', prompt: 'Once upon a time', max_tokens: 5, temperature: 0 });
  t.type(completion.choices[0]!.text, 'string');
  t.ok(completion.usage!.completion_tokens <= 5);
});

t.test('stop sequences end the text before the stop', async (t) => {
  const whole = await client.completions.create({ model: 'tiny', prompt: 'Stop here:', max_tokens: 40, temperature: 0 });
  const text = whole.choices[0]!.text;
  const stop = text.slice(Math.floor(text.length / 2), Math.floor(text.length / 2) + 2);
  t.ok(stop.length === 2, `the greedy text (${JSON.stringify(text)}) is long enough to pick a stop from`);
  const stopped = await client.completions.create({ model: 'tiny', prompt: 'Stop here:', max_tokens: 40, temperature: 0, stop: [stop] });
  t.equal(stopped.choices[0]!.text, text.slice(0, text.indexOf(stop)), 'text up to the first occurrence of the stop sequence');
  t.equal(stopped.choices[0]!.finish_reason, 'stop');
});

t.test('errors are OpenAI error objects', async (t) => {
  const statusOf = (call: Promise<unknown>): Promise<unknown> => call.then(() => 'no error', (e: unknown) => (e instanceof OpenAI.APIError ? e.status : e));
  t.equal(await statusOf(client.chat.completions.create({ model: 'no-such-model', messages })), 404, 'unknown model: 404');
  const wrongKey = new OpenAI({ baseURL: `${gatewayUrl}/v1`, apiKey: 'sk-wrong', maxRetries: 0 });
  t.equal(await statusOf(wrongKey.models.list()), 401, 'wrong key: 401');
  t.equal(await statusOf(client.chat.completions.create({ model: 'tiny', messages, temperature: 7 })), 400, 'temperature out of range: 400');
  const malformed = await request(`${gatewayUrl}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
    body: '{"model": "tiny", "messages": [',
  });
  t.equal(malformed.statusCode, 400, 'malformed JSON: 400');
  const body = (await malformed.body.json()) as { error: { message: string; type: string } };
  t.type(body.error.message, 'string');
  t.equal(body.error.type, 'invalid_request_error');
});

/** The worker holding the model's instance on its device (the one the gateway routes to). */
async function holderOf(model: string): Promise<WorkerRow> {
  return eventually(`an instance of ${model} on a device`, 10_000, async () =>
    (await workers(gatewayUrl)).find((w) => w.state === 'READY' && w.instances.some((i) => i.model === model && i.residency === 'ON_DEVICE')) ?? null,
  );
}

t.test('a client that disconnects stops generation on the worker', async (t) => {
  const maxTokens = 4000;
  const controller = new AbortController();
  const stream = await client.chat.completions.create({ model: 'demo', messages, max_tokens: maxTokens, temperature: 0, stream: true }, { signal: controller.signal });
  // The pace of this machine: how long the rest of the generation would take if it went on.
  const seen: number[] = [];
  try {
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta.content) seen.push(performance.now());
      if (seen.length === 30) controller.abort();
    }
  } catch {
    // openai reports the abort as an error or as the end of the stream; both are fine here.
  }
  const abortedAt = performance.now();
  const msPerToken = (seen[seen.length - 1]! - seen[0]!) / (seen.length - 1);
  const restMs = (maxTokens - seen.length) * msPerToken;
  await eventually('the worker to drop the request', 10_000, async () => (await workers(gatewayUrl)).every((w) => w.activeRequests === 0));
  const droppedMs = performance.now() - abortedAt;
  t.ok(droppedMs < restMs / 2, `the worker dropped the request ${droppedMs.toFixed(0)} ms after the abort; finishing would have taken about ${restMs.toFixed(0)} ms more`);
});

t.test('a worker killed mid-stream gives the client an error within seconds', async (t) => {
  const stream = await client.chat.completions.create({ model: 'demo', messages, max_tokens: 4000, temperature: 0, stream: true });
  const iterator = stream[Symbol.asyncIterator]();
  let contentChunks = 0;
  while (contentChunks < 5) {
    const next = await iterator.next();
    if (next.done) throw new Error('the stream ended before the kill');
    if (next.value.choices[0]?.delta.content) contentChunks++;
  }
  const holder = await holderOf('demo');
  const victim = workerChildren.find((c) => c.name === `worker-${holder.id.slice(1)}`)!;
  const killedAt = Date.now();
  process.kill(victim.pid!, 'SIGKILL');
  await t.rejects(
    (async () => {
      for (;;) if ((await iterator.next()).done) throw new Error('the stream ended as if nothing happened');
    })(),
    /./,
    'the stream fails',
  );
  t.ok(Date.now() - killedAt < 10_000, `the client knew within ${Date.now() - killedAt} ms`);
  await victim.exited;
  t.same(unexpectedExits, [victim.name], 'only the killed worker exited');

  const after = await client.chat.completions.create({ model: 'demo', messages, max_tokens: 4, temperature: 0 });
  t.ok(after.choices[0]!.message.content !== null, 'the surviving worker serves the model afterwards');
  t.not((await holderOf('demo')).id, holder.id, 'the model now lives on the other worker');
});
