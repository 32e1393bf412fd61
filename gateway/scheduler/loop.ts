// The one module that turns scheduling decisions into effects: it asks decide() what to do,
// starts LoadStage calls and waits for READY, then runs Generate on the chosen instance and
// streams its tokens. Clocks, timers and gRPC live here so decide() stays pure. A cold start's
// degree is forced by configuration (k byte-balanced stages from planStages) or, for a model
// with a TTFT SLO, chosen by decide() from the model's byte profile (read once per model from
// its checkpoint headers). A pipeline's stages load in parallel with every stage's address as
// peers, and Generate runs on stage 0, which drives the others (worker/daemon/pipeline.ts).
// Each request's path and phase times go to its RequestTracer (trace.ts).
import type { ClientReadableStream } from '@grpc/grpc-js';
import { status as GrpcStatus } from '@grpc/grpc-js';
import type { FastifyBaseLogger } from 'fastify';
import type { GenerateEvent__Output } from '../../protos/generated/paraserve/v1/GenerateEvent.js';
import type { LoadProgress__Output } from '../../protos/generated/paraserve/v1/LoadProgress.js';
import type { ClusterState } from '../cluster/cluster-state.js';
import { isServiceError } from '../cluster/worker-channel.js';
import {
  ApiError,
  badRequest,
  clientClosed,
  gatewayTimeout,
  serviceUnavailable,
  workerFailed,
} from '../errors.js';
import type { ModelFileRecord } from '../registry/registry.js';
import { parseModelConfig } from '../../worker/models/config.js';
import { readCheckpointTensors } from '../../worker/models/safetensors.js';
import { openModelSource } from '../../worker/models/source.js';
import { planStages, stageByteProfile, stageBytes, type StageByteProfile } from '../../worker/models/stage-plan.js';
import type { WorkerChannel } from '../cluster/worker-channel.js';
import { decide } from './decide.js';
import { TraceStore, recordProgress, type LoadTrace, type RequestTrace, type RequestTracer, type StageLoadTrace } from './trace.js';
import type {
  ColdStartExplanation,
  ColdStartRequest,
  InFlightLoad,
  PlannedStage,
  ScheduleRequest,
  SchedulerAction,
  SchedulerState,
  StageRange,
} from './types.js';

/** What the loop needs to know of a model to load and run it. */
export interface LoadableModel {
  name: string;
  bytes: number;
  source: string;
  files: ModelFileRecord[];
  configJson: string;
  /** The whole model's range. */
  range: StageRange;
  /** KV cache capacity per sequence asked of the worker, in tokens. */
  maxContext: number;
  /** Registered TTFT SLO, ms; null: cold starts use one worker unless a degree is forced. */
  ttftSloMs: number | null;
}

export interface GenerationParams {
  /** Also the worker's request id (Cancel by id, logs). */
  requestId: string;
  promptTokenIds: number[];
  maxTokens: number;
  temperature: number;
  topP: number;
  seed: number | null;
  stopTokenIds: number[];
  /** Gateway clock when the HTTP request arrived: time to first token counts from here. */
  arrivalMs: number;
  /** Where the request's path and phase times go (from this loop's traces.start). */
  trace: RequestTracer;
}

export type GenerationEvent =
  | { kind: 'token'; id: number }
  | { kind: 'finish'; reason: 'stop' | 'length'; promptTokens: number; completionTokens: number };

/** Hooks for metrics; called by the loop as things happen. */
export interface LoopObserver {
  loadFinished(model: string, outcome: 'ok' | 'error', seconds: number): void;
  firstToken(model: string, seconds: number): void;
  tokenGenerated(model: string): void;
  /** A request ended (ok or not); its trace as it stands then. */
  requestTraced(trace: RequestTrace): void;
}

export interface LoopOptions {
  /** Deadline of each Generate call. */
  requestTimeoutMs: number;
  /** Deadline of each LoadStage call. */
  loadTimeoutMs: number;
  /** Cold starts load a pipeline of this many stages (capped at the model's layers); null or 1: whole models. */
  forcedPipelineDegree: number | null;
}

