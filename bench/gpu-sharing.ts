// GPU sharing on one worker (issue 5's real run): many models registered, far more than fit
// on the device at once, and a bursty request mix with skewed popularity sent through the
// gateway by a bounded load generator on loopback. Measured for paraserve (models wait in
// the host cache and are swapped in per request) and, in the same run, for the baseline
// `--no-swapping` (a model that left the device starts cold from storage again). Reports SLO
// attainment (a request meets its SLO when it succeeds with TTFT ≤ the model's TTFT SLO),
// TTFT and swap-in latency percentiles, and the paths requests took.
//   npm run build && node dist/bench/gpu-sharing.js [--models 60] [--preset llama-100m]
//     [--device-memory 2GiB] [--host-cache 16GiB] [--duration-s 60] [--rate 6] [--slo-ms 500]
// Every model is the same checkpoint under a different name (one copy in the store); each is
// loaded, cached and swapped as a model of its own.
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { hashModelFiles } from '../worker/models/inspect.js';
import { openModelSource } from '../worker/models/source.js';
import { writeSyntheticModel } from '../worker/models/synthetic.js';
import { benchProcesses, closeBenchHttp, getJson, percentile, postJson, streamCompletion, waitFor, type Completion } from './cluster.js';
import { zipfCumulative } from './simulator/trace.js';

const { values: flags } = parseArgs({
  options: {
    models: { type: 'string', default: '60' },
    preset: { type: 'string', default: 'llama-100m' },
    'device-memory': { type: 'string', default: '2GiB' },
    'host-cache': { type: 'string', default: '16GiB' },
    'fetch-bandwidth': { type: 'string', default: '10Gbit' },
    'duration-s': { type: 'string', default: '60' },
    rate: { type: 'string', default: '6' },
    'slo-ms': { type: 'string', default: '500' },
    'max-tokens': { type: 'string', default: '8' },
    concurrency: { type: 'string', default: '64' },
    seed: { type: 'string', default: '1' },
    backend: { type: 'string', default: 'auto' },
  },
});
const MODELS = Number(flags.models);
const DURATION_MS = Number(flags['duration-s']) * 1000;
const RATE = Number(flags.rate);
const SLO_MS = Number(flags['slo-ms']);
const CONCURRENCY = Number(flags.concurrency);
const PROMPT = 'Serverless inference keeps many models in host memory and swaps them onto GPUs per request.';

/** xorshift32: the load is the same for both systems and every run with one seed. */
function randomSource(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 2 ** 32;
  };
}

interface Arrival {
  atMs: number;
  model: string;
}

/**
 * Zipf(1.1) popularity over the models; arrivals Poisson with a rate that alternates between
 * bursts (4 × the mean rate, 2–5 s) and lulls (a quarter of it, 3–8 s).
 */
function arrivals(seed: number): Arrival[] {
  const random = randomSource(seed);
  const cumulative = zipfCumulative(MODELS, 1.1);
  const pick = (): string => {
    const u = random() * cumulative[MODELS - 1]!;
    const rank = cumulative.findIndex((c) => u <= c);
    return modelName(rank === -1 ? MODELS - 1 : rank);
  };
  const out: Arrival[] = [];
  let t = 0;
  let burst = true;
  let phaseEnd = 0;
  while (t < DURATION_MS) {
    if (t >= phaseEnd) {
      burst = !burst;
      phaseEnd = t + (burst ? 2000 + random() * 3000 : 3000 + random() * 5000);
    }
    const rate = (burst ? 4 : 0.25) * RATE;
    t += (-Math.log(1 - random()) / rate) * 1000;
    if (t < DURATION_MS) out.push({ atMs: t, model: pick() });
  }
  return out;
}

function modelName(i: number): string {
  return `m${String(i).padStart(3, '0')}`;
}

interface Outcome {
  model: string;
  completion: Completion;
  path: string;
  swapInMs: number | null;
}

function swapInMs(timing: string | undefined): number | null {
  const match = /(?:^|, )swap_in;dur=([0-9.]+)/.exec(timing ?? '');
  return match === null ? null : Number(match[1]);
}

/** Replays the arrivals against the gateway with at most CONCURRENCY requests in flight. */
async function replay(gatewayUrl: string, load: Arrival[]): Promise<Outcome[]> {
  const outcomes: Outcome[] = [];
  const start = performance.now();
  let inFlight = 0;
  const slots: (() => void)[] = [];
  const pending: Promise<void>[] = [];
  for (const arrival of load) {
    const wait = arrival.atMs - (performance.now() - start);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    while (inFlight >= CONCURRENCY) await new Promise<void>((r) => slots.push(r));
    inFlight++;
    pending.push(
      (async () => {
        const completion = await streamCompletion(gatewayUrl, { model: arrival.model, prompt: PROMPT, max_tokens: Number(flags['max-tokens']), temperature: 0 });
        outcomes.push({
          model: arrival.model,
          completion,
          path: (completion.headers['x-paraserve-path'] ?? completion.status.toString()).split(';')[0]!,
          swapInMs: swapInMs(completion.headers['x-paraserve-timing']),
        });
        inFlight--;
        slots.shift()?.();
      })(),
    );
  }
  await Promise.all(pending);
  return outcomes;
}

interface Summary {
  label: string;
  requests: number;
  attainment: number;
  ttftP50: number | null;
  ttftP99: number | null;
  swapP50: number | null;
  swapP99: number | null;
  paths: Record<string, number>;
  failures: Record<string, number>;
  /** Distinct error messages of failed requests, with how often each came. */
  errors: Map<string, number>;
}

