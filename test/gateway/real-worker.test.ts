// The gateway against a real worker daemon (startWorker, CPU backend) in the same process: the
// worker registers itself over HTTP, the gateway loads the tiny model on it and streams real
// sampled tokens to the openai client. Skipped where the native addon is not built.
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import t from 'tap';
import { MODEL, registerTiny, testApp } from './fixtures/helpers.js';
import { addonError, realWorker } from './fixtures/real-workers.js';

t.test('gateway + real CPU worker', { skip: addonError ?? false }, async (t) => {
  const app = await testApp(t, { requestTimeoutMs: 60_000 });
  await registerTiny(app);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  // Registration is the worker's job: wait for the gateway to see it READY.
  const worker = await realWorker(app, url, 'real-1', { maxContext: 4096 });
  t.teardown(() => worker.close());

  const openai = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const res = await openai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hello' }], max_tokens: 8, temperature: 0, seed: 1 });
  t.match(res.choices[0]?.finish_reason, /^(length|stop)$/);
  t.ok((res.usage?.completion_tokens ?? 0) >= 1 && (res.usage?.completion_tokens ?? 99) <= 8);

  const again = await openai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hello' }], max_tokens: 8, temperature: 0, seed: 1 });
  t.equal(again.choices[0]?.message.content, res.choices[0]?.message.content, 'greedy decoding is deterministic');

  const stream = await openai.completions.create({ model: MODEL, prompt: 'Once', max_tokens: 6, stream: true, stream_options: { include_usage: true } });
  let usage = null;
  for await (const chunk of stream) usage = chunk.usage ?? usage;
  t.match(usage, { completion_tokens: Number, prompt_tokens: Number });

  const workers = (await (await fetch(`${url}/admin/workers`)).json()) as { data: { id: string; instances: { residency: string }[] }[] };
  t.match(workers.data, [{ id: 'real-1', instances: [{ residency: 'ON_DEVICE' }] }]);
  t.equal(workers.data[0]?.instances.length, 1, 'later requests ran on the instance the first one loaded');
});
