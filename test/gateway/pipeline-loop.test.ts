// The scheduler loop performing a pipelined cold start (forcedPipelineDegree 2) against real
// in-process CPU workers: a stage that cannot load fails the request with a 503 and the stage
// that did load is unloaded (no half pipeline stays behind); with two healthy workers the
// request is served by a 2-stage pipeline, one stage per worker, and later requests reuse it
// (consolidation off here: consolidation-loop.test.ts covers it). On workers with device links
// (loopback links over the CPU addon), the gateway gets the link id from the sending stage's
// worker and passes it to both stages, and every step's activations cross over the link.
// Skipped where the native addon is not built.
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import type { FastifyInstance } from 'fastify';
import t, { type Test } from 'tap';
import { MODEL, registerTiny, testApp } from './fixtures/helpers.js';
import { loadNativeAddon } from '../../worker/native/addon.js';
import { LoopbackLinks } from '../worker/fixtures/loopback-links.js';
import { addonError, realWorker, until } from './fixtures/real-workers.js';

/** A listening gateway forced to 2-stage cold starts (no consolidation) with the tiny model, and an openai client of it. */
async function pipelineGateway(t: Test): Promise<{ app: FastifyInstance; url: string; openai: OpenAI }> {
  const app = await testApp(t, { requestTimeoutMs: 60_000, forcedPipelineDegree: 2, consolidate: false });
  await registerTiny(app);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  return { app, url, openai: new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 }) };
}

t.test('pipelined cold start through the scheduler loop', { skip: addonError ?? false }, async (t) => {
  const { app, url, openai } = await pipelineGateway(t);
  const ask = (): Promise<OpenAI.ChatCompletion> =>
    openai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hello' }], max_tokens: 8, temperature: 0 });
  const holders = (): string[] => app.cluster.views().filter((w) => w.instances.some((i) => i.model === MODEL)).map((w) => w.id);

  const healthy = await realWorker(app, url, 'a-ok');
  t.teardown(() => healthy.close());
  const cramped = await realWorker(app, url, 'z-cramped', { hostCacheBytes: 1024 });

  const failed = await ask().then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(failed instanceof OpenAI.APIError && failed.status === 503, `a stage that cannot load gives 503 (${String(failed)})`);
  await until(app, () => holders().length === 0);
  t.same(holders(), [], 'no stage of the failed pipeline stays behind');

  await cramped.close();
  await until(app, () => app.cluster.view('z-cramped')?.state !== 'READY');
  const second = await realWorker(app, url, 'b-ok');
  t.teardown(() => second.close());

  const { data: first, response } = await openai.chat.completions
    .create({ model: MODEL, messages: [{ role: 'user', content: 'hello' }], max_tokens: 8, temperature: 0 })
    .withResponse();
  t.ok((first.usage?.completion_tokens ?? 0) >= 1, 'served through the pipeline');
  t.match(response.headers.get('x-paraserve-path'), /^cold;k=2;workers=(a-ok,b-ok|b-ok,a-ok);instance=tiny@/, 'the path names both stages\' workers');
  t.match(response.headers.get('x-paraserve-path'), /;links=0\/1(;|$)/, 'CPU workers have no device links: the hop went over gRPC');
  t.match(response.headers.get('x-paraserve-timing'), /load;dur=.*fetch;dur=/);
  const stages = app.cluster
    .views()
    .flatMap((w) => w.instances.filter((i) => i.model === MODEL).map((i) => ({ worker: w.id, index: i.stage?.stageIndex, count: i.stage?.stageCount })))
    .sort((a, b) => (a.index ?? 0) - (b.index ?? 0));
  t.same(stages.map((s) => [s.index, s.count]), [[0, 2], [1, 2]], 'one stage per worker');
  t.same(new Set(stages.map((s) => s.worker)), new Set(['a-ok', 'b-ok']));

  const again = await ask();
  t.equal(again.choices[0]?.message.content, first.choices[0]?.message.content, 'greedy through the pipeline is deterministic');
  t.equal(app.cluster.views().flatMap((w) => w.instances.filter((i) => i.model === MODEL)).length, 2, 'the second request reused the pipeline');
});

t.test('a pipelined cold start on workers with device links sends its activations over them', { skip: addonError ?? false }, async (t) => {
  const { app, url, openai } = await pipelineGateway(t);
  const links = new LoopbackLinks(loadNativeAddon());
  for (const id of ['a-linked', 'b-linked']) {
    const w = await realWorker(app, url, id, {}, links.addon());
    t.teardown(() => w.close());
  }
  const { data, response } = await openai.chat.completions
    .create({ model: MODEL, messages: [{ role: 'user', content: 'hello' }], max_tokens: 8, temperature: 0 })
    .withResponse();
  t.match(response.headers.get('x-paraserve-path'), /^cold;k=2;.*;links=1\/1(;|$)/, 'the path says the hop went over a device link');
  const generated = data.usage?.completion_tokens ?? 0;
  t.ok(generated >= 1, 'served through the pipeline');
  t.equal(links.opened, 2, 'both ends of the one hop opened, from the id the gateway passed');
  t.equal(links.sent, generated, 'one activation over the link per step');
  t.equal(links.taken, links.sent);
});