function summarise(label: string, outcomes: Outcome[]): Summary {
  const ttfts = outcomes.filter((o) => o.completion.ttftMs !== null).map((o) => o.completion.ttftMs!);
  const swaps = outcomes.map((o) => o.swapInMs).filter((v): v is number => v !== null);
  const met = outcomes.filter((o) => o.completion.status === 200 && o.completion.ttftMs !== null && o.completion.ttftMs <= SLO_MS).length;
  const paths: Record<string, number> = {};
  const failures: Record<string, number> = {};
  const errors = new Map<string, number>();
  for (const o of outcomes) {
    paths[o.path] = (paths[o.path] ?? 0) + 1;
    if (o.completion.status !== 200) {
      failures[String(o.completion.status)] = (failures[String(o.completion.status)] ?? 0) + 1;
      const message = errorMessage(o.completion.error);
      errors.set(message, (errors.get(message) ?? 0) + 1);
    }
  }
  return {
    label,
    requests: outcomes.length,
    attainment: met / Math.max(1, outcomes.length),
    ttftP50: percentile(ttfts, 0.5),
    ttftP99: percentile(ttfts, 0.99),
    swapP50: percentile(swaps, 0.5),
    swapP99: percentile(swaps, 0.99),
    paths,
    failures,
    errors,
  };
}

/** The OpenAI error object's message, with instance and worker names made generic. */
function errorMessage(body: string | null): string {
  let message = body ?? '';
  try {
    message = (JSON.parse(message) as { error?: { message?: string } }).error?.message ?? message;
  } catch {
    // not JSON: keep the text
  }
  return message.replace(/m\d{3}/g, 'mNNN').replace(/@[\w.#:-]+/g, '@…').slice(0, 200);
}

async function main(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'paraserve-sharing-'));
  const storeRoot = path.join(dir, 'store');
  const baseDir = path.join(storeRoot, 'base');
  const written = await writeSyntheticModel({ dir: baseDir, preset: flags.preset!, seed: 0, dtype: null, sharded: false }, null);
  // Hashed once here instead of once per registered name by the gateway.
  const files = await hashModelFiles(openModelSource(pathToFileURL(baseDir).href), written.files, null, 4 * 1024 * 1024);
  const processes = benchProcesses(dir);
  const summaries: Summary[] = [];
  try {
    const store = processes.start('store', ['store', 'serve', '--root', storeRoot, '--port', '0'], {});
    const storeUrl = (await store.ready(30_000)).url!;
    const load = arrivals(Number(flags.seed));
    for (const system of [{ label: 'paraserve (swapping)', swapping: true }, { label: 'baseline (no swapping)', swapping: false }]) {
      const gateway = processes.start(`gateway-${system.swapping ? 'swap' : 'baseline'}`, [
        'gateway', '--port', '0', '--data-dir', path.join(dir, `gateway-${system.swapping}`), '--log-level', 'warn',
        '--pipeline-degree', '1', '--no-consolidate', ...(system.swapping ? [] : ['--no-swapping']),
      ], {});
      const gatewayUrl = (await gateway.ready(30_000)).url!;
      const worker = processes.start(`worker-${system.swapping ? 'swap' : 'baseline'}`, [
        'worker', '--gateway', gatewayUrl, '--port', '0', '--backend', flags.backend!, '--log-level', 'warn',
        '--host-cache-bytes', flags['host-cache']!, '--device-memory', flags['device-memory']!, '--fetch-bandwidth', flags['fetch-bandwidth']!,
      ], {});
      await worker.ready(60_000);
      await waitFor('a READY worker', async () => {
        const workers = (await getJson<{ data: { state: string }[] }>(`${gatewayUrl}/admin/workers`)).data;
        return workers.some((w) => w.state === 'READY') ? true : null;
      });
      for (let i = 0; i < MODELS; i++) {
        await postJson(`${gatewayUrl}/admin/models`, { name: modelName(i), source: `${storeUrl}/base`, files, ttftSloMs: SLO_MS }, 201);
      }
      summaries.push(summarise(system.label, await replay(gatewayUrl, load)));
      await processes.stop([gateway, worker]);
    }
  } finally {
    await processes.stop();
    await closeBenchHttp();
    await rm(dir, { recursive: true, force: true });
  }

  const fmt = (v: number | null): string => (v === null ? '-' : v.toFixed(1));
  console.log(
    `GPU sharing — ${MODELS} × ${flags.preset}, device memory ${flags['device-memory']}, host cache ${flags['host-cache']}, ` +
      `${flags['duration-s']} s of bursty Zipf load (mean ${RATE}/s), TTFT SLO ${SLO_MS} ms, ≤ ${CONCURRENCY} in flight`,
  );
  console.log('| system | requests | SLO attainment | TTFT p50 ms | TTFT p99 ms | swap-in p50 ms | swap-in p99 ms | paths | failures |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const s of summaries) {
    console.log(
      `| ${s.label} | ${s.requests} | ${(s.attainment * 100).toFixed(1)} % | ${fmt(s.ttftP50)} | ${fmt(s.ttftP99)} | ${fmt(s.swapP50)} | ${fmt(s.swapP99)} | ` +
        `${Object.entries(s.paths).map(([k, v]) => `${k} ${v}`).join(', ')} | ${Object.entries(s.failures).map(([k, v]) => `${k} ${v}`).join(', ') || '-'} |`,
    );
  }
  for (const s of summaries) {
    for (const [message, count] of [...s.errors].sort((a, b) => b[1] - a[1]).slice(0, 3)) console.log(`${s.label}: ${count} × ${message}`);
  }
}

await main();
