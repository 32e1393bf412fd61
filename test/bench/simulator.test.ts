// The trace-driven simulator on a tiny trace (a few seconds on CI): every request ends served
// or rejected, attainment is a fraction, paraserve is at least as good as both baselines on a
// skewed trace, a seed replays exactly, the view it keeps incrementally never drifts from one
// built from scratch; and its parts — the event heap's order, the trace
// generator's skew and ordering, reading an Azure LLM trace CSV.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { CALIBRATION, modelClasses } from '../../bench/simulator/calibration.js';
import { simulate, VARIANTS, type SimOptions, type SimResult, type Variant } from '../../bench/simulator/engine.js';
import { EventHeap } from '../../bench/simulator/heap.js';
import { Draws } from '../../bench/simulator/random.js';
import { generateTrace, traceFromAzureCsv, type TraceOptions } from '../../bench/simulator/trace.js';

const classes = modelClasses();

function traceOptions(o: Partial<TraceOptions> = {}): TraceOptions {
  return { models: 200, durationS: 600, ratePerS: 4, zipfS: 1.1, dutyCycle: 0.2, meanOnS: 30, diurnalAmplitude: 0.5, diurnalPeriodS: 600, seed: 7, ...o };
}

function options(variant: Variant, o: Partial<SimOptions> = {}): SimOptions {
  return { servers: 2, gpusPerServer: 2, calibration: CALIBRATION, classes, variant, queueCapacity: 32, warmupS: 0, seed: 7, sloScale: 1, audit: false, ...o };
}

function withoutTimes(r: SimResult): Omit<SimResult, 'wallMs' | 'cpuMs'> {
  const { wallMs: _wall, cpuMs: _cpu, ...rest } = r;
  return rest;
}

t.test('a tiny skewed trace through paraserve and both baselines', async (tt) => {
  const trace = generateTrace(traceOptions());
  const n = trace.arrivalMs.length;
  tt.ok(n > 500, `enough requests to mean something (${n})`);
  const results = [VARIANTS.paraserve, VARIANTS.keepAlive, VARIANTS.coldSerial].map((v) => simulate(trace, options(v)));
  for (const r of results) {
    tt.equal(r.requests, n, `${r.variant}: every request counted (no warm-up)`);
    tt.equal(Object.values(r.paths).reduce((a, b) => a + b, 0), n, `${r.variant}: every request served or rejected, once`);
    tt.ok(r.attainment >= 0 && r.attainment <= 1, `${r.variant}: attainment ${r.attainment} in [0, 1]`);
    tt.equal(r.sloMet + Object.values(r.missed).reduce((a, b) => a + b, 0), n, `${r.variant}: met + missed = all`);
    tt.ok(r.gpuSeconds >= 0 && r.gpuSeconds <= 4 * 600 + 1e-6, `${r.variant}: GPU-seconds within 4 GPUs × the trace`);
  }
  const [ours, keepAlive, coldSerial] = results as [SimResult, SimResult, SimResult];
  tt.ok(ours.attainment >= keepAlive.attainment, `paraserve ${ours.attainment} ≥ keep-alive ${keepAlive.attainment}`);
  tt.ok(ours.attainment >= coldSerial.attainment, `paraserve ${ours.attainment} ≥ serial cold start ${coldSerial.attainment}`);
  tt.ok(ours.paths.swapped > 0, 'paraserve swaps models in');
  tt.equal(keepAlive.paths.swapped + coldSerial.paths.swapped, 0, 'the baselines never swap');
  tt.ok(ours.attainment >= 0.9, `paraserve meets most SLOs on a light trace (${ours.attainment})`);
});

t.test('after every event, the view the simulator keeps is the one buildSwapView would build', async (tt) => {
  const trace = generateTrace(traceOptions({ models: 120, durationS: 240, ratePerS: 3 }));
  for (const v of [VARIANTS.paraserve, VARIANTS.keepAlive]) {
    const r = simulate(trace, options(v, { audit: true, servers: 3, gpusPerServer: 1 }));
    tt.equal(r.requests, trace.arrivalMs.length, `${r.variant}: audited run completes`);
  }
});