/** A load the gateway started: one stage, or every stage of a pipeline (same instance id). */
interface LoadEntry {
  loads: InFlightLoad[];
  done: Promise<void>;
  calls: ClientReadableStream<LoadProgress__Output>[];
  /** Why it has its shape, and each stage's phases as its worker reports them (shared by the traces of every request waiting on it). */
  coldStart: ColdStartExplanation;
  stages: StageLoadTrace[];
}

/** Largest degree the cold-start policy considers (capped again by layers and READY workers). */
export const MAX_COLD_START_DEGREE = 8;
/** Requests whose traces GET /admin/traces/:id still answers. */
export const TRACE_CAPACITY = 1000;

/** k stages balanced by bytes from the checkpoint's headers; null when k (capped) is 1. */
async function planPipeline(model: LoadableModel, k: number): Promise<PlannedStage[] | null> {
  const config = parseModelConfig(JSON.parse(model.configJson) as unknown);
  const degree = Math.min(k, config.numLayers);
  if (degree <= 1) return null;
  const tensors = await readCheckpointTensors(openModelSource(model.source));
  return planStages(tensors, config, degree).map((range) => ({ range, bytes: stageBytes(tensors, config, range) }));
}

async function profileOf(model: LoadableModel): Promise<StageByteProfile> {
  const config = parseModelConfig(JSON.parse(model.configJson) as unknown);
  return stageByteProfile(await readCheckpointTensors(openModelSource(model.source)), config);
}

/** Decisions per request before giving up (a load finishing counts as one). */
const MAX_DECISIONS = 4;
/** Generate attempts per request while no token has arrived yet. */
const MAX_GENERATE_ATTEMPTS = 3;
const UNLOAD_TIMEOUT_MS = 10_000;

function describe(e: unknown): string {
  if (isServiceError(e)) return e.details || e.message;
  return e instanceof Error ? e.message : String(e);
}

/** Whether a Generate that failed before its first token may be tried again elsewhere. */
function retryable(e: unknown): boolean {
  return isServiceError(e) && (e.code === GrpcStatus.UNAVAILABLE || e.code === GrpcStatus.NOT_FOUND);
}

function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(clientClosed());
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(clientClosed());
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

