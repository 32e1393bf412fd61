// GPU sharing end to end (issue 5, item 7): three tiny models share ONE CPU worker whose device
// budget (`--device-memory`) holds two of them, so serving all three means swapping. Gateway and
// worker are real processes started through the CLI. Requests to all three, one after the
// other and then all at once, go through the official `openai` client; every
// answer must equal the greedy answer of a reference gateway whose worker holds them all (each
// model served without swapping), and the traces must show swap-ins from the host cache with
// the idle copies evicted to make room. Last, a fourth model registered through the CLI with
// short keep-alives is swapped out, then unloaded, once idle (scale to zero).
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import OpenAI from 'openai';
import t from 'tap';
import type { RequestTrace } from '../../gateway/scheduler/trace.js';
import { runCli } from '../cli/run-cli.js';
import { addonError } from '../gateway/fixtures/real-workers.js';
import { eventually, processCluster } from './fixtures/processes.js';

const ADMIN_TOKEN = 'swap-admin';

interface WorkerRow {
  id: string;
  state: string;
  devices: { totalBytes: number; freeBytes: number }[];
  instances: { instanceId: string; model: string; residency: string; deviceBytes: number; hostBytes: number }[];
}

const MODELS = [
  { name: 'alpha', preset: 'tiny-llama3', seed: 1, prompt: 'Once upon a time' },
  { name: 'beta', preset: 'tiny-llama2', seed: 2, prompt: 'The swap engine' },
  { name: 'gamma', preset: 'tiny-llama3', seed: 3, prompt: 'In a host cache far away' },
] as const;
type ModelName = (typeof MODELS)[number]['name'] | 'brief';
const PROMPTS = new Map<string, string>([...MODELS.map((m) => [m.name, m.prompt] as const), ['brief', 'The swap engine']]);

