// Per-request explanation (issue 4, point 8): the path a request took — warm on an instance, or
// a cold start of degree k on named workers with its predicted TTFT and SLO — and the time of
// each phase: queue, load (fetch, copy, init as the workers' LoadProgress streams report them),
// time to first token, and the worker's prefill and decode. The loop records into a
// RequestTracer; finished traces stay in a bounded TraceStore for GET /admin/traces/:id, and
// the header formatters below turn one into `x-paraserve-path` and `x-paraserve-timing`.
// A load that died with its worker and was re-placed stays in `loads` and is named, with why,
// in `failedAttempts` (its decision and the re-placement are in `decisions`).
// GPU sharing (issue 5): a request served by swapping its model in from a host cache (or moving
// it between GPUs) has the path `swap`, the swap-ins it waited on in `swaps` (with the copies
// evicted to make room) and their time as the `swap_in` phase; one that waited for a busy
// instance's batch slot is `warm` with `waited`. Waiting in the gateway's queue for room or a
// slot is part of `queue`.
import type { LoadProgress__Output } from '../../protos/generated/paraserve/v1/LoadProgress.js';
import type { ColdStartExplanation } from './types.js';

export type LoadPhaseName = 'FETCH' | 'COPY' | 'INIT';

/** One stretch of a load phase, ms since the worker received the LoadStage call. */
export interface PhaseSpan {
  phase: LoadPhaseName;
  startMs: number;
  endMs: number;
}

/** One stage's load as its worker reported it. */
export interface StageLoadTrace {
  workerId: string;
  stageIndex: number;
  /** In the order the worker reported them; a phase reported in several stretches appears several times. */
  spans: PhaseSpan[];
  /** When the worker reported READY (ms since the call arrived); null until then. */
  readyMs: number | null;
  /**
   * Whether the stage's activations go to the next stage over a device link (NCCL) rather than
   * in gRPC messages, as its READY said; null until then.
   */
  linkToNext: boolean | null;
}

/** A load a request waited on (started by it or joined). */
export interface LoadTrace {
  instanceId: string;
  /** This request joined a load another request started. */
  joined: boolean;
  /** How the cold start was shaped and why. */
  coldStart: ColdStartExplanation;
  stages: StageLoadTrace[];
}

/** A swap-in (or move between GPUs) a request waited on (started by it or joined). */
export interface SwapTrace {
  /** 'swap-in': from HOST_ONLY onto a device; 'move': a resident instance to another device. */
  kind: 'swap-in' | 'move';
  instanceId: string;
  workerId: string;
  /** Device it landed on; null until it did. */
  device: number | null;
  /** 'host': from the worker's host cache; 'peer': moved from another GPU of the worker. */
  source: 'host' | 'peer';
  /** This request joined a swap another request started. */
  joined: boolean;
  /** Instances swapped out first to make room. */
  evicted: string[];
  /** The worker's own figures (SwapReply); null until it answered. */
  workerMs: number | null;
  bytes: number | null;
  /** Why the policy chose it. */
  reason: string;
}

export type TracePath =
  | {
      kind: 'warm';
      instanceId: string;
      workerId: string;
      degree: number;
      /** The instance is the whole-model instance that consolidated a pipeline. */
      consolidated: boolean;
      /** The request waited in the gateway's queue for a batch slot of a busy instance. */
      waited: boolean;
    }
  | {
      kind: 'swap';
      instanceId: string;
      workerId: string;
      /** Where the copy came from (the last swap waited on). */
      source: 'host' | 'peer';
      /** The model was moved from another GPU of the worker. */
      moved: boolean;
      joined: boolean;
      /** Instances swapped out to make room. */
      evicted: string[];
    }
  | {
      kind: 'cold';
      instanceId: string;
      /** Worker the request ran on (stage 0's for a pipeline). */
      workerId: string;
      degree: number;
      /** Worker of each stage, in pipeline order. */
      workers: string[];
      joined: boolean;
      predictedTtftMs: number | null;
      sloMs: number | null;
      reason: string;
      note: string | null;
    };