export class SchedulerLoop {
  private readonly loads = new Map<string, LoadEntry>();
  /** Stage plans per model and source (the headers do not change under a registered model). */
  private readonly plans = new Map<string, Promise<PlannedStage[] | null>>();
  /** Byte profiles per model and source, for the cold-start policy. */
  private readonly profiles = new Map<string, Promise<StageByteProfile>>();
  /** The last TRACE_CAPACITY requests' traces. */
  readonly traces = new TraceStore(TRACE_CAPACITY);
  private readonly active = new Map<string, number>();
  private readonly unsubscribe: () => void;
  /** Generate calls open on workers, cancelled by close(). */
  private readonly calls = new Set<ClientReadableStream<GenerateEvent__Output>>();
  /** generate() calls under way, and who waits for them all to end (drain). */
  private inflight = 0;
  private closed = false;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly cluster: ClusterState,
    private readonly observer: LoopObserver,
    private readonly log: FastifyBaseLogger,
    private readonly opts: LoopOptions,
  ) {
    this.unsubscribe = cluster.onChange(() => this.prune());
  }

  state(): SchedulerState {
    return {
      workers: this.cluster.views(),
      loads: [...this.loads.values()].flatMap((e) => e.loads),
      gatewayActive: this.active,
    };
  }

  /** Decides and performs until the model has an instance to run on; ApiError when it cannot. */
  async place(model: LoadableModel, signal: AbortSignal, trace: RequestTracer): Promise<{ workerId: string; instanceId: string }> {
    const pipeline = await abortable(this.pipelinePlan(model), signal);
    const coldStart = pipeline === null ? await abortable(this.coldStartRequest(model), signal) : null;
    const request: ScheduleRequest = { model: model.name, modelBytes: model.bytes, range: model.range, pipeline, coldStart };
    for (let i = 0; i < MAX_DECISIONS; i++) {
      if (signal.aborted) throw clientClosed();
      if (this.closed) throw serviceUnavailable('the gateway is shutting down', 'shutting_down');
      const action = decide(this.state(), request, Date.now());
      this.log.debug({ model: model.name, action }, 'scheduling decision');
      if (action.kind !== 'reject') trace.decided(action.reason);
      switch (action.kind) {
        case 'run-on':
          trace.placed(action.workerId, action.instanceId, this.degreeOf(action.workerId, action.instanceId), Date.now());
          return { workerId: action.workerId, instanceId: action.instanceId };
        case 'await-load': {
          const entry = this.loads.get(action.instanceId);
          if (entry) await this.waitOnLoad(entry, action.instanceId, true, signal, trace);
          break;
        }
        case 'load-then-run':
          await this.waitOnLoad(this.startLoad(model, action), action.instanceId, false, signal, trace);
          break;
        case 'load-pipeline-then-run':
          await this.waitOnLoad(this.startPipelineLoad(model, action), action.instanceId, false, signal, trace);
          break;
        case 'reject':
          trace.decided(`rejected: ${action.reason}`);
          throw serviceUnavailable(action.reason);
      }
    }
    throw serviceUnavailable(`could not place model '${model.name}' after ${MAX_DECISIONS} scheduling decisions`);
  }

  /** Waits for a load, telling the trace how long and what the load reports. */
  private async waitOnLoad(entry: LoadEntry, instanceId: string, joined: boolean, signal: AbortSignal, trace: RequestTracer): Promise<void> {
    const load: LoadTrace = { instanceId, joined, coldStart: entry.coldStart, stages: entry.stages };
    const started = Date.now();
    try {
      await abortable(entry.done, signal);
    } finally {
      trace.waitedOnLoad(load, Date.now() - started);
    }
  }

  /** Stage count of an instance as the worker's snapshot (or the gateway's own load) says. */
  private degreeOf(workerId: string, instanceId: string): number {
    const listed = this.cluster.view(workerId)?.instances.find((i) => i.instanceId === instanceId);
    return listed?.stage?.stageCount ?? this.loads.get(instanceId)?.loads.length ?? 1;
  }

  /**
   * Places the request and streams its tokens. Failures before the first token are retried on
   * a fresh decision; after it they end the stream with an ApiError. Aborting `signal` (client
   * gone) and leaving the iteration early (stop sequence) both cancel the worker's call.
   */
  async *generate(model: LoadableModel, params: GenerationParams, signal: AbortSignal): AsyncGenerator<GenerationEvent> {
    this.inflight += 1;
    let failure: string | null = null;
    try {
      yield* this.attempts(model, params, signal);
    } catch (e) {
      failure = describe(e);
      throw e;
    } finally {
      params.trace.end(Date.now(), failure);
      this.observer.requestTraced(params.trace.snapshot());
      this.inflight -= 1;
      if (this.inflight === 0) {
        for (const wake of this.idleWaiters.splice(0)) wake();
      }
    }
  }

  /** Resolves when no generate() is under way, or after timeoutMs, whichever comes first. */
  async drain(timeoutMs: number): Promise<void> {
    if (this.inflight === 0) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.idleWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  private async *attempts(model: LoadableModel, params: GenerationParams, signal: AbortSignal): AsyncGenerator<GenerationEvent> {
    for (let attempt = 1; ; attempt++) {
      const { workerId, instanceId } = await this.place(model, signal, params.trace);
      const channel = this.cluster.channel(workerId);
      if (!channel) {
        if (attempt < MAX_GENERATE_ATTEMPTS) continue;
        throw serviceUnavailable(`worker ${workerId} went away before the request could start`);
      }
      const call: ClientReadableStream<GenerateEvent__Output> = channel.generate(
        {
          requestId: params.requestId,
          instanceId,
          promptTokenIds: params.promptTokenIds,
          maxTokens: params.maxTokens,
          sampling: {
            temperature: params.temperature,
            topP: params.topP,
            ...(params.seed === null ? {} : { seed: params.seed }),
          },
          stopTokenIds: params.stopTokenIds,
        },
        this.opts.requestTimeoutMs,
      );
      // The iteration below sees errors; this listener keeps a status that arrives after it
      // stopped (cancel after a stop sequence) from becoming an unhandled 'error' event.
      call.on('error', () => undefined);
      const onAbort = (): void => call.cancel();
      signal.addEventListener('abort', onAbort, { once: true });
      this.calls.add(call);
      this.active.set(instanceId, (this.active.get(instanceId) ?? 0) + 1);
      let received = 0;
      let finished = false;
      try {
        for await (const ev of call as AsyncIterable<GenerateEvent__Output>) {
          if (ev.token) {
            if (received === 0) {
              this.observer.firstToken(model.name, (Date.now() - params.arrivalMs) / 1000);
              params.trace.firstToken(Date.now());
            }
            received += 1;
            this.observer.tokenGenerated(model.name);
            yield { kind: 'token', id: ev.token.id };
          } else if (ev.finish) {
            finished = true;
            if (ev.finish.reason === 'CANCELLED') {
              throw serviceUnavailable(`worker ${workerId} cancelled the request (it may be draining)`, 'worker_cancelled');
            }
            params.trace.finished(ev.finish.queueMs, ev.finish.prefillMs, ev.finish.decodeMs);
            yield {
              kind: 'finish',
              reason: ev.finish.reason === 'STOP' ? 'stop' : 'length',
              promptTokens: ev.finish.promptTokens,
              completionTokens: ev.finish.completionTokens,
            };
            return;
          }
        }
        throw workerFailed(`worker ${workerId} ended the token stream of ${instanceId} without finishing`);
      } catch (e) {
        if (e instanceof ApiError) throw e;
        if (signal.aborted) throw clientClosed();
        if (this.closed) throw serviceUnavailable('the gateway is shutting down', 'shutting_down');
        if (received === 0 && retryable(e) && attempt < MAX_GENERATE_ATTEMPTS) {
          this.log.warn({ worker: workerId, instanceId, err: describe(e), attempt }, 'generate failed before the first token; retrying');
          continue;
        }
        throw this.generateError(e, workerId, received);
      } finally {
        signal.removeEventListener('abort', onAbort);
        this.calls.delete(call);
        const n = (this.active.get(instanceId) ?? 1) - 1;
        if (n <= 0) this.active.delete(instanceId);
        else this.active.set(instanceId, n);
        if (!finished) call.cancel();
      }
    }
  }

  /** The stage plan for a pipelined cold start of the model, or null (whole model). */
  private pipelinePlan(model: LoadableModel): Promise<PlannedStage[] | null> {
    const k = this.opts.forcedPipelineDegree ?? 1;
    if (k <= 1) return Promise.resolve(null);
    const key = `${model.name}\n${model.source}`;
    let plan = this.plans.get(key);
    if (!plan) {
      plan = planPipeline(model, k).catch((e: unknown) => {
        this.plans.delete(key);
        throw serviceUnavailable(`cannot plan ${k} pipeline stages for model '${model.name}': ${describe(e)}`);
      });
      this.plans.set(key, plan);
    }
    return plan;
  }

  /**
   * What the cold-start policy needs of the model: its byte profile (read once per model and
   * source) and its SLO; null when it has no SLO or a degree is forced, 1 included (decide()
   * then keeps the configured shape). Headers that cannot be read leave the request to the
   * whole-model path, so a warm instance still serves while storage is unreachable.
   */
  private async coldStartRequest(model: LoadableModel): Promise<ColdStartRequest | null> {
    if (model.ttftSloMs === null || this.opts.forcedPipelineDegree !== null) return null;
    const key = `${model.name}\n${model.source}`;
    let profile = this.profiles.get(key);
    if (!profile) {
      profile = profileOf(model);
      this.profiles.set(key, profile);
    }
    try {
      return { profile: await profile, ttftSloMs: model.ttftSloMs, maxDegree: MAX_COLD_START_DEGREE };
    } catch (e) {
      if (this.profiles.get(key) === profile) this.profiles.delete(key);
      this.log.warn({ model: model.name, err: describe(e) }, 'cannot read the checkpoint headers to plan a cold start; one whole-model worker instead');
      return null;
    }
  }

  /** Best effort: asks every worker holding the model to drop it; loads under way are cancelled. */
  unloadModel(name: string): void {
    for (const cache of [this.plans, this.profiles]) {
      for (const key of cache.keys()) {
        if (key.startsWith(`${name}\n`)) cache.delete(key);
      }
    }
    for (const entry of this.loads.values()) {
      if (entry.loads[0]?.model === name) for (const call of entry.calls) call.cancel();
    }
    for (const w of this.cluster.views()) {
      const channel = this.cluster.channel(w.id);
      if (!channel) continue;
      for (const i of w.instances) {
        if (i.model !== name) continue;
        channel.unloadStage(i.instanceId, UNLOAD_TIMEOUT_MS).catch((e: unknown) => {
          this.log.warn({ worker: w.id, instanceId: i.instanceId, err: describe(e) }, 'unload failed');
        });
      }
    }
  }

  /** Cancels every load and generation under way (their requests fail with a clear error). */
  close(): void {
    this.closed = true;
    this.unsubscribe();
    for (const entry of this.loads.values()) for (const call of entry.calls) call.cancel();
    for (const call of this.calls) call.cancel();
  }

  private generateError(e: unknown, workerId: string, received: number): ApiError {
    const why = describe(e);
    if (!isServiceError(e)) return workerFailed(`worker ${workerId} failed: ${why}`);
    switch (e.code) {
      case GrpcStatus.DEADLINE_EXCEEDED:
        return gatewayTimeout(`the request did not finish within ${this.opts.requestTimeoutMs} ms`);
      case GrpcStatus.INVALID_ARGUMENT:
        return badRequest(`the worker rejected the request: ${why}`, null);
      case GrpcStatus.RESOURCE_EXHAUSTED:
        return serviceUnavailable(`worker ${workerId} is out of capacity: ${why}`, 'worker_busy');
      case GrpcStatus.UNAVAILABLE:
        return received === 0
          ? serviceUnavailable(`worker ${workerId} is unavailable: ${why}`)
          : workerFailed(`worker ${workerId} failed mid-request after ${received} token(s): ${why}`);
      default:
        return workerFailed(`worker ${workerId} failed after ${received} token(s): ${why}`);
    }
  }

  private startLoad(model: LoadableModel, action: Extract<SchedulerAction, { kind: 'load-then-run' }>): LoadEntry {
    const channel = this.cluster.channel(action.workerId);
    if (!channel) throw serviceUnavailable(`worker ${action.workerId} went away before loading could start`);
    const load: InFlightLoad = {
      instanceId: action.instanceId,
      model: model.name,
      workerId: action.workerId,
      device: action.device,
      bytes: action.bytes,
      startedMs: action.startedMs,
      status: 'loading',
      pipelineStage: null,
    };
    this.log.info({ model: model.name, reason: action.reason }, 'loading model');
    const call = channel.loadStage(
      {
        instanceId: action.instanceId,
        model: model.name,
        source: { uri: model.source, files: model.files },
        configJson: model.configJson,
        stage: { ...action.range, stageIndex: 0, stageCount: 1 },
        device: action.device,
        maxContext: model.maxContext,
        peers: [],
      },
      this.opts.loadTimeoutMs,
    );
    const stage: StageLoadTrace = { workerId: action.workerId, stageIndex: 0, spans: [], readyMs: null };
    return this.track(model, {
      loads: [load],
      calls: [call],
      done: this.loadSettled(call, `model '${model.name}' on worker ${action.workerId}`, stage),
      coldStart: action.coldStart,
      stages: [stage],
    });
  }

  /**
   * Starts LoadStage on every stage of a pipeline at once, each told all stages' addresses.
   * The entry is done when all are READY; if one fails, the others are cancelled and the
   * stages that did load are unloaded (best effort), so no half pipeline stays behind.
   */
  private startPipelineLoad(model: LoadableModel, action: Extract<SchedulerAction, { kind: 'load-pipeline-then-run' }>): LoadEntry {
    const channels: WorkerChannel[] = [];
    for (const stage of action.stages) {
      const channel = this.cluster.channel(stage.workerId);
      if (!channel) throw serviceUnavailable(`worker ${stage.workerId} went away before loading could start`);
      channels.push(channel);
    }
    const count = action.stages.length;
    const peers = channels.map((c) => c.address);
    this.log.info({ model: model.name, reason: action.reason }, 'loading model as a pipeline');
    const loads: InFlightLoad[] = action.stages.map((stage, index) => ({
      instanceId: action.instanceId,
      model: model.name,
      workerId: stage.workerId,
      device: stage.device,
      bytes: stage.bytes,
      startedMs: action.startedMs,
      status: 'loading',
      pipelineStage: { index, count },
    }));
    const calls = action.stages.map((stage, index) =>
      channels[index]!.loadStage(
        {
          instanceId: action.instanceId,
          model: model.name,
          source: { uri: model.source, files: model.files },
          configJson: model.configJson,
          stage: { ...stage.range, stageIndex: index, stageCount: count },
          device: stage.device,
          maxContext: model.maxContext,
          peers,
        },
        this.opts.loadTimeoutMs,
      ),
    );
    const stages: StageLoadTrace[] = action.stages.map((s, stageIndex) => ({ workerId: s.workerId, stageIndex, spans: [], readyMs: null }));
    const settled = calls.map((call, index) =>
      this.loadSettled(call, `stage ${index} of model '${model.name}' on worker ${action.stages[index]!.workerId}`, stages[index]!),
    );
    const done = Promise.all(settled).then(
      () => undefined,
      (e: unknown) => {
        for (const call of calls) call.cancel();
        void Promise.allSettled(settled).then((outcomes) => {
          for (const [index, outcome] of outcomes.entries()) {
            if (outcome.status !== 'fulfilled') continue;
            channels[index]!.unloadStage(action.instanceId, UNLOAD_TIMEOUT_MS).catch((err: unknown) => {
              this.log.warn({ worker: action.stages[index]!.workerId, instanceId: action.instanceId, err: describe(err) }, 'unload failed');
            });
          }
        });
        throw e;
      },
    );
    return this.track(model, { loads, calls, done, coldStart: action.coldStart, stages });
  }

  /** Resolves when a LoadStage stream ended after READY; rejects with the ApiError to report. */
  private loadSettled(call: ClientReadableStream<LoadProgress__Output>, where: string, trace: StageLoadTrace): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let lastPhase = 'none';
      call.on('data', (p: LoadProgress__Output) => {
        lastPhase = p.phase;
        recordProgress(trace, p.phase, p.elapsedMs);
      });
      call.on('error', (e: unknown) => {
        if (isServiceError(e) && e.code === GrpcStatus.DEADLINE_EXCEEDED) {
          reject(gatewayTimeout(`loading ${where} did not finish within ${this.opts.loadTimeoutMs} ms`));
        } else if (isServiceError(e) && e.code === GrpcStatus.RESOURCE_EXHAUSTED) {
          reject(serviceUnavailable(`loading ${where} failed: ${describe(e)}`, 'worker_busy'));
        } else {
          reject(workerFailed(`loading ${where} failed: ${describe(e)}`));
        }
      });
      call.on('end', () => {
        if (lastPhase === 'READY') resolve();
        else reject(workerFailed(`loading ${where} ended before READY (last phase: ${lastPhase})`));
      });
    });
  }

  /** Registers a started load and follows it: READY marks it ready, a failure forgets it. */
  private track(model: LoadableModel, entry: LoadEntry): LoadEntry {
    const first = entry.loads[0]!;
    this.loads.set(first.instanceId, entry);
    entry.done.then(
      () => {
        for (const load of entry.loads) load.status = 'ready';
        this.observer.loadFinished(model.name, 'ok', (Date.now() - first.startedMs) / 1000);
        this.log.info({ instanceId: first.instanceId, ms: Date.now() - first.startedMs }, 'model loaded');
        this.prune();
      },
      (e: unknown) => {
        this.loads.delete(first.instanceId);
        this.observer.loadFinished(model.name, 'error', (Date.now() - first.startedMs) / 1000);
        this.log.warn({ instanceId: first.instanceId, err: describe(e) }, 'model load failed');
      },
    );
    return entry;
  }

  /** Forgets finished loads once the workers' snapshots show every stage settled (or a worker is gone). */
  private prune(): void {
    for (const [id, entry] of this.loads) {
      if (entry.loads.some((l) => l.status !== 'ready')) continue;
      const views = entry.loads.map((l) => this.cluster.view(l.workerId));
      const gone = views.some((w) => !w || w.state === 'DOWN');
      const settled = views.every((w) => w?.instances.some((i) => i.instanceId === id && i.residency !== 'LOADING') ?? false);
      if (gone || settled) this.loads.delete(id);
    }
  }
}
