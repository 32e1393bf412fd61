// Trace-driven simulation of GPU sharing (issue 5 item 5): a generated Azure-Functions-like
// trace (or an Azure LLM trace's arrivals) replayed over N servers × G GPUs by the gateway's own
// swap and cold-start policy, against two baselines run on the same trace in the same process:
// (a) a fixed GPU keep-alive without swapping (evicted → cold start from storage) and (b) the same
// with a serial cold start (no pipelining, no overlap). Prints SLO attainment, paths taken,
// TTFT and swap percentiles and GPU-seconds, with ratios against the baselines and the issue's
// targets (≥ 98 % attainment at ≥ 200 models per GPU; 100 servers × 10,000 models in < 1 min).
// Latencies come from bench/simulator/calibration.ts.
//   npm run build && node dist/bench/simulate.js [--servers 16] [--gpus 2] [--models 6400] [--duration 3600] [--rate 40]
import { parseArgs } from 'node:util';
import { CALIBRATION, modelClasses } from './simulator/calibration.js';
import { simulate, VARIANTS, type SimResult, type Variant } from './simulator/engine.js';
import { generateTrace, traceFromAzureCsv, type Trace } from './simulator/trace.js';

const { values: flags } = parseArgs({
  options: {
    servers: { type: 'string', default: '16' },
    gpus: { type: 'string', default: '2' },
    models: { type: 'string', default: '6400' },
    duration: { type: 'string', default: '3600' },
    rate: { type: 'string', default: '40' },
    zipf: { type: 'string', default: '1.0' },
    duty: { type: 'string', default: '0.2' },
    'mean-on': { type: 'string', default: '60' },
    diurnal: { type: 'string', default: '0.5' },
    warmup: { type: 'string', default: '600' },
    queue: { type: 'string', default: '64' },
    seed: { type: 'string', default: '1' },
    'slo-scale': { type: 'string', default: '1' },
    variants: { type: 'string', default: 'paraserve,keepAlive,coldSerial' },
    'azure-csv': { type: 'string' },
    'time-scale': { type: 'string', default: '1' },
    json: { type: 'boolean', default: false },
  },
});

function num(name: keyof typeof flags): number {
  const v = Number(flags[name]);
  if (!Number.isFinite(v)) throw new RangeError(`--${name}: expected a number, got ${String(flags[name])}`);
  return v;
}

const SERVERS = num('servers');
const GPUS = num('gpus');
const MODELS = num('models');
const SEED = num('seed');

function variantsFromFlag(): Variant[] {
  return (flags.variants ?? '').split(',').map((name) => {
    const v = VARIANTS[name as keyof typeof VARIANTS];
    if (!v) throw new RangeError(`--variants: unknown ${name} (known: ${Object.keys(VARIANTS).join(', ')})`);
    return v;
  });
}

function buildTrace(): Trace {
  const csv = flags['azure-csv'];
  if (csv !== undefined) return traceFromAzureCsv(csv, MODELS, num('zipf'), num('time-scale'), SEED);
  return generateTrace({
    models: MODELS,
    durationS: num('duration'),
    ratePerS: num('rate'),
    zipfS: num('zipf'),
    dutyCycle: num('duty'),
    meanOnS: num('mean-on'),
    diurnalAmplitude: num('diurnal'),
    diurnalPeriodS: num('duration'),
    seed: SEED,
  });
}

const pct = (x: number): string => `${(100 * x).toFixed(2)} %`;
const ms = (x: number): string => x.toFixed(x < 10 ? 1 : 0);

function table(results: SimResult[]): string {
  const head = ['system', 'SLO attainment', 'warm', 'waited', 'moved', 'swapped', 'cold', 'rejected', 'TTFT p50 ms', 'TTFT p99 ms', 'swap p50/p99 ms', 'GPU-s held', 'GPU-s busy', 'evictions', 'sim wall s', 'sim CPU s'];
  const rows = results.map((r) => [
    r.variant,
    pct(r.attainment),
    ...(['warm', 'waited', 'moved', 'swapped', 'cold', 'rejected'] as const).map((p) => (r.missed[p] ? `${r.paths[p]} (${r.missed[p]} late)` : String(r.paths[p]))),
    ms(r.ttftP50Ms),
    ms(r.ttftP99Ms),
    r.swapP50Ms > 0 ? `${ms(r.swapP50Ms)}/${ms(r.swapP99Ms)}` : '-',
    r.gpuSeconds.toFixed(0),
    r.busyGpuSeconds.toFixed(0),
    String(r.evictions),
    (r.wallMs / 1000).toFixed(1),
    (r.cpuMs / 1000).toFixed(1),
  ]);
  return [`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

function main(): void {
  const classes = modelClasses();
  const started = performance.now();
  const trace = buildTrace();
  const genS = (performance.now() - started) / 1000;
  const variants = variantsFromFlag();
  const results = variants.map((variant) =>
    simulate(trace, { servers: SERVERS, gpusPerServer: GPUS, calibration: CALIBRATION, classes, variant, queueCapacity: num('queue'), warmupS: num('warmup'), seed: SEED, sloScale: num('slo-scale'), audit: false }),
  );
  if (flags.json) {
    console.log(JSON.stringify({ servers: SERVERS, gpus: GPUS, models: MODELS, requests: trace.arrivalMs.length, results }, null, 2));
    return;
  }
  const gpus = SERVERS * GPUS;
  console.log(
    `${SERVERS} servers × ${GPUS} GPUs, ${MODELS} models (${(MODELS / gpus).toFixed(0)} per GPU; ` +
      `${classes.map((c) => `${c.preset} ${(100 * c.weight).toFixed(0)} %, TTFT SLO ${((c.ttftSloMs * num('slo-scale')) / 1000).toFixed(1)} s`).join('; ')}), ` +
      `${trace.arrivalMs.length} requests over ${(trace.durationMs / 1000).toFixed(0)} s (first ${num('warmup')} s warm-up, not counted); trace generated in ${genS.toFixed(1)} s`,
  );
  console.log(table(results));
  const ours = results.find((r) => r.variant === VARIANTS.paraserve.name);
  if (!ours) return;
  console.log(`paraserve's host caches held ${ours.prefetchedModels} of ${MODELS} models at the start (registration's prefetch)`);
  for (const r of results) {
    if (r === ours) continue;
    console.log(
      `vs ${r.variant}: attainment ×${(ours.attainment / Math.max(r.attainment, 1e-9)).toFixed(2)} (${pct(ours.attainment)} vs ${pct(r.attainment)}), ` +
        `GPU-s held ×${(r.gpuSeconds / Math.max(ours.gpuSeconds, 1e-9)).toFixed(2)} fewer`,
    );
  }
  const perGpu = MODELS / gpus;
  console.log(`target ≥ 98 % SLO attainment at ≥ 200 models per GPU: ${ours.attainment >= 0.98 && perGpu >= 200 ? 'met' : 'NOT met'} (${pct(ours.attainment)} at ${perGpu.toFixed(0)} per GPU)`);
  if (SERVERS >= 100 && MODELS >= 10_000) {
    console.log(
      `target 100 servers × 10,000 models in < 60 s: ${ours.wallMs < 60_000 ? 'met' : 'NOT met'} (paraserve: ${(ours.wallMs / 1000).toFixed(1)} s wall, ${(ours.cpuMs / 1000).toFixed(1)} s CPU)`,
    );
  }
}

main();
