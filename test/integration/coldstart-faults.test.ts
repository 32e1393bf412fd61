// A worker killed during a cold start, with real processes on loopback started through the CLI:
// a model store, a gateway and two workers whose fetches are capped at 1 MB/s, so loading the
// `demo` model (about 8 MB) takes seconds. SIGKILL the worker loading it: the client still gets
// its completion, from the surviving worker (the gateway re-placed the load). Then, with one
// worker left, kill it while it loads another model: the client gets a clear 503 naming it,
// within seconds, never a hang.
import path from 'node:path';
import OpenAI from 'openai';
import t from 'tap';
import { request } from 'undici';
import { runCli } from '../cli/run-cli.js';
import { eventually, processCluster } from './fixtures/processes.js';
import type { SupervisedChild } from '../../gateway/cli/supervisor.js';

const ADMIN_TOKEN = 'faults-admin';

interface WorkerRow {
  id: string;
  state: string;
  instances: { instanceId: string; model: string; residency: string }[];
}

const { dir, env, unexpectedExits, start, workers: workerRows } = await processCluster(t, 'faults', ADMIN_TOKEN);
const workers = (gatewayUrl: string): Promise<WorkerRow[]> => workerRows<WorkerRow>(gatewayUrl);

const models = path.join(dir, 'models');
// Two checkpoints (different seeds): the second is not in any worker's host cache.
for (const [name, seed] of [['demo', '7'], ['demo-b', '8']] as const) {
  const made = await runCli(['make-model', '--preset', 'demo', '--out', path.join(models, name), '--seed', seed, '--json']);
  if (made.code !== 0) throw new Error(`make-model ${name}: ${made.stderr}`);
}
const store = start('store', ['store', 'serve', '--root', models, '--port', '0']);
const storeUrl = (await store.ready(30_000)).url!;
const gateway = start('gateway', ['gateway', '--port', '0', '--data-dir', path.join(dir, 'gateway')]);
const gatewayUrl = (await gateway.ready(30_000)).url!;
const workerChildren = [0, 1].map((i) =>
  start(`worker-${i}`, ['worker', '--gateway', gatewayUrl, '--port', '0', '--id', `w${i}`, '--fetch-bandwidth', '1MB']),
);
await Promise.all(workerChildren.map((w) => w.ready(30_000)));
await eventually('two READY workers', 20_000, async () => (await workers(gatewayUrl)).filter((w) => w.state === 'READY').length === 2);
const admin = ['--gateway', gatewayUrl];
for (const name of ['demo', 'demo-b']) {
  const registered = await runCli(['models', 'register', name, `${storeUrl}/${name}`, '--json', ...admin], env);
  if (registered.code !== 0) throw new Error(`models register ${name}: ${registered.stderr}`);
}
const created = await runCli(['keys', 'create', 'faults', '--json', ...admin], env);
const apiKey = (JSON.parse(created.stdout) as { key: string }).key;
const client = new OpenAI({ baseURL: `${gatewayUrl}/v1`, apiKey, maxRetries: 0, timeout: 120_000 });
const messages = [{ role: 'user' as const, content: 'Say something about faults.' }];

/** The worker process loading `model` as the gateway sees it, once it is loading. */
async function loaderOf(model: string): Promise<{ row: WorkerRow; child: SupervisedChild }> {
  const row = await eventually(`a worker loading ${model}`, 20_000, async () =>
    (await workers(gatewayUrl)).find((w) => w.state === 'READY' && w.instances.some((i) => i.model === model && i.residency === 'LOADING')) ?? null,
  );
  return { row, child: workerChildren.find((c) => c.name === `worker-${row.id.slice(1)}`)! };
}

t.test('a worker killed while loading: the survivor serves the request', async (t) => {
  const asked = client.chat.completions.create({ model: 'demo', messages, max_tokens: 4, temperature: 0 }).withResponse();
  const { row, child } = await loaderOf('demo');
  process.kill(child.pid!, 'SIGKILL');
  const { data, response } = await asked;
  t.ok((data.usage?.completion_tokens ?? 0) >= 1, 'the client got its completion');
  const survivor = row.id === 'w0' ? 'w1' : 'w0';
  t.match(response.headers.get('x-paraserve-path'), new RegExp(`^cold;k=1;workers=${survivor};`), `served by ${survivor}, not the killed ${row.id}`);
  const trace = (await (
    await request(`${gatewayUrl}/admin/traces/${response.headers.get('x-paraserve-request-id') ?? 'none'}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  ).body.json()) as { failedAttempts: { workerId: string }[]; decisions: string[] };
  t.same(trace.failedAttempts.map((f) => f.workerId), [row.id], 'the trace names the failed attempt');
  t.ok(trace.decisions.some((d) => d.includes(`re-placing without worker ${row.id}`)), 'and its re-placement');
  await child.exited;
  t.same(unexpectedExits, [child.name], 'only the killed worker exited');
});

t.test('the last worker killed while loading: a clear 503, promptly', async (t) => {
  const asked = client.chat.completions.create({ model: 'demo-b', messages, max_tokens: 4, temperature: 0 }).then(
    () => null,
    (e: unknown) => e,
  );
  const { row, child } = await loaderOf('demo-b');
  const killedAt = Date.now();
  process.kill(child.pid!, 'SIGKILL');
  const err = await asked;
  t.ok(err instanceof OpenAI.APIError, `an API error (${String(err)})`);
  t.match(err, { status: 503, code: 'worker_lost', message: new RegExp(`worker ${row.id} .*re-placing the request failed: no worker is READY`) });
  t.ok(Date.now() - killedAt < 10_000, `the client knew within ${Date.now() - killedAt} ms`);
  await child.exited;
});
