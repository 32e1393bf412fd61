// Cold-start time to first token by pipeline degree (issue 4's benchmark): a model store, then
// for each k a fresh gateway forced to degree k and k fresh workers, each with the same fetch
// cap B (emulating one server's network link), and one cold streamed completion measured by
// the client (median of --repeats cold starts). Against (a) the floor S/(k·B) — S the model's
// checkpoint bytes — and (b) two baselines measured in the same run, both of one worker that
// does one phase after another (`--no-load-overlap`): "container" does what a plain serverless
// container does — downloads the model's files to local disk over its link (B, four ranged
// requests at once per file on the workers' fetch threads, so that the download runs at the
// cap as a good S3 client's would; timed as part of its TTFT), then its worker loads them from
// there (file://, no cap), initialises the runtime and copies the weights in; "no-overlap" is
// stricter: the worker fetches straight from the store into its pinned host cache at B, then
// initialises, then copies (no disk, and our fetch path).
// Every process runs through the CLI under the Supervisor, on loopback, and is stopped before
// the next configuration starts.
// Warm figures (TTFT and time per output token) are the median of five requests on the warm
// instance — after consolidation for k > 1 — so a first request's one-off costs (cuBLAS
// heuristics, graph capture) do not count against either side. Each cold start's line on stderr
// gives its timeline from the trace (the gateway's queue, every stage's phases and READY, the
// first token at the gateway and at the client), to see where the time beyond the fetch went.
//   npm run build && node dist/bench/coldstart.js [--preset demo] [--fetch-bandwidth 4MB] [--degrees 1,2,4] [--repeats 3] [--gpus N] [--worker-host-cache 16GiB] [--store-processes 1]
import { closeSync, openSync, writeSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import type { SupervisedChild } from '../gateway/cli/supervisor.js';
import { parseBandwidth } from '../gateway/cli/commands/worker.js';
import { hashModelFiles, type HashedFile } from '../worker/models/inspect.js';
import { openModelSource } from '../worker/models/source.js';
import { writeSyntheticModel } from '../worker/models/synthetic.js';
import { FetchLimiter } from '../worker/models/throttle.js';
import { DEFAULT_FETCH_THREADS, fetchOnThread, startFetchThreads } from '../worker/daemon/fetch-threads.js';
import { benchProcesses, splitRange, closeBenchHttp, getJson, percentile, postJson, streamCompletion, waitFor, type Completion } from './cluster.js';

const { values: flags } = parseArgs({
  options: {
    preset: { type: 'string', default: 'demo' },
    'fetch-bandwidth': { type: 'string', default: '4MB' },
    degrees: { type: 'string', default: '1,2,4' },
    'max-tokens': { type: 'string', default: '8' },
    backend: { type: 'string', default: 'auto' },
    'chunk-bytes': { type: 'string', default: '65536' },
    repeats: { type: 'string', default: '3' },
    gpus: { type: 'string', default: '0' },
    'worker-host-cache': { type: 'string' },
    'store-processes': { type: 'string', default: '1' },
  },
});
const BANDWIDTH_FLAG = flags['fetch-bandwidth']!;
const BANDWIDTH = requireCap(parseBandwidth(BANDWIDTH_FLAG));
const DEGREES = flags.degrees!.split(',').map(Number);
const MAX_TOKENS = Number(flags['max-tokens']);
/** Cold starts per configuration, each with fresh processes; the table shows the median's. */
const REPEATS = Number(flags.repeats);
/**
 * GPUs of the machine: worker i of a pipeline sees only GPU i mod --gpus (one "server" per
 * GPU, as the benchmark emulates servers on one multi-GPU machine); 0 leaves them alone.
 */
const GPUS = Number(flags.gpus);
const gpuOf = (worker: number): NodeJS.ProcessEnv => (GPUS > 0 ? { CUDA_VISIBLE_DEVICES: String(worker % GPUS) } : {});
/**
 * Integrity chunk size the bench registers the files with. A worker fetches whole chunks, so
 * with the gateway's default (4 MiB) a model of a few MB is one or two chunks and every stage
 * fetches nearly all of it; small chunks keep the CPU-scale model splittable as a 7B one is.
 * 0: let the gateway hash with its default.
 */
const CHUNK_BYTES = Number(flags['chunk-bytes']);
const PROMPT = 'Serverless inference keeps many models in host memory and swaps them onto GPUs per request.';
const MODEL = 'bench';
/** Targets from issue 4. */
const FLOOR_FACTOR = 1.2;
const FLOOR_SLACK_MS = 500;
const SPEEDUP_TARGET = 5;
const WARM_REQUESTS = 5;

if (!Number.isInteger(CHUNK_BYTES) || CHUNK_BYTES < 0) throw new Error(`--chunk-bytes: expected a byte count, got ${flags['chunk-bytes']}`);
if (!Number.isInteger(REPEATS) || REPEATS < 1) throw new Error(`--repeats: expected a positive integer, got ${flags.repeats}`);
if (DEGREES.some((k) => !Number.isInteger(k) || k < 1)) throw new Error(`--degrees: expected positive integers, got ${flags.degrees}`);

function requireCap(bytesPerS: number | null): number {
  if (bytesPerS === null) throw new Error('--fetch-bandwidth must be a cap: the floor S/(k·B) needs B');
  return bytesPerS;
}

interface WorkerView {
  id: string;
  state: string;
  fetchBytesPerS: number;
  instances: { instanceId: string; residency: string; hostBytes: number; error: string | null }[];
}

interface TraceReply {
  path: { kind: string; degree: number; instanceId: string; workers?: string[]; consolidated?: boolean } | null;
  loads: {
    instanceId: string;
    stages: { workerId: string; linkToNext: boolean | null; readyMs: number | null; spans: { phase: string; startMs: number; endMs: number }[] }[];
  }[];
  timings: {
    queueMs: number | null;
    loadMs: number | null;
    fetchMs: number | null;
    copyMs: number | null;
    initMs: number | null;
    firstTokenMs: number | null;
    prefillMs: number | null;
    workerQueueMs: number | null;
  };
}

/** A table cell: `v` with `digits` decimals, '-' when unknown. */
const fmt = (v: number | null, digits = 0): string => (v === null ? '-' : v.toFixed(digits));

/**
 * Where a cold request's time went, for the per-repeat log: the gateway's queue and load wait,
 * each stage's phases (ms since its worker received the load) and READY, then the first token
 * as the gateway and the client saw it.
 */
function timeline(trace: TraceReply, clientTtftMs: number): string {
  const load = trace.loads.find((l) => l.instanceId === trace.path?.instanceId);
  const stages = (load?.stages ?? []).map((s, i) => {
    const spans = s.spans.map((p) => `${p.phase.toLowerCase()} ${p.startMs.toFixed(0)}–${p.endMs.toFixed(0)}`).join(', ');
    return `stage ${i} (${s.workerId}): ${spans}, ready ${s.readyMs?.toFixed(0) ?? '-'}`;
  });
  const t = trace.timings;
  return [
    `queue ${fmt(t.queueMs, 1)}, load ${fmt(t.loadMs, 1)}`,
    ...stages,
    `first token at the gateway ${fmt(t.firstTokenMs, 1)} (worker queue ${fmt(t.workerQueueMs, 1)}, prefill ${fmt(t.prefillMs, 1)}), at the client ${fmt(clientTtftMs, 1)}`,
  ].join('\n    ');
}

interface TimedCompletion extends Completion {
  ttftMs: number;
  requestId: string;
}

/** One streamed completion of the bench model; throws unless it succeeded. */
async function complete(gatewayUrl: string): Promise<TimedCompletion> {
  const c = await streamCompletion(gatewayUrl, { model: MODEL, prompt: PROMPT, max_tokens: MAX_TOKENS, temperature: 0 });
  if (c.status !== 200 || c.ttftMs === null || c.requestId === null) throw new Error(`completion: ${c.status} ${c.error ?? ''}`);
  return { ...c, ttftMs: c.ttftMs, requestId: c.requestId };
}

/** One configuration of the table. */
interface Config {
  label: string;
  k: number;
  overlap: boolean;
  /** Download to local disk first, then load from there (the container baseline). */
  container: boolean;
}

interface Run extends Config {
  cold: TimedCompletion;
  /** The container baseline's download before its request, ms; 0 for the others. */
  downloadMs: number;
  /** Medians over WARM_REQUESTS requests on the warm instance. */
  warmTtftMs: number;
  warmPerTokenMs: number;
  trace: TraceReply;
  /** Bytes of the largest stage (its worker's host copy). */
  largestStageBytes: number;
  /** Time from the cold request's start until a whole-model instance replaced the pipeline; null for k = 1. */
  consolidatedAfterMs: number | null;
  /** Mean of the workers' measured fetch bandwidth, bytes/s. */
  measuredBytesPerS: number;
  /** Cold TTFT of every repeat, ms, in run order. */
  allTtftMs: number[];
}

/** Time to first token as the user sees it: the container's download, then its request's TTFT. */
const ttftOf = (r: Run): number => r.downloadMs + r.cold.ttftMs;

/** The repeat with the median cold TTFT (the lower middle for an even count), with every TTFT. */
function median(repeats: Run[]): Run {
  const sorted = [...repeats].sort((a, b) => ttftOf(a) - ttftOf(b));
  return { ...sorted[Math.floor((sorted.length - 1) / 2)]!, allTtftMs: repeats.map(ttftOf) };
}

/**
 * The container baseline's download: each file from the store into `dir`, paced at B by the
 * workers' own limiter, in four ranged requests at once (as S3 clients download large objects)
 * on fetch threads (a single thread receiving and writing fell 10 % short of a 10 Gbit/s cap).
 */
async function download(storeModelUrl: string, files: readonly { path: string; size: number }[], dir: string): Promise<void> {
  const limit = new FetchLimiter(BANDWIDTH).shared;
  for (const file of files) {
    const target = path.join(dir, file.path);
    await mkdir(path.dirname(target), { recursive: true });
    const fd = openSync(target, 'w');
    try {
      await Promise.all(
        splitRange(file.size, 4).map(([begin, end]) =>
          fetchOnThread(
            { uri: storeModelUrl, timeoutMs: 30_000, limit, file: file.path, begin, end, chunkEnds: [] },
            (offset, bytes) => writeSync(fd, bytes, 0, bytes.length, offset),
            new AbortController().signal,
          ),
        ),
      );
    } finally {
      closeSync(fd);
    }
  }
}

async function main(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'paraserve-coldstart-'));
  const storeRoot = path.join(dir, 'store');
  const modelDir = path.join(storeRoot, MODEL);
  const written = await writeSyntheticModel({ dir: modelDir, preset: flags.preset!, seed: 0, dtype: null, sharded: false }, null);
  const files: HashedFile[] | null =
    CHUNK_BYTES === 0 ? null : await hashModelFiles(openModelSource(pathToFileURL(modelDir).href), written.files, null, CHUNK_BYTES);
  const processes = benchProcesses(dir);
  // Started before any timing, as a worker starts its own.
  await startFetchThreads(DEFAULT_FETCH_THREADS);
  const startChild = (name: string, env: NodeJS.ProcessEnv, args: string[]): SupervisedChild => processes.start(name, args, env);

  // The store stands in for object storage that many servers read at once: with several
  // processes it is not the bottleneck of k links (`store serve --processes`).
  const store = startChild('store', {}, ['store', 'serve', '--root', storeRoot, '--port', '0', '--processes', flags['store-processes']!]);
  const storeUrl = (await store.ready(30_000)).url!;
  let modelBytes = 0;

  /** A fresh gateway of degree k and k fresh workers; one cold request, then the warm ones. */
  const measure = async (config: Config, runIndex: number): Promise<Run> => {
    const { label, k, overlap, container } = config;
    const dataDir = path.join(dir, `gateway-${runIndex}`);
    const gateway = startChild(`gateway-${runIndex}`, {}, [
      'gateway', '--port', '0', '--data-dir', dataDir, '--log-level', 'warn', '--pipeline-degree', String(k),
    ]);
    const gatewayUrl = (await gateway.ready(30_000)).url!;
    const workers = Array.from({ length: k }, (_, i) =>
      startChild(`worker-${runIndex}-${i}`, gpuOf(i), [
        'worker', '--gateway', gatewayUrl, '--port', '0', '--id', `w${runIndex}-${i}`, '--backend', flags.backend!,
        '--log-level', 'warn', ...(container ? [] : ['--fetch-bandwidth', BANDWIDTH_FLAG]), ...(overlap ? [] : ['--no-load-overlap']),
        ...(flags['worker-host-cache'] === undefined ? [] : ['--host-cache-bytes', flags['worker-host-cache']]),
      ]),
    );
    await Promise.all(workers.map((w) => w.ready(30_000)));
    await waitFor(`${k} READY workers`, async () => {
      const ready = (await getJson<{ data: WorkerView[] }>(`${gatewayUrl}/admin/workers`)).data.filter((w) => w.state === 'READY');
      return ready.length === k ? true : null;
    });
    let source = `${storeUrl}/${MODEL}`;
    let downloadMs = 0;
    const localCopy = path.join(dir, `download-${runIndex}`);
    if (container) {
      const started = performance.now();
      await download(source, written.files, localCopy);
      downloadMs = performance.now() - started;
      source = pathToFileURL(localCopy).href;
    }
    const registered = await postJson<{ model: { bytes: number } }>(`${gatewayUrl}/admin/models`, { name: MODEL, source, files, ttftSloMs: null }, 201);
    modelBytes = registered.model.bytes;

    const cold = await complete(gatewayUrl);
    const trace = await getJson<TraceReply>(`${gatewayUrl}/admin/traces/${cold.requestId}`);
    if (trace.path?.kind !== 'cold' || trace.path.degree !== k) {
      throw new Error(`${label}: the first request was not a cold start of degree ${k}: ${JSON.stringify(trace.path)}`);
    }
    const pipelineId = trace.path.instanceId;
    const views = (await getJson<{ data: WorkerView[] }>(`${gatewayUrl}/admin/workers`)).data;
    const stageBytes = views.flatMap((w) => w.instances.filter((i) => i.instanceId === pipelineId).map((i) => i.hostBytes));
    const rates = views.map((w) => w.fetchBytesPerS).filter((r) => r > 0);
    // A pipeline consolidates in the background: wait for the whole-model instance, then the
    // warm requests run on it (their latency should equal a single worker's).
    const consolidatedAfterMs =
      k === 1
        ? null
        : await waitFor('consolidation', async () => {
            const now = (await getJson<{ data: WorkerView[] }>(`${gatewayUrl}/admin/workers`)).data;
            const whole = now.some((w) => w.instances.some((i) => i.instanceId !== pipelineId && i.residency === 'ON_DEVICE'));
            return whole ? performance.now() - cold.startedAt : null;
          });
    const warm: TimedCompletion[] = [];
    for (let i = 0; i < WARM_REQUESTS; i++) warm.push(await complete(gatewayUrl));
    await processes.stop([gateway, ...workers]);
    await rm(localCopy, { recursive: true, force: true });
    return {
      ...config,
      cold,
      downloadMs,
      warmTtftMs: percentile(warm.map((w) => w.ttftMs), 0.5)!,
      warmPerTokenMs: percentile(warm.map((w) => (w.totalMs - w.ttftMs) / Math.max(1, MAX_TOKENS - 1)), 0.5)!,
      trace,
      largestStageBytes: Math.max(0, ...stageBytes),
      consolidatedAfterMs,
      measuredBytesPerS: rates.length === 0 ? 0 : rates.reduce((a, b) => a + b, 0) / rates.length,
      allTtftMs: [],
    };
  };

  const runs: Run[] = [];
  try {
    const configs: Config[] = [
      { label: 'container', k: 1, overlap: false, container: true },
      { label: 'no-overlap', k: 1, overlap: false, container: false },
      ...DEGREES.map((k) => ({ label: `k=${k}`, k, overlap: true, container: false })),
    ];
    let runIndex = 0;
    for (const c of configs) {
      const repeats: Run[] = [];
      for (let i = 0; i < REPEATS; i++) {
        const run = await measure(c, runIndex++);
        repeats.push(run);
        // As it happens, so that a later configuration's failure does not lose this one.
        console.error(
          `${c.label} #${i + 1}: cold TTFT ${ttftOf(run).toFixed(0)} ms (download ${run.downloadMs.toFixed(0)} ms; S = ${modelBytes} B), warm TTFT ${run.warmTtftMs.toFixed(1)} ms, warm ${run.warmPerTokenMs.toFixed(2)} ms/token, ` +
            `consolidated after ${run.consolidatedAfterMs?.toFixed(0) ?? '-'} ms\n    ${timeline(run.trace, run.cold.ttftMs)}`,
        );
      }
      runs.push(median(repeats));
    }
  } finally {
    await processes.stop();
    await closeBenchHttp();
    await rm(dir, { recursive: true, force: true });
  }

  const container = runs[0]!;
  const baseline = runs[1]!;
  // Hops whose activations went over a device link (NCCL), of the pipeline's k − 1.
  const linkCell = (r: Run): string => {
    if (r.k === 1) return '-';
    const stages = r.trace.loads.find((l) => l.instanceId === r.trace.path?.instanceId)?.stages ?? [];
    return `${stages.filter((s) => s.linkToNext === true).length}/${r.k - 1}`;
  };
  const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(2)} MB`;
  console.log(
    `cold start — preset ${flags.preset}, S = ${mb(modelBytes)}, B = ${mb(BANDWIDTH)}/s per worker, ${MAX_TOKENS} max tokens, median of ${REPEATS} cold starts, ` +
      `chunks ${CHUNK_BYTES === 0 ? 'gateway default' : `${CHUNK_BYTES} B`}, ` +
      `${os.cpus().length} CPUs (${os.cpus()[0]?.model})`,
  );
  console.log('container: download every file to local disk at B, then 1 worker loads them from there with --no-load-overlap (TTFT includes the download)');
  console.log('no-overlap: 1 worker, whole model, --no-load-overlap, fetching from the store at B (fetch every byte, then runtime init, then copy into the stage)');
  console.log('links: pipeline hops whose activations went over a device link (NCCL), of k − 1; the others went in gRPC messages');
  const header = ['config', 'TTFT ms', 'floor ms', 'TTFT/floor', 'stage floor ms', 'vs container', 'vs no-overlap', 'download ms', 'load ms', 'fetch ms', 'init ms', 'copy ms', 'prefill ms', 'links', 'consolidated ms', 'warm TTFT ms', 'warm ms/tok', 'meas. MB/s', 'all TTFT ms'];
  console.log(header.map((h, i) => (i === 0 ? h.padEnd(10) : h.padStart(h.length + 1))).join(''));
  for (const r of runs) {
    const floorMs = (modelBytes / (r.k * BANDWIDTH)) * 1000;
    const stageFloorMs = (r.largestStageBytes / BANDWIDTH) * 1000;
    const t = r.trace.timings;
    const cells = [
      fmt(ttftOf(r)),
      fmt(floorMs),
      fmt(ttftOf(r) / floorMs, 2),
      fmt(stageFloorMs),
      `×${fmt(ttftOf(container) / ttftOf(r), 2)}`,
      `×${fmt(ttftOf(baseline) / ttftOf(r), 2)}`,
      r.container ? fmt(r.downloadMs) : '-',
      fmt(t.loadMs),
      fmt(t.fetchMs),
      fmt(t.initMs),
      fmt(t.copyMs),
      fmt(t.prefillMs, 1),
      linkCell(r),
      fmt(r.consolidatedAfterMs),
      fmt(r.warmTtftMs, 1),
      fmt(r.warmPerTokenMs, 2),
      fmt(r.measuredBytesPerS / 1e6, 2),
      r.allTtftMs.map((v) => fmt(v)).join('/'),
    ];
    console.log([r.label.padEnd(10), ...cells.map((c, i) => ` ${c.padStart(header[i + 1]!.length)}`)].join(''));
  }
  for (const r of runs.slice(2)) {
    const floorMs = (modelBytes / (r.k * BANDWIDTH)) * 1000;
    const bound = FLOOR_FACTOR * floorMs + FLOOR_SLACK_MS;
    const met = ttftOf(r) <= bound;
    console.log(`${r.label}: TTFT ${fmt(ttftOf(r))} ms ${met ? '≤' : '>'} 1.2 × floor + 0.5 s = ${fmt(bound)} ms → ${met ? 'met' : 'NOT met'}`);
  }
  const top = runs.find((r) => r.label === 'k=4');
  if (top !== undefined) {
    const speedup = ttftOf(container) / ttftOf(top);
    console.log(
      `k=4: ×${fmt(speedup, 2)} faster than the container baseline (target ≥ ×${SPEEDUP_TARGET}) → ${speedup >= SPEEDUP_TARGET ? 'met' : 'NOT met'}; ` +
        `×${fmt(ttftOf(baseline) / ttftOf(top), 2)} faster than the no-overlap baseline`,
    );
  }
}

await main();
