// Pipelined serving as users meet it: real processes on loopback started through the CLI — a
// model store, a gateway with one worker (the reference), a gateway started with
// --pipeline-degree 2 and two workers, and one with --pipeline-degree 4 and four workers. The
// `demo` model (4 layers) is registered with each; the official `openai` client must get the
// same greedy and seeded-sampled text from the pipelines as from the single worker, and the
// pipelines must really be split (every worker holds one stage; consolidation is off so they
// stay split — test/gateway/consolidation-loop.test.ts covers it).
import path from 'node:path';
import OpenAI from 'openai';
import t from 'tap';
import { runCli } from '../cli/run-cli.js';
import { eventually, processCluster } from './fixtures/processes.js';

const ADMIN_TOKEN = 'pipeline-admin';

interface WorkerRow {
  id: string;
  state: string;
  activeRequests: number;
  instances: { instanceId: string; model: string; residency: string; stage: { layerStart: number; layerEnd: number; stageIndex: number; stageCount: number } | null }[];
}

const { dir, env, unexpectedExits, start, workers: workerRows } = await processCluster(t, 'pipeline', ADMIN_TOKEN);
const workers = (gatewayUrl: string): Promise<WorkerRow[]> => workerRows<WorkerRow>(gatewayUrl);

const models = path.join(dir, 'models');
const made = await runCli(['make-model', '--preset', 'demo', '--out', path.join(models, 'demo'), '--seed', '7', '--json']);
if (made.code !== 0) throw new Error(`make-model demo: ${made.stderr}`);
const store = start('store', ['store', 'serve', '--root', models, '--port', '0']);
const storeUrl = (await store.ready(30_000)).url!;

interface Cluster {
  url: string;
  client: OpenAI;
}

/** A gateway (pipeline degree k, or none) with n workers, the demo model registered, an API key. */
async function cluster(name: string, degree: number | null, n: number): Promise<Cluster> {
  const flags = degree === null ? [] : ['--pipeline-degree', String(degree), '--no-consolidate'];
  const gateway = start(`gateway-${name}`, ['gateway', '--port', '0', '--data-dir', path.join(dir, `gateway-${name}`), ...flags]);
  const url = (await gateway.ready(30_000)).url!;
  const ws = Array.from({ length: n }, (_, i) =>
    start(`worker-${name}-${i}`, ['worker', '--gateway', url, '--port', '0', '--id', `${name}-w${i}`]),
  );
  await Promise.all(ws.map((w) => w.ready(30_000)));
  await eventually(`${n} READY workers on ${name}`, 20_000, async () => (await workers(url)).filter((w) => w.state === 'READY').length === n);
  const admin = ['--gateway', url];
  const registered = await runCli(['models', 'register', 'demo', `${storeUrl}/demo`, '--json', ...admin], env);
  if (registered.code !== 0) throw new Error(`models register on ${name}: ${registered.stderr}`);
  const created = await runCli(['keys', 'create', 'pipeline', '--json', ...admin], env);
  const apiKey = (JSON.parse(created.stdout) as { key: string }).key;
  return { url, client: new OpenAI({ baseURL: `${url}/v1`, apiKey, maxRetries: 0, timeout: 60_000 }) };
}

const [single, two, four] = await Promise.all([cluster('single', null, 1), cluster('p2', 2, 2), cluster('p4', 4, 4)]);

const messages = [{ role: 'user' as const, content: 'Tell me how a pipeline warms up.' }];
const asks: [string, Omit<OpenAI.ChatCompletionCreateParamsNonStreaming, 'model' | 'messages'>][] = [
  ['greedy', { max_tokens: 24, temperature: 0 }],
  ['seeded sampling', { max_tokens: 24, temperature: 0.9, top_p: 0.95, seed: 11 }],
];

for (const [k, c] of [[2, two], [4, four]] as const) {
  t.test(`a ${k}-stage pipeline answers like a single worker`, async (t) => {
    for (const [name, params] of asks) {
      const expected = await single.client.chat.completions.create({ model: 'demo', messages, ...params });
      const got = await c!.client.chat.completions.create({ model: 'demo', messages, ...params });
      t.ok((expected.choices[0]!.message.content ?? '').length > 0, `${name}: the single worker said something`);
      t.equal(got.choices[0]!.message.content, expected.choices[0]!.message.content, `${name}: same text through ${k} stages`);
      t.equal(got.choices[0]!.finish_reason, expected.choices[0]!.finish_reason);
      t.same(got.usage, expected.usage, `${name}: same usage`);
    }
    const stream = await c!.client.chat.completions.create({ model: 'demo', messages, max_tokens: 24, temperature: 0, stream: true });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    const greedy = await single.client.chat.completions.create({ model: 'demo', messages, max_tokens: 24, temperature: 0 });
    t.equal(text, greedy.choices[0]!.message.content, 'streaming through the pipeline gives the same text');

    const rows = await workers(c!.url);
    const stages = rows.flatMap((w) => w.instances.filter((i) => i.model === 'demo' && i.residency === 'ON_DEVICE').map((i) => i.stage));
    t.equal(stages.length, k, `${k} stage instances, one per worker`);
    t.same(
      stages.map((s) => s?.stageIndex).sort(),
      Array.from({ length: k }, (_, i) => i),
      'stages 0..k-1',
    );
    t.ok(stages.every((s) => s !== null && s.stageCount === k && s.layerEnd - s.layerStart === 4 / k), 'each stage holds its share of the layers');
    t.same(unexpectedExits, [], 'no process exited');
  });
}
