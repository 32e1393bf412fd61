// An Azure-Functions-like request trace for many models, generated from a seed: model
// popularity is Zipf-skewed (most models are invoked rarely, a few very often — Shahrad et al.,
// "Serverless in the Wild", ATC 2020), each model's arrivals come in bursts (an on/off
// modulated Poisson process), and the whole load follows a diurnal curve (one "day" compressed
// into the trace unless told otherwise). Prompt and output lengths follow log-normal fits to the
// Azure LLM inference trace (conversation sample: context p50 1020 / p90 2734 tokens, output
// p50 129 / p90 424). Alternatively the aggregate arrival times and token counts come from an
// Azure LLM trace CSV (../shared/traces), each request given a model by the same Zipf law.
import { readFileSync } from 'node:fs';
import { Draws } from './random.js';

export interface TraceOptions {
  /** Registered models. */
  models: number;
  durationS: number;
  /** Mean requests per second over the whole trace, all models together. */
  ratePerS: number;
  /** Zipf exponent of model popularity (rank r gets ∝ 1/r^s). */
  zipfS: number;
  /** Share of time a model's burst process is on; its rate while on is rate / duty. */
  dutyCycle: number;
  /** Mean length of an on period, s. */
  meanOnS: number;
  /** Peak-to-mean swing of the diurnal curve (0: flat; 0.5: peak 1.5× mean, trough 0.5×). */
  diurnalAmplitude: number;
  /** Period of the diurnal curve, s (the trace's duration compresses one day into it by default). */
  diurnalPeriodS: number;
  seed: number;
}

/** Requests in arrival order, column-wise (a million requests stay a few typed arrays). */
export interface Trace {
  models: number;
  durationMs: number;
  arrivalMs: Float64Array;
  model: Int32Array;
  promptTokens: Int32Array;
  outputTokens: Int32Array;
}

const PROMPT = { median: 1020, sigma: 0.77, min: 16, max: 8192 };
const OUTPUT = { median: 129, sigma: 0.93, min: 1, max: 2048 };

/** Cumulative Zipf weights of ranks 1..n. */
export function zipfCumulative(n: number, s: number): Float64Array {
  const out = new Float64Array(n);
  let sum = 0;
  for (let r = 0; r < n; r++) {
    sum += 1 / Math.pow(r + 1, s);
    out[r] = sum;
  }
  return out;
}

function clampRound(x: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, Math.round(x)));
}

function checkOptions(o: TraceOptions): void {
  const positive: [string, number][] = [
    ['models', o.models],
    ['durationS', o.durationS],
    ['ratePerS', o.ratePerS],
    ['meanOnS', o.meanOnS],
    ['diurnalPeriodS', o.diurnalPeriodS],
  ];
  for (const [k, v] of positive) if (!(v > 0) || !Number.isFinite(v)) throw new RangeError(`trace ${k} must be positive (got ${v})`);
  if (!(o.dutyCycle > 0 && o.dutyCycle <= 1)) throw new RangeError(`trace dutyCycle must be in (0, 1] (got ${o.dutyCycle})`);
  if (!(o.diurnalAmplitude >= 0 && o.diurnalAmplitude < 1)) throw new RangeError(`trace diurnalAmplitude must be in [0, 1) (got ${o.diurnalAmplitude})`);
  if (!(o.zipfS >= 0)) throw new RangeError(`trace zipfS must be non-negative (got ${o.zipfS})`);
}

/** Sorts the columns by arrival time (stable for equal times). */
function sortColumns(t: number[], m: number[], p: number[], g: number[], models: number, durationMs: number): Trace {
  const order = Uint32Array.from(t.keys()).sort((a, b) => (t[a] as number) - (t[b] as number) || a - b);
  const n = order.length;
  const trace: Trace = {
    models,
    durationMs,
    arrivalMs: new Float64Array(n),
    model: new Int32Array(n),
    promptTokens: new Int32Array(n),
    outputTokens: new Int32Array(n),
  };
  order.forEach((src, i) => {
    trace.arrivalMs[i] = t[src] as number;
    trace.model[i] = m[src] as number;
    trace.promptTokens[i] = p[src] as number;
    trace.outputTokens[i] = g[src] as number;
  });
  return trace;
}