/** Phase times, ms; null where the phase did not happen or is not known (yet). */
export interface TraceTimings {
  /** From arrival until an instance was runnable, less the time spent waiting on loads. */
  queueMs: number | null;
  /** Waiting on loads (this request's own or one it joined). */
  loadMs: number | null;
  /** Waiting on swap-ins or moves, the swap-outs that made room for them included. */
  swapMs: number | null;
  /** Longest of each load phase over the stages of the load waited on. */
  fetchMs: number | null;
  copyMs: number | null;
  initMs: number | null;
  /** From arrival to the first token as the gateway saw it. */
  firstTokenMs: number | null;
  /** Waiting on the worker before prefill (its FinishEvent). */
  workerQueueMs: number | null;
  /** The worker's prefill and decode (its FinishEvent). */
  prefillMs: number | null;
  decodeMs: number | null;
  /** From arrival to the end of generation. */
  totalMs: number | null;
}

/** A load the request waited on that failed because its worker died or became unreachable. */
export interface FailedAttempt {
  instanceId: string;
  workerId: string;
  reason: string;
  /** Gateway clock when the failure reached the request. */
  atMs: number;
}

export interface RequestTrace {
  requestId: string;
  model: string;
  /** Gateway clock of arrival, ms since the epoch. */
  arrivalMs: number;
  status: 'running' | 'ok' | 'error';
  /** Why it failed; null unless status is 'error'. */
  error: string | null;
  /** null until an instance was chosen to run on. */
  path: TracePath | null;
  /** Every scheduling decision's reason, in order. */
  decisions: string[];
  /** Loads waited on, in order. */
  loads: LoadTrace[];
  /** Loads that died with their worker before the request was placed, in order. */
  failedAttempts: FailedAttempt[];
  /** Swap-ins and moves waited on, in order. */
  swaps: SwapTrace[];
  timings: TraceTimings;
}

/**
 * Folds one LoadProgress report into a stage's spans: one span per phase, from its first
 * report to its last. Workers overlap fetch, init and copy, so reports of different phases
 * interleave and a phase does not end where another reports.
 */
export function recordProgress(stage: StageLoadTrace, progress: Pick<LoadProgress__Output, 'phase' | 'elapsedMs' | 'linkToNext'>): void {
  const { phase, elapsedMs } = progress;
  if (phase === 'READY') {
    stage.readyMs = elapsedMs;
    stage.linkToNext = progress.linkToNext;
    return;
  }
  if (phase !== 'FETCH' && phase !== 'COPY' && phase !== 'INIT') return;
  const span = stage.spans.find((s) => s.phase === phase);
  if (span) span.endMs = Math.max(span.endMs, elapsedMs);
  else stage.spans.push({ phase, startMs: elapsedMs, endMs: elapsedMs });
}

/** Total time of one phase in a stage's spans. */
export function phaseMs(stage: StageLoadTrace, phase: LoadPhaseName): number | null {
  const spans = stage.spans.filter((s) => s.phase === phase);
  return spans.length === 0 ? null : spans.reduce((sum, s) => sum + (s.endMs - s.startMs), 0);
}

function longest(values: (number | null)[]): number | null {
  const known = values.filter((v): v is number => v !== null);
  return known.length === 0 ? null : Math.max(...known);
}

/** Records one request's way through the loop; the loop calls it as things happen. */
export class RequestTracer {
  private readonly trace: RequestTrace;
  private loadWaitMs = 0;
  private swapWaitMs = 0;
  private waitedForSlot = false;

  constructor(requestId: string, model: string, arrivalMs: number) {
    this.trace = {
      requestId,
      model,
      arrivalMs,
      status: 'running',
      error: null,
      path: null,
      decisions: [],
      loads: [],
      failedAttempts: [],
      swaps: [],
      timings: {
        queueMs: null,
        loadMs: null,
        swapMs: null,
        fetchMs: null,
        copyMs: null,
        initMs: null,
        firstTokenMs: null,
        workerQueueMs: null,
        prefillMs: null,
        decodeMs: null,
        totalMs: null,
      },
    };
  }

  get requestId(): string {
    return this.trace.requestId;
  }

