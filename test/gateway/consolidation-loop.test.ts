// Consolidation through the scheduler loop against real in-process CPU workers (fetches capped
// so the background whole-model load takes about a second): a 2-stage pipeline serves the cold
// request; a request held open on the pipeline after its first token stays there while the
// whole-model instance loads and becomes READY; a later request runs on the whole-model
// instance (path warm, `consolidated`) with the same greedy tokens; the pipeline dissolves only
// once the held request has finished normally (the member that did not consolidate keeps its
// stage's host copy, the one that did drops its stage); the time is in
// paraserve_consolidation_seconds; once the whole copy is gone, a cold start re-forms the
// pipeline with the kept stage on its holder and the same tokens. Skipped where the native
// addon is not built.
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import t from 'tap';
import type { GenerationEvent } from '../../gateway/scheduler/loop.js';
import { MODEL, registerTiny, testApp, tokenizerOf } from './fixtures/helpers.js';
import { addonError, realWorker, until } from './fixtures/real-workers.js';

t.test('a serving pipeline consolidates into one whole-model instance', { skip: addonError ?? false }, async (t) => {
  const app = await testApp(t, { requestTimeoutMs: 60_000, forcedPipelineDegree: 2 });
  await registerTiny(app);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  const openai = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const model = app.catalog.get(MODEL);
  if (model === null) throw new Error('tiny is not servable');
  // A stage's fetch takes about half a second, the whole model's about a second.
  const bandwidth = Math.ceil(model.bytes);
  for (const id of ['a', 'b']) {
    const w = await realWorker(app, url, id, { fetchBandwidthBytesPerS: bandwidth });
    t.teardown(() => w.close());
  }
  const instances = (id: string): string[] =>
    app.cluster.views().flatMap((w) => w.instances.filter((i) => i.instanceId === id && i.residency === 'ON_DEVICE').map(() => w.id));
  const wholeOnDevice = (): string | null =>
    app.cluster
      .views()
      .flatMap((w) => w.instances.filter((i) => i.model === MODEL && i.stage?.stageCount === 1 && i.residency === 'ON_DEVICE'))
      .map((i) => i.instanceId)[0] ?? null;
  const ask = (): Promise<{ data: OpenAI.ChatCompletion; response: Response }> =>
    openai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hello' }], max_tokens: 8, temperature: 0 }).withResponse();

  const cold = await ask();
  const coldPath = cold.response.headers.get('x-paraserve-path') ?? '';
  t.match(coldPath, /^cold;k=2;/, 'the cold request ran on the pipeline');
  const pipelineId = /instance=([^;]+)/.exec(coldPath)?.[1] ?? '';
  t.not(pipelineId, '');

  const tracer = app.scheduler.traces.start('held', MODEL, Date.now());
  const held = app.scheduler.generate(
    model,
    {
      requestId: 'held',
      promptTokenIds: tokenizerOf(app).encode('hello there', true),
      maxTokens: 12,
      temperature: 0,
      topP: 1,
      seed: null,
      stopTokenIds: [],
      arrivalMs: Date.now(),
      trace: tracer,
    },
    new AbortController().signal,
  );
  const firstHeld = await held.next();
  t.match(firstHeld.value, { kind: 'token' }, 'the held request streams');
  t.match(tracer.snapshot().path, { kind: 'warm', instanceId: pipelineId, degree: 2, consolidated: false }, 'it runs on the pipeline: consolidation was not READY yet');

  await until(app, () => wholeOnDevice() !== null);
  const wholeId = wholeOnDevice() ?? '';
  t.not(wholeId, pipelineId);
  const warm = await ask();
  t.match(
    warm.response.headers.get('x-paraserve-path'),
    new RegExp(`^warm;k=1;instance=${wholeId.replace(/[#.]/g, '\\$&')};worker=[ab];consolidated$`),
    'a later request runs on the consolidated instance',
  );
  t.equal(warm.data.choices[0]?.message.content, cold.data.choices[0]?.message.content, 'same greedy tokens as through the pipeline');
  t.equal(instances(pipelineId).length, 2, 'the pipeline stays while a request runs on it');

  const rest: GenerationEvent[] = [];
  for await (const ev of held) rest.push(ev);
  const finish = rest[rest.length - 1];
  t.match(finish, { kind: 'finish', reason: 'length', completionTokens: 12 }, 'the held request finished normally');
  t.equal(rest.filter((e) => e.kind === 'token').length, 11);
  const consolidatedOn = app.cluster.views().find((w) => w.instances.some((i) => i.instanceId === wholeId))!.id;
  const keptStages = (): string[] =>
    app.cluster.views().flatMap((w) => w.instances.filter((i) => i.instanceId === pipelineId && i.residency === 'HOST_ONLY').map(() => w.id));
  await until(app, () => {
    const everyCopy = app.cluster.views().flatMap((w) => w.instances.filter((i) => i.instanceId === pipelineId));
    return instances(pipelineId).length === 0 && everyCopy.length === 1;
  });
  t.pass('the pipeline dissolved once idle');
  t.same(keptStages(), [consolidatedOn === 'a' ? 'b' : 'a'], "the other member keeps its stage's host copy; the consolidating worker's whole copy has its stage");
  t.equal(wholeOnDevice(), wholeId, 'the whole-model instance stays');

  const metrics = await app.inject({ method: 'GET', url: '/metrics' });
  t.match(metrics.body, /paraserve_consolidation_seconds_count\{model="tiny"\} 1/);
  const again = await ask();
  t.match(again.response.headers.get('x-paraserve-path'), /;consolidated$/);

  // The whole-model copy goes (as a keep-alive would take it): the next cold start re-forms the
  // pipeline with the kept stage back on the worker that holds it.
  const keeper = keptStages()[0]!;
  const keptIndex = app.cluster.view(keeper)!.instances.find((i) => i.instanceId === pipelineId)!.stage!.stageIndex;
  await app.cluster.channel(consolidatedOn)!.unloadStage(wholeId, 10_000);
  await until(app, () => app.cluster.views().every((w) => w.instances.every((i) => i.instanceId !== wholeId)));
  const reformed = await ask();
  const reformedPath = reformed.response.headers.get('x-paraserve-path') ?? '';
  t.match(reformedPath, /^cold;k=2;/, 'a cold start again');
  const reformedId = /instance=([^;]+)/.exec(reformedPath)?.[1] ?? '';
  t.equal(app.cluster.view(keeper)!.instances.find((i) => i.instanceId === reformedId)?.stage?.stageIndex, keptIndex, 'the kept stage went back to its holder');
  t.equal(reformed.data.choices[0]?.message.content, cold.data.choices[0]?.message.content, 'same greedy tokens');
});

t.test('consolidation off: the pipeline keeps serving', { skip: addonError ?? false }, async (t) => {
  const app = await testApp(t, { requestTimeoutMs: 60_000, forcedPipelineDegree: 2, consolidate: false });
  await registerTiny(app);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  for (const id of ['a', 'b']) {
    const w = await realWorker(app, url, id, { fetchBandwidthBytesPerS: 1024 ** 3 });
    t.teardown(() => w.close());
  }
  const openai = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const ask = (): Promise<{ data: OpenAI.ChatCompletion; response: Response }> =>
    openai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hello' }], max_tokens: 4, temperature: 0 }).withResponse();
  t.match((await ask()).response.headers.get('x-paraserve-path'), /^cold;k=2;/);
  t.match((await ask()).response.headers.get('x-paraserve-path'), /^warm;k=2;/, 'still the pipeline');
  t.equal(app.cluster.views().flatMap((w) => w.instances.filter((i) => i.model === MODEL)).length, 2, 'no whole-model load started');
});