t.test('a seed replays exactly; another seed gives another trace', async (tt) => {
  const a = simulate(generateTrace(traceOptions()), options(VARIANTS.paraserve));
  const b = simulate(generateTrace(traceOptions()), options(VARIANTS.paraserve));
  tt.same(withoutTimes(a), withoutTimes(b));
  const first = (seed: number): number[] => [...generateTrace(traceOptions({ seed })).arrivalMs.slice(0, 20)];
  tt.notSame(first(8), first(7));
});

t.test('warm-up requests are simulated but not counted', async (tt) => {
  const trace = generateTrace(traceOptions());
  const counted = trace.arrivalMs.filter((x) => x >= 120_000).length;
  tt.equal(simulate(trace, options(VARIANTS.paraserve, { warmupS: 120 })).requests, counted);
});

t.test('the trace: sorted, Zipf-skewed, near the asked rate, bursty', async (tt) => {
  const trace = generateTrace(traceOptions({ models: 1000, durationS: 2000, ratePerS: 10 }));
  const n = trace.arrivalMs.length;
  let sorted = true;
  for (let i = 1; i < n; i++) if ((trace.arrivalMs[i] as number) < (trace.arrivalMs[i - 1] as number)) sorted = false;
  tt.ok(sorted, 'arrivals in time order');
  tt.ok(n > 20_000 * 0.8 && n < 20_000 * 1.2, `about rate × duration requests (${n})`);
  const perModel = new Array<number>(1000).fill(0);
  for (const m of trace.model) perModel[m] = (perModel[m] ?? 0) + 1;
  const top = perModel.slice(0, 10).reduce((a, b) => a + b, 0);
  const bottom = perModel.slice(500).reduce((a, b) => a + b, 0);
  tt.ok(top > bottom, `the 10 most popular models get more than the 500 least (${top} vs ${bottom})`);
  tt.ok(perModel.filter((c) => c === 0).length > 0, 'some models are never invoked');
  // Burstiness: per-second counts of the top model vary far more than a Poisson process's.
  const secs = new Array<number>(2000).fill(0);
  trace.model.forEach((m, i) => {
    if (m === 0) secs[Math.floor((trace.arrivalMs[i] as number) / 1000)]! += 1;
  });
  const mean = secs.reduce((a, b) => a + b, 0) / secs.length;
  const variance = secs.reduce((a, b) => a + (b - mean) ** 2, 0) / secs.length;
  tt.ok(variance > 2 * mean, `index of dispersion ${(variance / mean).toFixed(1)} > 2`);
  tt.throws(() => generateTrace(traceOptions({ dutyCycle: 0 })), RangeError);
});

t.test('an Azure LLM trace CSV gives arrivals and token counts', async (tt) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'paraserve-sim-'));
  tt.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'trace.csv');
  await writeFile(
    file,
    'TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n2023-11-16 18:15:48.2224670,879,55\n',
  );
  const trace = traceFromAzureCsv(file, 10, 1, 2, 1);
  tt.same([...trace.arrivalMs].map(Math.round), [0, 771, 2158], 'rebased, halved by timeScale 2, sorted');
  tt.same([...trace.promptTokens], [374, 879, 396]);
  tt.same([...trace.outputTokens], [44, 55, 109]);
  await writeFile(file, 'a,b\n1,2\n');
  tt.throws(() => traceFromAzureCsv(file, 10, 1, 1, 1), RangeError);
});

t.test('the event heap pops in time order, ties in push order', async (tt) => {
  const heap = new EventHeap<number>();
  const draws = new Draws(3, 0);
  const pushed: [number, number][] = [];
  for (let i = 0; i < 2000; i++) {
    const time = Math.floor(draws.uniform() * 100);
    heap.push(time, i);
    pushed.push([time, i]);
  }
  const popped: [number, number][] = [];
  for (let e = heap.pop(); e; e = heap.pop()) popped.push([e.time, e.item]);
  tt.same(popped, [...pushed].sort((a, b) => a[0] - b[0] || a[1] - b[1]));
  tt.equal(heap.pop(), null);
  tt.equal(heap.peekTime(), Infinity);
});