/** A generated trace: per-model on/off bursts at Zipf-shared rates, thinned by the diurnal curve. */
export function generateTrace(o: TraceOptions): Trace {
  checkOptions(o);
  const cumulative = zipfCumulative(o.models, o.zipfS);
  const total = cumulative[o.models - 1] as number;
  const arrivals = new Draws(o.seed, 1);
  const lengths = new Draws(o.seed, 2);
  const durationMs = o.durationS * 1000;
  const peak = 1 + o.diurnalAmplitude;
  const t: number[] = [];
  const m: number[] = [];
  const p: number[] = [];
  const g: number[] = [];
  const meanOnMs = o.meanOnS * 1000;
  const meanOffMs = (meanOnMs * (1 - o.dutyCycle)) / o.dutyCycle;
  for (let i = 0; i < o.models; i++) {
    const share = ((cumulative[i] as number) - (i > 0 ? (cumulative[i - 1] as number) : 0)) / total;
    // Candidates at the peak of the curve while on; thinning brings them to the mean.
    const onRatePerMs = (o.ratePerS * share * peak) / o.dutyCycle / 1000;
    let now = 0;
    let on = arrivals.uniform() < o.dutyCycle;
    while (now < durationMs) {
      const end = Math.min(durationMs, now + (on ? arrivals.exponential(meanOnMs) : meanOffMs > 0 ? arrivals.exponential(meanOffMs) : 0));
      if (on) {
        let a = now + arrivals.exponential(1 / onRatePerMs);
        while (a < end) {
          const curve = 1 - o.diurnalAmplitude * Math.cos((2 * Math.PI * a) / (o.diurnalPeriodS * 1000));
          if (arrivals.uniform() * peak < curve) {
            t.push(a);
            m.push(i);
            p.push(clampRound(lengths.logNormal(PROMPT.median, PROMPT.sigma), PROMPT.min, PROMPT.max));
            g.push(clampRound(lengths.logNormal(OUTPUT.median, OUTPUT.sigma), OUTPUT.min, OUTPUT.max));
          }
          a += arrivals.exponential(1 / onRatePerMs);
        }
      }
      now = end;
      on = !on || meanOffMs === 0;
    }
  }
  return sortColumns(t, m, p, g, o.models, durationMs);
}

/**
 * A trace whose arrival times and token counts are an Azure LLM trace CSV's
 * (TIMESTAMP, ContextTokens, GeneratedTokens), times rebased to 0 and scaled by `timeScale`
 * (2: twice as fast), each request's model drawn by Zipf(zipfS) over `models`.
 */
export function traceFromAzureCsv(file: string, models: number, zipfS: number, timeScale: number, seed: number): Trace {
  const lines = readFileSync(file, 'utf8').split('\n');
  const header = lines[0]?.trim() ?? '';
  if (header !== 'TIMESTAMP,ContextTokens,GeneratedTokens') throw new RangeError(`${file}: not an Azure LLM inference trace (header ${JSON.stringify(header)})`);
  const cumulative = zipfCumulative(models, zipfS);
  const draws = new Draws(seed, 3);
  const t: number[] = [];
  const m: number[] = [];
  const p: number[] = [];
  const g: number[] = [];
  let first: number | null = null;
  for (const line of lines.slice(1)) {
    const [stamp, ctx, gen] = line.split(',');
    if (!stamp || ctx === undefined || gen === undefined) continue;
    const ms = Date.parse(`${stamp.trim().replace(' ', 'T').slice(0, 23)}Z`);
    if (Number.isNaN(ms)) throw new RangeError(`${file}: bad timestamp ${JSON.stringify(stamp)}`);
    first ??= ms;
    t.push((ms - first) / timeScale);
    m.push(draws.pick(cumulative));
    p.push(clampRound(Number(ctx), PROMPT.min, PROMPT.max));
    g.push(clampRound(Number(gen), OUTPUT.min, OUTPUT.max));
  }
  const durationMs = t.reduce((a, b) => Math.max(a, b), -1) + 1;
  return sortColumns(t, m, p, g, models, durationMs);
}