t.test('three models share one worker by swapping, every answer right', { skip: addonError ?? false }, async (t) => {
  const { dir, env, start, workers: workerRows } = await processCluster(t, 'swap', ADMIN_TOKEN);
  const workers = (url: string): Promise<WorkerRow[]> => workerRows<WorkerRow>(url);
  const admin = { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' };

  const made = await Promise.all(
    MODELS.map((m) => runCli(['make-model', '--preset', m.preset, '--out', path.join(dir, 'models', m.name), '--seed', String(m.seed), '--json'])),
  );
  for (const r of made) if (r.code !== 0) throw new Error(`make-model: ${r.stderr}`);

  /** A gateway process with the three models registered, and an openai client of it. */
  const gateway = async (name: string): Promise<{ url: string; client: OpenAI }> => {
    const child = start(`gateway-${name}`, ['gateway', '--port', '0', '--data-dir', path.join(dir, `gateway-${name}`), '--queue-capacity', '32']);
    const url = (await child.ready(30_000)).url!;
    for (const m of MODELS) {
      const source = pathToFileURL(path.join(dir, 'models', m.name)).href;
      const res = await fetch(`${url}/admin/models`, { method: 'POST', headers: admin, body: JSON.stringify({ name: m.name, source, files: null }) });
      if (res.status !== 201) throw new Error(`registering ${m.name} on ${name}: ${res.status} ${await res.text()}`);
    }
    return { url, client: new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 30_000 }) };
  };

  /** A CPU worker process registered with the gateway at url, once the gateway sees it READY. */
  const worker = async (url: string, id: string, flags: string[]): Promise<void> => {
    const child = start(`worker-${id}`, ['worker', '--gateway', url, '--port', '0', '--id', id, '--backend', 'cpu', '--host-cache-bytes', '64MiB', ...flags]);
    await child.ready(30_000);
    await eventually(`worker ${id} READY`, 20_000, async () => (await workers(url)).some((r) => r.id === id && r.state === 'READY'));
  };

  const [reference, shared] = await Promise.all([gateway('reference'), gateway('shared')]);

  // --- each model served alone: a worker with room for all three ---------------------------
  await worker(reference.url, 'roomy', []);
  const ask = (c: OpenAI, model: ModelName) =>
    c.completions.create({ model, prompt: PROMPTS.get(model)!, max_tokens: 16, temperature: 0 }).withResponse();
  const expected = new Map<string, string>();
  for (const m of MODELS) {
    const { data } = await ask(reference.client, m.name);
    t.ok(data.choices[0]!.text.length > 0, `${m.name} says something`);
    expected.set(m.name, data.choices[0]!.text);
  }
  expected.set('brief', expected.get('beta')!);
  t.not(expected.get('alpha'), expected.get('gamma'), 'the two tiny-llama3 models differ (seeds)');
  const roomy = await eventually('the reference worker to report all three on its device', 5_000, async () =>
    (await workers(reference.url)).find((w) => w.id === 'roomy' && w.instances.filter((i) => i.residency === 'ON_DEVICE').length === 3) ?? null,
  );
  const footprint = Math.max(...roomy.instances.map((i) => i.deviceBytes));

  // --- the shared worker: device room for two of the three, host cache for all -------------
  const budget = Math.floor(2.5 * footprint);
  await worker(shared.url, 'tight', ['--device-memory', String(budget)]);
  const ids: string[] = [];
  const check = async (model: ModelName, what: string): Promise<void> => {
    const { data, response } = await ask(shared.client, model);
    t.equal(data.choices[0]!.text, expected.get(model), `${what}: ${model} answers as when served alone`);
    ids.push(response.headers.get('x-paraserve-request-id')!);
  };
  const order: ModelName[] = ['alpha', 'beta', 'gamma', 'alpha', 'beta', 'gamma', 'alpha', 'gamma', 'beta'];
  for (const [i, model] of order.entries()) await check(model, `request ${i + 1} in turn`);
  await Promise.all((['alpha', 'beta', 'gamma', 'gamma', 'beta', 'alpha'] as const).map((model, i) => check(model, `burst request ${i + 1}`)));

  // --- what happened on the way --------------------------------------------------------------
  const traces = await Promise.all(
    ids.map(async (id) => (await (await fetch(`${shared.url}/admin/traces/${id}`, { headers: admin })).json()) as RequestTrace),
  );
  t.ok(traces.every((tr) => tr.status === 'ok'), 'every request traced ok');
  const swapped = traces.filter((tr) => tr.path?.kind === 'swap');
  t.ok(swapped.length >= 3, `requests served by a swap-in from the host cache: ${swapped.length}`);
  t.ok(
    swapped.some((tr) => tr.swaps.some((s) => s.source === 'host' && s.evicted.length > 0 && s.workerMs !== null)),
    'a swap-in made room by evicting an idle model and the worker reported its time',
  );
  t.ok(swapped.every((tr) => (tr.timings.swapMs ?? -1) >= 0), 'swap-ins are timed');
  t.equal(traces.filter((tr) => tr.path?.kind === 'cold').length, 3, 'each model was fetched from storage once; after that it came from the host cache');
  const tight = (await workers(shared.url)).find((w) => w.id === 'tight')!;
  t.equal(tight.instances.length, 3, 'one instance per model on the shared worker');
  t.ok(tight.instances.filter((i) => i.residency === 'ON_DEVICE').length <= 2, 'never more on the device than fits');
  t.ok(tight.instances.every((i) => i.hostBytes > 0), 'every model keeps its host copy');
  const metrics = await (await fetch(`${shared.url}/metrics`)).text();
  const swapIns = [...metrics.matchAll(/^paraserve_swap_seconds_count\{model="[a-z]+",direction="in",outcome="ok"\} (\d+)$/gm)].reduce((n, m) => n + Number(m[1]), 0);
  t.ok(swapIns >= 3 && swapIns <= swapped.length, `the metrics count ${swapIns} swap-ins (requests that joined one share it)`);

  // --- keep-alive: a model registered (through the CLI) with short keep-alives scales to zero -
  const registered = await runCli(
    ['models', 'register', 'brief', path.join(dir, 'models', 'beta'), '--gpu-keep-alive-ms', '200', '--host-keep-alive-ms', '800', '--json', '--gateway', shared.url],
    env,
  );
  t.equal(registered.code, 0, registered.stderr);
  t.match(JSON.parse(registered.stdout), { name: 'brief', gpuKeepAliveMs: 200, hostKeepAliveMs: 800 });
  await check('brief', 'a model with short keep-alives');
  const brief = (): Promise<WorkerRow['instances'][number] | null> =>
    workers(shared.url).then((rows) => rows.find((w) => w.id === 'tight')?.instances.find((i) => i.model === 'brief') ?? null);
  await eventually('brief to be swapped out after its GPU keep-alive', 5_000, async () => (await brief())?.residency === 'HOST_ONLY');
  await eventually('brief to leave host memory after its host keep-alive', 5_000, async () => (await brief()) === null);
  t.pass('brief was swapped out, then unloaded: scaled to zero');
  t.equal((await workers(shared.url)).find((w) => w.id === 'tight')?.instances.length, 3, 'the other three, with the default keep-alives, stay');
});