  decided(reason: string): void {
    this.trace.decisions.push(reason);
  }

  /** The request waited `waitedMs` on a load (its stages keep filling in as reports arrive). */
  waitedOnLoad(load: LoadTrace, waitedMs: number): void {
    if (!this.trace.loads.includes(load)) this.trace.loads.push(load);
    this.loadWaitMs += waitedMs;
  }

  /** The request waited `waitedMs` on a swap-in or move (its entry fills in when the worker answers). */
  waitedOnSwap(swap: SwapTrace, waitedMs: number): void {
    if (!this.trace.swaps.includes(swap)) this.trace.swaps.push(swap);
    this.swapWaitMs += waitedMs;
  }

  /** The request waited for a batch slot of a busy instance. */
  waitedForInstance(): void {
    this.waitedForSlot = true;
  }

  /** A load the request waited on died with its worker (`reason` says how). */
  attemptFailed(attempt: FailedAttempt): void {
    this.trace.failedAttempts.push(attempt);
  }

  /**
   * An instance was chosen to run on at `nowMs`; `degree` is its stage count; `consolidated`:
   * it is the whole-model instance that took over from a pipeline.
   */
  placed(workerId: string, instanceId: string, degree: number, nowMs: number, consolidated: boolean): void {
    const load = this.trace.loads.find((l) => l.instanceId === instanceId) ?? this.trace.loads[this.trace.loads.length - 1];
    const swap = this.trace.swaps.findLast((s) => s.instanceId === instanceId);
    this.trace.path =
      swap !== undefined
        ? {
            kind: 'swap',
            instanceId,
            workerId,
            source: swap.source,
            moved: swap.kind === 'move',
            joined: swap.joined,
            evicted: this.trace.swaps.flatMap((s) => s.evicted),
          }
        : load === undefined
        ? { kind: 'warm', instanceId, workerId, degree, consolidated, waited: this.waitedForSlot }
        : {
            kind: 'cold',
            instanceId,
            workerId,
            degree: load.coldStart.degree,
            workers: load.coldStart.workers,
            joined: load.joined,
            predictedTtftMs: load.coldStart.prediction?.totalMs ?? null,
            sloMs: load.coldStart.sloMs,
            reason: load.coldStart.reason,
            note: load.coldStart.note,
          };
    const t = this.trace.timings;
    t.queueMs = Math.max(0, nowMs - this.trace.arrivalMs - this.loadWaitMs - this.swapWaitMs);
    t.loadMs = this.trace.loads.length === 0 ? null : this.loadWaitMs;
    t.swapMs = this.trace.swaps.length === 0 ? null : this.swapWaitMs;
  }

  firstToken(nowMs: number): void {
    this.trace.timings.firstTokenMs ??= nowMs - this.trace.arrivalMs;
  }

  /** The worker's FinishEvent figures. */
  finished(workerQueueMs: number, prefillMs: number, decodeMs: number): void {
    const t = this.trace.timings;
    t.workerQueueMs = workerQueueMs;
    t.prefillMs = prefillMs;
    t.decodeMs = decodeMs;
  }

  end(nowMs: number, error: string | null): void {
    this.trace.status = error === null ? 'ok' : 'error';
    this.trace.error = error;
    this.trace.timings.totalMs = nowMs - this.trace.arrivalMs;
  }

  /** A copy of the trace as it stands, load phases summarised from the stages' reports. */
  snapshot(): RequestTrace {
    const copy = structuredClone(this.trace);
    const stages = copy.loads.flatMap((l) => l.stages);
    copy.timings.fetchMs = longest(stages.map((s) => phaseMs(s, 'FETCH')));
    copy.timings.copyMs = longest(stages.map((s) => phaseMs(s, 'COPY')));
    copy.timings.initMs = longest(stages.map((s) => phaseMs(s, 'INIT')));
    return copy;
  }
}

/** The last `capacity` requests' tracers, by request id. */
export class TraceStore {
  private readonly tracers = new Map<string, RequestTracer>();

  constructor(readonly capacity: number) {}

  start(requestId: string, model: string, arrivalMs: number): RequestTracer {
    const tracer = new RequestTracer(requestId, model, arrivalMs);
    this.tracers.delete(requestId);
    this.tracers.set(requestId, tracer);
    while (this.tracers.size > this.capacity) {
      const oldest = this.tracers.keys().next();
      if (oldest.done === true) break;
      this.tracers.delete(oldest.value);
    }
    return tracer;
  }

  get(requestId: string): RequestTrace | null {
    return this.tracers.get(requestId)?.snapshot() ?? null;
  }
}

/** Keeps a header parameter to visible ASCII without separators: others are percent-encoded. */
function token(value: string): string {
  return value.replace(/[^A-Za-z0-9._:@#/+-]/g, (c) => encodeURIComponent(c));
}

/**
 * `warm;k=1;instance=m@w0#0;worker=w0[;consolidated][;waited]`,
 * `swap;from=host|peer;instance=…;worker=w0[;moved][;joined][;evicted=a,b]` or
 * `cold;k=2;workers=w0,w1;instance=…[;links=1/1];predicted_ms=…;slo_ms=…` (links: the hops whose
 * activations go over a device link, of the pipeline's k − 1, once every stage is READY).
 */
export function pathHeader(trace: RequestTrace): string | null {
  const p = trace.path;
  if (p === null) return null;
  if (p.kind === 'warm') {
    return `warm;k=${p.degree};instance=${token(p.instanceId)};worker=${token(p.workerId)}${p.consolidated ? ';consolidated' : ''}${p.waited ? ';waited' : ''}`;
  }
  if (p.kind === 'swap') {
    const parts = ['swap', `from=${p.source}`, `instance=${token(p.instanceId)}`, `worker=${token(p.workerId)}`];
    if (p.moved) parts.push('moved');
    if (p.joined) parts.push('joined');
    if (p.evicted.length > 0) parts.push(`evicted=${p.evicted.map(token).join(',')}`);
    return parts.join(';');
  }
  const parts = [`cold`, `k=${p.degree}`, `workers=${p.workers.map(token).join(',')}`, `instance=${token(p.instanceId)}`];
  if (p.joined) parts.push('joined');
  const stages = trace.loads.find((l) => l.instanceId === p.instanceId)?.stages ?? [];
  if (p.degree > 1 && stages.length === p.degree && stages.every((s) => s.linkToNext !== null)) {
    parts.push(`links=${stages.filter((s) => s.linkToNext === true).length}/${p.degree - 1}`);
  }
  if (p.predictedTtftMs !== null) parts.push(`predicted_ms=${Math.round(p.predictedTtftMs)}`);
  if (p.sloMs !== null) parts.push(`slo_ms=${p.sloMs}`);
  return parts.join(';');
}

/** The phases of a request by name, in the order they happen (headers and metrics use these names). */
export function namedPhases(t: RequestTrace['timings']): [string, number | null][] {
  return [
    ['queue', t.queueMs],
    ['swap_in', t.swapMs],
    ['load', t.loadMs],
    ['fetch', t.fetchMs],
    ['copy', t.copyMs],
    ['init', t.initMs],
    ['first_token', t.firstTokenMs],
    ['prefill', t.prefillMs],
    ['decode', t.decodeMs],
  ];
}

/**
 * Server-Timing style: `queue;dur=1.2, swap_in;dur=40, load;dur=230, fetch;dur=…, …`.
 * `upToFirstToken` keeps what is known when a stream's headers go out (queue, swap-in, load
 * and its phases, first token).
 */
export function timingHeader(trace: RequestTrace, upToFirstToken: boolean): string {
  const phases = namedPhases(trace.timings);
  // Known when a stream's headers go out: the phases up to the first token.
  const all = upToFirstToken ? phases.slice(0, phases.findIndex(([name]) => name === 'first_token') + 1) : [...phases, ['total', trace.timings.totalMs] as [string, number | null]];
  return all
    .filter((e): e is [string, number] => e[1] !== null)
    .map(([name, ms]) => `${name};dur=${Math.round(ms * 10) / 10}`)
    .join(', ');
}
