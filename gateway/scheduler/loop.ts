// The one module that turns scheduling decisions into effects: it asks decide() what to do,
// starts LoadStage calls and waits for READY, then runs Generate on the chosen instance and
// streams its tokens. Clocks, timers and gRPC live here so decide() stays pure. A cold start's
// degree is forced by configuration (k byte-balanced stages from planStages) or, for a model
// with a TTFT SLO, chosen by decide() from the model's byte profile (read once per model from
// its checkpoint headers). A pipeline's stages load in parallel with every stage's address as
// peers, and Generate runs on stage 0, which drives the others (worker/daemon/pipeline.ts).
// Each LoadStage carries its stage's tensor layout once the headers were read (registration
// reads them), so the worker fetches at once, and the prompt length of the request that
// started the load, so its runtime init warms the stage up for that shape.
// Each request's path and phase times go to its RequestTracer (trace.ts).
// Consolidation (opts.consolidate): once a pipeline answers READY, the model is loaded whole in
// the background on the worker decide.ts chooseConsolidationTarget picks (stage 0's when it has
// room): that worker copies its own stage's layers from host memory and fetches the rest. The
// pipeline serves until that load is READY; then decide() prefers the whole-model instance, the
// pipeline is hidden from new decisions (retired) and, once its last in-flight request ends, its
// group dissolves: members swap their stages out and keep the host copies, which later loads of
// the model on those workers copy instead of fetching (see dissolve()). Requests on the consolidated
// instance are traced warm with a `consolidated` marker; the time from the pipeline's READY to
// the whole model's goes to the log and paraserve_consolidation_seconds. The whole-model load
// starts once every request that waited on the pipeline has its first token (or ended), so it
// does not compete with their prefill (LoadEntry.prefilling).
// GPU sharing (issue 5; ARCHITECTURE.md "GPU sharing"): every request is admitted to its model's
// bounded queue (swap-policy.ts admit; full → 429 with Retry-After) and leaves it when it is
// placed. A whole-model request is routed by swap-policy.ts routeRequest over the view
// sharing.ts builds: run on an instance with a free batch slot (the slot is reserved at once, so
// the next decision sees it taken); wait for a busy instance, a swap-in or a load under way; swap
// the model in from a worker's host cache or move it between GPUs (SwapIn, after SwapOut of the
// idle copies the policy evicts); or make room and cold-start through decide(). Requests waiting
// for a slot or for room sleep until something changes (a request ends, a swap or load settles,
// a snapshot arrives) and are woken least slack first (nextRequest), each deciding again in that
// order. Keep-alive: expireIdle runs after every change and on a timer armed for the next expiry;
// idle GPU copies are swapped out, then idle host copies unloaded (scale to zero). A swap-out or
// unload counts from the worker's answer until its snapshot shows it, so no decision runs on a
// copy that is leaving.
// Faults during a cold start: a load (whole model or any stage) whose worker dies or becomes
// unreachable (LoadStage fails UNAVAILABLE, or the event stream marks the worker DOWN, which
// cancels the load) is re-placed for every request waiting on it — decide() again over a state
// where that worker counts DOWN (its stream may not have ended yet), at most MAX_REPLACEMENTS
// times and only while the request's deadline (arrival + requestTimeoutMs) leaves time; a
// re-placed load is waited on no longer than that deadline. Otherwise the request gets a 503
// naming the worker and the reason. Errors that are the model's or the request's fault
// (INVALID_ARGUMENT, DATA_LOSS, NOT_FOUND, …) are never re-placed.
import type { ClientReadableStream } from '@grpc/grpc-js';
import { status as GrpcStatus } from '@grpc/grpc-js';
import { setTimeout as delay } from 'node:timers/promises';
import type { FastifyBaseLogger } from 'fastify';
import type { GenerateEvent__Output } from '../../protos/generated/paraserve/v1/GenerateEvent.js';
import type { LoadProgress__Output } from '../../protos/generated/paraserve/v1/LoadProgress.js';
import type { ClusterState } from '../cluster/cluster-state.js';
import type { WorkerStateName } from '../cluster/worker-view.js';
import { isServiceError } from '../cluster/worker-channel.js';
import {
  ApiError,
  badRequest,
  clientClosed,
  gatewayTimeout,
  queueFull,
  serviceUnavailable,
  workerFailed,
} from '../errors.js';
import type { ModelFileRecord } from '../registry/registry.js';
import { parseModelConfig } from '../../worker/models/config.js';
import { layoutOf, readCheckpointTensors, type TensorInfo, type TensorLayoutEntry } from '../../worker/models/safetensors.js';
import { openModelSource } from '../../worker/models/source.js';
import { planStages, planStageTensors, stageByteProfile, stageBytes, type StageByteProfile } from '../../worker/models/stage-plan.js';
import { untilAborted } from '../../worker/daemon/until-aborted.js';
import type { WorkerChannel } from '../cluster/worker-channel.js';
import { COLD_START_DEFAULTS } from './coldstart.js';
import { chooseConsolidationTarget, decide, withoutInstances, withoutWorkers } from './decide.js';
import { hostInstanceOf, pipelineActive, swapModelOf, swapServers, wholeModel, type InFlightSwap, type SharingDefaults } from './sharing.js';
import {
  admit,
  buildSwapView,
  emptyQueue,
  expireIdle,
  nextRequest,
  routeRequest,
  SWAP_DEFAULTS,
  type Eviction,
  type ModelQueue,
  type QueuedRequest,
  type RouteDecision,
  type SwapFigures,
  type SwapModel,
  type SwapServer,
} from './swap-policy.js';
import {
  TraceStore,
  recordProgress,
  type LoadTrace,
  type RequestTrace,
  type RequestTracer,
  type StageLoadTrace,
  type SwapTrace,
} from './trace.js';
import type {
  ColdStartExplanation,
  ColdStartRequest,
  ConsolidationRequest,
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
  /** Weights (parameters) of the model: what its device footprint is estimated from before one was seen. */
  parameters: number;
  /** Registered keep-alives, ms; null: the loop's defaults. */
  gpuKeepAliveMs: number | null;
  hostKeepAliveMs: number | null;
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
  /** A pipeline's whole-model instance answered READY `seconds` after the pipeline did. */
  consolidated(model: string, seconds: number): void;
  /** `waiting` requests of the model are queued (admitted, not placed yet). */
  queued(model: string, waiting: number): void;
  /** A SwapIn ('in') or SwapOut ('out') the gateway asked for ended after `seconds`. */
  swapped(model: string, kind: 'in' | 'out', outcome: 'ok' | 'error', seconds: number): void;
}

export interface LoopOptions {
  /** Deadline of each Generate call. */
  requestTimeoutMs: number;
  /** Deadline of each LoadStage call. */
  loadTimeoutMs: number;
  /** Cold starts load a pipeline of this many stages (capped at the model's layers); null or 1: whole models. */
  forcedPipelineDegree: number | null;
  /** Load a serving pipeline's model whole in the background, then dissolve the pipeline. */
  consolidate: boolean;
  /** Requests each model's queue holds (waiting to be placed) before answering 429. */
  queueCapacity: number;
  /** Per-model values where the registry has none, and the batch capacity of an instance. */
  sharing: SharingDefaults;
  /** Swap host-cached models in; false: models that left the GPU start cold (a no-swapping baseline). */
  swapping: boolean;
}

/** A checkpoint's tensors by name, as its safetensors headers describe them. */
type CheckpointTensors = Map<string, TensorInfo>;

/** A model's checkpoint tensors being read, and once read (null until then). */
interface CheckpointEntry {
  reading: Promise<CheckpointTensors>;
  read: CheckpointTensors | null;
}

/** A load the gateway started: one stage, or every stage of a pipeline (same instance id). */
interface LoadEntry {
  loads: InFlightLoad[];
  done: Promise<void>;
  /** The LoadStage calls; a pipeline's start once its link ids are in. */
  calls: ClientReadableStream<LoadProgress__Output>[];
  /** Set when the load was called off: calls not started yet never start. */
  cancelled: boolean;
  /** Why it has its shape, and each stage's phases as its worker reports them (shared by the traces of every request waiting on it). */
  coldStart: ColdStartExplanation;
  stages: StageLoadTrace[];
  /**
   * Requests that waited on this pipeline's load and have neither had their first token nor
   * ended. Its consolidation starts once none is left: the whole-model load's fetch, host
   * allocation and runtime init run on stage 0's worker, which those requests' prefill needs.
   */
  prefilling: Set<string>;
  /** The consolidation waiting for `prefilling` to empty; null when none waits. */
  afterPrefill: (() => void) | null;
}

/** Calls a load off: its calls are cancelled, and those not started yet never start. */
function cancelLoad(entry: LoadEntry): void {
  entry.cancelled = true;
  for (const call of entry.calls) call.cancel();
}

/** How long a pipeline's start waits for a worker to make a device link id. */
const LINK_ID_TIMEOUT_MS = 5_000;

/** Largest degree the cold-start policy considers (capped again by layers and READY workers). */
export const MAX_COLD_START_DEGREE = 8;
/** Requests whose traces GET /admin/traces/:id still answers. */
export const TRACE_CAPACITY = 1000;

/** What the loop's per-model caches are keyed by: a model's headers do not change under its name and source. */
const modelKey = (model: LoadableModel): string => `${model.name}\n${model.source}`;

/** k stages balanced by bytes from the checkpoint's headers; null when k (capped) is 1. */
async function planPipeline(model: LoadableModel, k: number, checkpoint: () => Promise<CheckpointTensors>): Promise<PlannedStage[] | null> {
  const config = parseModelConfig(JSON.parse(model.configJson) as unknown);
  const degree = Math.min(k, config.numLayers);
  if (degree <= 1) return null;
  const tensors = await checkpoint();
  return planStages(tensors, config, degree).map((range) => ({ range, bytes: stageBytes(tensors, config, range) }));
}

async function profileOf(model: LoadableModel, checkpoint: Promise<CheckpointTensors>): Promise<StageByteProfile> {
  const config = parseModelConfig(JSON.parse(model.configJson) as unknown);
  return stageByteProfile(await checkpoint, config);
}

/** A swap-in or move that failed: `error` is what a request gets once it has failed too often. */
class SwapFailedError extends Error {
  override readonly name = 'SwapFailedError';

  constructor(readonly error: ApiError) {
    super(error.message);
  }
}

/** A swap-in or move under way (or answered, until the snapshot shows it), shared by every request waiting on it. */
interface SwapEntry {
  swap: InFlightSwap;
  trace: SwapTrace;
  /** Resolves when the worker answered; rejects with a SwapFailedError. */
  done: Promise<void>;
}

/** A swap-out or unload the gateway asked for, until the worker's snapshot shows it done. */
interface LeavingEntry {
  kind: 'swap-out' | 'unload';
  model: string;
  workerId: string;
  answered: boolean;
  /** Resolves once the copy is gone from where it was (or the call failed). */
  confirmed: Promise<void>;
  confirm: () => void;
}

/** One request's way through the swap policy, across its decisions. */
interface RoutingProgress {
  /** Swap-ins or moves it needed that failed. */
  swapFailures: number;
  /** What its last step slept for (a batch slot, room); null when it did not: a repeated sleep is traced once. */
  asleep: 'slot' | 'room' | null;
}

/** Swap-ins of one request that may fail before it gives up. */
const MAX_SWAP_FAILURES = 3;
/** A request's duration, ms, predicted for a model before one has finished. */
const DEFAULT_SERVICE_MS = 1_000;
const NOBODY_BLOCKED: ReadonlySet<string> = new Set();

/** Decisions per request before giving up (a load finishing counts as one). */
const MAX_DECISIONS = 4;
/** Times a request's load is re-placed after its worker died or became unreachable. */
export const MAX_REPLACEMENTS = 2;
/** A request is re-placed only while its deadline is at least this far away. */
export const MIN_REPLACE_MS = 200;
/** Loads a worker refused for lack of room that a request retries, each after a longer pause. */
const MAX_ROOM_RETRIES = 5;
const ROOM_RETRY_DELAY_MS = 25;
/** Generate attempts per request while no token has arrived yet. */
const MAX_GENERATE_ATTEMPTS = 3;
const UNLOAD_TIMEOUT_MS = 10_000;

function describe(e: unknown): string {
  if (isServiceError(e)) return e.details || e.message;
  return e instanceof Error ? e.message : String(e);
}

/**
 * Whether a load that failed with gRPC status `code` (null: its stream ended before READY)
 * died with its worker: 'lost' once the worker is DOWN or forgotten (its event stream saw it
 * go); 'confirm' for UNAVAILABLE while it still looks up — a dropped connection, or the worker
 * saying its model store is unreachable: lost only if the event stream, which shares the
 * connection, breaks within LOST_CONFIRM_MS; 'own' for the load's own failure (the model's or
 * the request's fault, a full cache, a timeout), never re-placed.
 */
export function loadFailureKind(code: number | null, workerState: WorkerStateName | null): 'lost' | 'confirm' | 'own' {
  if (workerState === null || workerState === 'DOWN') return 'lost';
  return code === GrpcStatus.UNAVAILABLE ? 'confirm' : 'own';
}

/** How long an UNAVAILABLE load waits for its worker's event stream to confirm the loss. */
export const LOST_CONFIRM_MS = 2_000;

/** A load failed: `error` is what a request gets unless the load is re-placed (workerLost). */
class LoadFailedError extends Error {
  override readonly name = 'LoadFailedError';

  constructor(
    readonly error: ApiError,
    readonly workerId: string,
    readonly workerLost: boolean,
  ) {
    super(error.message);
  }
}

/**
 * Whether a Generate that failed before its first token may be tried again on a fresh decision:
 * the worker or the instance went away, or the instance is not on a device (any more).
 */
function retryable(e: unknown): boolean {
  return isServiceError(e) && (e.code === GrpcStatus.UNAVAILABLE || e.code === GrpcStatus.NOT_FOUND || e.code === GrpcStatus.FAILED_PRECONDITION);
}

export class SchedulerLoop {
  private readonly loads = new Map<string, LoadEntry>();
  /** Instances of failed or consolidated pipelines, hidden from decide() until no worker lists them. */
  private readonly retired = new Set<string>();
  /** Whole-model instances that consolidated a pipeline (the trace's `consolidated` marker). */
  private readonly consolidatedInstances = new Set<string>();
  /** Consolidated pipelines by instance id, unloaded once no request of the gateway runs on them. */
  /** Consolidated pipelines waiting for their last request to end, with the worker now holding the whole model. */
  private readonly dissolving = new Map<string, { pipeline: ConsolidationRequest; consolidatedOn: string }>();
  /** The pipeline loads each request waited on that hold their consolidation until its first token. */
  private readonly prefillHolds = new Map<string, Set<LoadEntry>>();
  /** Kept stage copies being dropped (keep-alive), as `worker/instance`. */
  private readonly droppingStages = new Set<string>();
  /** LoadStage calls cancelled because their worker went DOWN. */
  private readonly abandoned = new WeakSet<ClientReadableStream<LoadProgress__Output>>();
  /**
   * Checkpoint tensors per model and source, read once (or given by registration, which read
   * them); once read, LoadStage carries each stage's part, so workers need not read the headers.
   */
  private readonly checkpoints = new Map<string, CheckpointEntry>();
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
  /** Each model's queue of requests not placed yet. */
  private readonly queues = new Map<string, ModelQueue>();
  /** Wake-ups of requests waiting for a batch slot or for room, by request id. */
  private readonly sleepers = new Map<string, () => void>();
  /** Swap-ins and moves by instance id. */
  private readonly swaps = new Map<string, SwapEntry>();
  /** Swap-outs and unloads by instance id. */
  private readonly leaving = new Map<string, LeavingEntry>();
  /** When the gateway last started or ended a request on, saw, or landed each instance. */
  private readonly lastUsed = new Map<string, number>();
  /** Models requests came for, as the swap policy sees them (keep-alive applies to these). */
  private readonly models = new Map<string, SwapModel>();
  /** Bytes an instance of each model was seen holding on a device or in host memory (its footprint, KV cache included). */
  private readonly footprints = new Map<string, number>();
  /** Parameters of the models requests came for. */
  private readonly parameters = new Map<string, number>();
  /**
   * The most device bytes per parameter seen on any instance: a model not seen yet is estimated
   * at that (workers compute in f32 on CPU, the KV cache comes on top); 0 until one was seen.
   */
  private bytesPerParameter = 0;
  /** Mean request duration per model (placement to end), ms. */
  private readonly serviceMs = new Map<string, number>();
  private expiryTimer: NodeJS.Timeout | null = null;
  private expiryQueued = false;

  constructor(
    private readonly cluster: ClusterState,
    private readonly observer: LoopObserver,
    private readonly log: FastifyBaseLogger,
    private readonly opts: LoopOptions,
  ) {
    this.unsubscribe = cluster.onChange(() => this.prune());
  }

  state(): SchedulerState {
    return { workers: this.cluster.views(), loads: this.inFlightLoads(), gatewayActive: this.active };
  }

  /** Every stage load the gateway started and still tracks. */
  private inFlightLoads(): InFlightLoad[] {
    return [...this.loads.values()].flatMap((e) => e.loads);
  }

  /**
   * Decides and performs until the model has an instance to run on, and reserves a batch slot
   * on it (release() gives it back); ApiError when it cannot. Whole-model requests go through
   * the swap policy first (swapStep). A load that dies with its worker is re-placed without
   * that worker (see the file comment) while `deadlineMs` (gateway clock) leaves time.
   */
  async place(
    model: LoadableModel,
    queued: QueuedRequest,
    signal: AbortSignal,
    trace: RequestTracer,
    deadlineMs: number,
    promptTokens: number,
  ): Promise<{ workerId: string; instanceId: string }> {
    const pipeline = await untilAborted(this.pipelinePlan(model), signal, clientClosed);
    const coldStart = pipeline === null ? await untilAborted(this.coldStartRequest(model), signal, clientClosed) : null;
    const request: ScheduleRequest = { model: model.name, modelBytes: this.footprintOf(model), range: model.range, pipeline, coldStart };
    const excluded = new Set<string>();
    /** The last load that died with its worker; once set, waits end at the deadline. */
    let lost: LoadFailedError | null = null;
    let failures = 0;
    let roomRetries = 0;
    const bound = (): { atMs: number; error: () => ApiError } | null =>
      lost === null
        ? null
        : {
            atMs: deadlineMs,
            error: () => serviceUnavailable(`${lost?.message ?? ''}; the re-placed load did not finish before the request's deadline`, 'worker_lost'),
          };
    const routing: RoutingProgress = { swapFailures: 0, asleep: null };
    for (let i = 0; i < MAX_DECISIONS + MAX_REPLACEMENTS + MAX_ROOM_RETRIES; ) {
      if (signal.aborted) throw clientClosed();
      if (this.closed) throw serviceUnavailable('the gateway is shutting down', 'shutting_down');
      const routed = this.shares(request, excluded) ? await this.swapStep(model, request, queued, trace, signal, deadlineMs, routing) : null;
      if (routed === 'again') continue;
      i++;
      const action = routed ?? decide(withoutInstances(withoutWorkers(this.state(), excluded), this.retired), request, Date.now());
      this.log.debug({ model: model.name, action }, 'scheduling decision');
      if (action.kind !== 'reject') trace.decided(action.reason);
      try {
        switch (action.kind) {
          case 'run-on':
            trace.placed(
              action.workerId,
              action.instanceId,
              this.degreeOf(action.workerId, action.instanceId),
              Date.now(),
              this.consolidatedInstances.has(action.instanceId),
            );
            if (routed === null) this.reserve(action.instanceId); // swapStep reserved its own
            this.dequeue(model.name, queued.id);
            return { workerId: action.workerId, instanceId: action.instanceId };
          case 'await-load': {
            const entry = this.loads.get(action.instanceId);
            if (entry) await this.waitOnLoad(entry, action.instanceId, true, signal, trace, bound());
            break;
          }
          case 'load-then-run':
            await this.waitOnLoad(this.startLoad(model, action, [promptTokens]), action.instanceId, false, signal, trace, bound());
            break;
          case 'load-pipeline-then-run':
            await this.waitOnLoad(this.startPipelineLoad(model, action, [promptTokens]), action.instanceId, false, signal, trace, bound());
            break;
          case 'reject':
            trace.decided(`rejected: ${action.reason}`);
            throw lost === null
              ? serviceUnavailable(action.reason)
              : serviceUnavailable(`${lost.message}; re-placing the request failed: ${action.reason}`, 'worker_lost');
        }
      } catch (e) {
        if (!(e instanceof LoadFailedError)) throw e;
        if (!e.workerLost) {
          // The worker refused for lack of room: the gateway's view (evictions just made, what
          // other loads reserve) lagged the worker's own accounting. Decide again shortly.
          const leftMs = deadlineMs - Date.now();
          if (e.error.code !== 'worker_busy' || roomRetries >= MAX_ROOM_RETRIES || leftMs < MIN_REPLACE_MS) throw e.error;
          roomRetries += 1;
          trace.decided(`${e.message}; the worker had no room after all: deciding again (${roomRetries} of ${MAX_ROOM_RETRIES})`);
          await untilAborted(delay(ROOM_RETRY_DELAY_MS * roomRetries), signal, clientClosed);
          continue;
        }
        trace.attemptFailed({ instanceId: action.kind === 'reject' ? '' : action.instanceId, workerId: e.workerId, reason: e.message, atMs: Date.now() });
        failures += 1;
        const leftMs = deadlineMs - Date.now();
        if (failures > MAX_REPLACEMENTS) {
          trace.decided(`failed: ${e.message}; not re-placed: ${MAX_REPLACEMENTS} re-placements tried`);
          throw serviceUnavailable(`${e.message}; not re-placed: ${MAX_REPLACEMENTS} re-placements tried`, 'worker_lost');
        }
        if (leftMs < MIN_REPLACE_MS) {
          trace.decided(`failed: ${e.message}; not re-placed: the request's deadline is ${Math.max(0, leftMs)} ms away`);
          throw serviceUnavailable(`${e.message}; not re-placed: the request's deadline is ${Math.max(0, leftMs)} ms away`, 'worker_lost');
        }
        trace.decided(`failed: ${e.message}; re-placing without worker ${e.workerId}`);
        this.log.warn({ model: model.name, worker: e.workerId, err: e.message }, 'a load died with its worker; re-placing the request');
        excluded.add(e.workerId);
        lost = e;
      }
    }
    throw serviceUnavailable(`could not place model '${model.name}' after ${MAX_DECISIONS} scheduling decisions`);
  }

  /**
   * Whether the swap policy routes this request: a whole-model request (no forced pipeline) of a
   * model without an active pipeline (sharing.ts pipelineActive), not being re-placed after a
   * load died with its worker (decide() re-places those, as it always did).
   */
  private shares(request: ScheduleRequest, excluded: ReadonlySet<string>): boolean {
    if (request.pipeline !== null || excluded.size > 0) return false;
    return !pipelineActive(request.model, this.cluster.views(), this.inFlightLoads());
  }

  /**
   * One step of GPU-sharing routing (swap-policy.ts routeRequest): an action for place() to
   * perform ('run-on', or 'await-load' for a load of the gateway's), null to go on with decide()
   * (a cold start once room is made, or nothing in flight could make room: decide() then says
   * what is missing), or 'again' after waiting or swapping. Failed swaps count in `routing`.
   */
  private async swapStep(
    model: LoadableModel,
    request: ScheduleRequest,
    queued: QueuedRequest,
    trace: RequestTracer,
    signal: AbortSignal,
    deadlineMs: number,
    routing: RoutingProgress,
  ): Promise<SchedulerAction | 'again' | null> {
    const leavingCopies = [...this.leaving.values()].filter((e) => e.model === model.name);
    if (leavingCopies.length > 0) {
      await untilAborted(Promise.all(leavingCopies.map((e) => e.confirmed)), signal, clientClosed);
      return 'again';
    }
    const now = Date.now();
    const swapModel = this.swapModel(model, request);
    const route = routeRequest(buildSwapView(this.swapServers(now), this.queuedByModel()), swapModel, this.figures(request), now);
    this.predicted(model.name, route);
    this.log.debug({ model: model.name, requestId: queued.id, route: route.kind, reason: route.reason }, 'swap routing');
    const asleep = routing.asleep;
    routing.asleep = null;
    switch (route.kind) {
      case 'run':
        // Taken before this returns: place() goes on only after an await, and a request woken
        // with this one must see the slot gone.
        this.reserve(route.instanceId);
        return { kind: 'run-on', workerId: route.serverId, instanceId: route.instanceId, reason: route.reason };
      case 'wait': {
        if (this.loads.has(route.instanceId)) return { kind: 'await-load', workerId: route.serverId, instanceId: route.instanceId, reason: route.reason };
        const swap = this.swaps.get(route.instanceId);
        if (swap) {
          trace.decided(route.reason);
          await this.waitOnSwap(swap, true, trace, signal, deadlineMs, routing);
        } else {
          if (asleep !== 'slot') trace.decided(route.reason);
          trace.waitedForInstance();
          routing.asleep = 'slot';
          await this.sleep(queued.id, signal, deadlineMs);
        }
        return 'again';
      }
      case 'swap-in':
      case 'move': {
        trace.decided(route.reason);
        let entry: SwapEntry;
        try {
          entry = this.startSwap(model.name, swapModel.bytes, route);
        } catch (e) {
          if (!(e instanceof SwapFailedError)) throw e;
          this.swapFailed(e, trace, routing);
          return 'again';
        }
        await this.waitOnSwap(entry, false, trace, signal, deadlineMs, routing);
        return 'again';
      }
      case 'cold-start':
        if (route.evictions.length > 0) {
          trace.decided(`making room for a cold start: swapping out ${route.evictions.map((e) => e.instanceId).join(', ')}`);
          await untilAborted(this.evict(route.evictions), signal, clientClosed);
        }
        return null;
      case 'no-room':
        if (!this.mayFreeRoom(model.name)) {
          // With no READY worker decide() says which states they are in.
          if (!this.cluster.views().some((w) => w.state === 'READY')) return null;
          return { kind: 'reject', status: 503, reason: `${route.reason}, and nothing under way will make room` };
        }
        if (asleep !== 'room') trace.decided(`${route.reason}; waiting for room`);
        routing.asleep = 'room';
        await this.sleep(queued.id, signal, deadlineMs);
        return 'again';
    }
  }

  /**
   * Whether anything under way may free device memory or a batch slot for `model` (else waiting
   * is pointless): requests running, or queued for other models and not asleep themselves (a
   * copy they protect or keep busy is freed once they ran), loads, swaps, or a worker reporting
   * requests of its own.
   */
  private mayFreeRoom(model: string): boolean {
    return (
      this.active.size > 0 ||
      this.loads.size > 0 ||
      this.swaps.size > 0 ||
      this.leaving.size > 0 ||
      [...this.queues.values()].some((q) => q.model !== model && q.requests.some((r) => !this.sleepers.has(r.id))) ||
      this.cluster.views().some((w) => w.state === 'READY' && w.activeRequests > 0)
    );
  }

  /**
   * Device bytes one instance of the model takes: as seen on an instance of it, else estimated
   * from its parameters at the most bytes per parameter seen on any instance; never less than
   * its registered weight bytes. Loads and room are planned with it.
   */
  private footprintOf(model: LoadableModel): number {
    this.parameters.set(model.name, model.parameters);
    const estimate = this.bytesPerParameter > 0 ? Math.ceil(model.parameters * this.bytesPerParameter) : 0;
    return Math.max(model.bytes, this.footprints.get(model.name) ?? estimate);
  }

  /** The model as the swap policy sees it now (remembered for keep-alive). */
  private swapModel(model: LoadableModel, request: ScheduleRequest): SwapModel {
    const m = swapModelOf(model, request.coldStart?.profile ?? null, request.modelBytes, this.opts.sharing);
    this.models.set(model.name, m);
    return m;
  }

  private figures(request: ScheduleRequest): SwapFigures {
    return {
      ...SWAP_DEFAULTS,
      maxColdStartDegree: request.coldStart?.maxDegree ?? 1,
      swapping: this.opts.swapping,
    };
  }

  /** What the queue's slack is net of: the predicted time to first token of the last route. */
  private predicted(model: string, route: RouteDecision): void {
    const queue = this.queues.get(model);
    if (queue && route.kind !== 'no-room') this.queues.set(model, { ...queue, predictedServiceMs: route.predictedTtftMs });
  }

  private queuedByModel(): Map<string, number> {
    return new Map([...this.queues.values()].map((q) => [q.model, q.requests.length]));
  }

  private swapServers(now: number): SwapServer[] {
    return swapServers(
      {
        workers: this.cluster.views(),
        loads: this.inFlightLoads(),
        swaps: [...this.swaps.values()].map((e) => e.swap),
        leaving: new Set([...this.leaving.keys(), ...this.retired]),
        gatewayActive: this.active,
        lastUsed: this.lastUsed,
        slotFreeInMs: (model) => this.serviceMs.get(model) ?? DEFAULT_SERVICE_MS,
        loadReadyAtMs: (load) =>
          load.startedMs + (load.bytes / COLD_START_DEFAULTS.fetchBytesPerS) * 1000 + COLD_START_DEFAULTS.initMs,
      },
      now,
    );
  }

  /**
   * Asks for a swap-in (from the host copy on the target worker) or a move (of the busy
   * instance), after swapping out the evicted copies; registered at once, so the next decision
   * sees it landing. SwapFailedError when the worker or its host copy is gone.
   */
  private startSwap(model: string, bytes: number, route: Extract<RouteDecision, { kind: 'swap-in' | 'move' }>): SwapEntry {
    const workerId = route.to.serverId;
    const view = this.cluster.view(workerId);
    const channel = this.cluster.channel(workerId);
    const busy = new Set([...this.swaps.keys(), ...this.leaving.keys()]);
    const instanceId = route.kind === 'move' ? route.from.instanceId : view === null ? null : (hostInstanceOf(view, model, busy)?.instanceId ?? null);
    if (instanceId === null || channel === null) {
      const why = channel === null ? `worker ${workerId} went away` : `worker ${workerId} holds no host copy of model '${model}' any more`;
      throw new SwapFailedError(serviceUnavailable(`swapping model '${model}' in failed: ${why}`, 'swap_failed'));
    }
    const started = Date.now();
    const swap: InFlightSwap = { instanceId, model, workerId, device: route.to.gpu, bytes, readyAtMs: started + route.predictedTtftMs, status: 'swapping' };
    const trace: SwapTrace = {
      kind: route.kind,
      instanceId,
      workerId,
      device: null,
      source: route.kind === 'move' ? route.source : 'host',
      joined: false,
      evicted: route.evictions.map((e) => e.instanceId),
      workerMs: null,
      bytes: null,
      reason: route.reason,
    };
    const done = this.evict(route.evictions)
      .then(() => channel.swapIn(instanceId, route.to.gpu, this.opts.loadTimeoutMs))
      .then(
        (reply) => {
          swap.status = 'landed';
          trace.device = reply.device;
          trace.workerMs = reply.elapsedMs;
          trace.bytes = reply.bytes;
          if (reply.source === 'host' || reply.source === 'peer') trace.source = reply.source;
          this.lastUsed.set(instanceId, Date.now());
          this.observer.swapped(model, 'in', 'ok', (Date.now() - started) / 1000);
          this.log.info({ instanceId, worker: workerId, device: reply.device, ms: reply.elapsedMs, source: reply.source }, 'swapped in');
          this.prune();
        },
        (e: unknown) => {
          if (this.swaps.get(instanceId)?.swap === swap) this.swaps.delete(instanceId);
          this.observer.swapped(model, 'in', 'error', (Date.now() - started) / 1000);
          this.log.warn({ instanceId, worker: workerId, err: describe(e) }, 'swap-in failed');
          this.changed();
          const code = isServiceError(e) ? e.code : null;
          throw new SwapFailedError(
            serviceUnavailable(`swapping ${instanceId} in on worker ${workerId} failed: ${describe(e)}`, code === GrpcStatus.RESOURCE_EXHAUSTED ? 'worker_busy' : 'swap_failed'),
          );
        },
      );
    const entry: SwapEntry = { swap, trace, done };
    this.swaps.set(instanceId, entry);
    return entry;
  }

  /**
   * Waits for a swap (no later than the request's deadline), telling the trace; a failed swap
   * counts in `routing` and the request decides again, until MAX_SWAP_FAILURES.
   */
  private async waitOnSwap(
    entry: SwapEntry,
    joined: boolean,
    trace: RequestTracer,
    signal: AbortSignal,
    deadlineMs: number,
    routing: RoutingProgress,
  ): Promise<void> {
    const started = Date.now();
    let timer: NodeJS.Timeout | null = null;
    const expiry = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(gatewayTimeout(`the swap-in of ${entry.swap.instanceId} did not finish before the request's deadline`)), Math.max(0, deadlineMs - started));
    });
    try {
      await untilAborted(Promise.race([entry.done, expiry]), signal, clientClosed);
    } catch (e) {
      if (!(e instanceof SwapFailedError)) throw e;
      this.swapFailed(e, trace, routing);
    } finally {
      if (timer !== null) clearTimeout(timer);
      trace.waitedOnSwap({ ...entry.trace, joined }, Date.now() - started);
    }
  }

  /** A swap the request needed failed: noted in its trace; its error once it happened MAX_SWAP_FAILURES times. */
  private swapFailed(e: SwapFailedError, trace: RequestTracer, routing: RoutingProgress): void {
    routing.swapFailures += 1;
    trace.decided(`failed: ${e.message}`);
    if (routing.swapFailures >= MAX_SWAP_FAILURES) throw e.error;
  }

  /**
   * Swaps the evicted copies out (unloads them without swapping: the baseline's evicted models go
   * back to storage); resolves once their workers' snapshots show them gone (or the calls failed).
   */
  private evict(evictions: readonly Eviction[]): Promise<void> {
    return Promise.all(evictions.map((e) => this.dropCopy(e.serverId, e.instanceId, e.model, this.leaveDevice(), 'making room').confirmed)).then(() => undefined);
  }

  /** How a copy leaves a device: swapped out to its host copy, or (no swapping) unloaded. */
  private leaveDevice(): LeavingEntry['kind'] {
    return this.opts.swapping ? 'swap-out' : 'unload';
  }

  /**
   * Starts a SwapOut ('swap-out') or an UnloadStage ('unload') of an instance, or joins the one
   * under way. The entry counts until the snapshot confirms it (prune), so no decision uses the
   * copy meanwhile; a failure confirms at once (NOT_FOUND: it was gone already).
   */
  private dropCopy(workerId: string, instanceId: string, model: string, kind: LeavingEntry['kind'], reason: string): LeavingEntry {
    const existing = this.leaving.get(instanceId);
    if (existing) return existing;
    // A landed swap-in of it is over: from here the copy is leaving, whatever snapshots lag behind.
    if (this.swaps.get(instanceId)?.swap.status === 'landed') this.swaps.delete(instanceId);
    let confirm: () => void = () => undefined;
    const confirmed = new Promise<void>((resolve) => (confirm = resolve));
    const entry: LeavingEntry = { kind, model, workerId, answered: false, confirmed, confirm };
    const channel = this.cluster.channel(workerId);
    if (channel === null) {
      entry.confirm();
      return entry;
    }
    this.leaving.set(instanceId, entry);
    this.log.info({ worker: workerId, instanceId, reason }, kind === 'swap-out' ? 'swapping out' : 'unloading');
    const started = Date.now();
    const call = kind === 'swap-out' ? channel.swapOut(instanceId, UNLOAD_TIMEOUT_MS) : channel.unloadStage(instanceId, UNLOAD_TIMEOUT_MS);
    call.then(
      () => {
        entry.answered = true;
        if (kind === 'swap-out') this.observer.swapped(model, 'out', 'ok', (Date.now() - started) / 1000);
        const fallback = setTimeout(() => this.settleLeaving(instanceId), LOST_CONFIRM_MS);
        fallback.unref();
        void confirmed.then(() => clearTimeout(fallback));
        this.prune();
      },
      (e: unknown) => {
        if (!(isServiceError(e) && e.code === GrpcStatus.NOT_FOUND)) {
          if (kind === 'swap-out') this.observer.swapped(model, 'out', 'error', (Date.now() - started) / 1000);
          this.log.warn({ worker: workerId, instanceId, err: describe(e) }, kind === 'swap-out' ? 'swap-out failed' : 'unload failed');
        }
        this.settleLeaving(instanceId);
      },
    );
    return entry;
  }

  private settleLeaving(instanceId: string): void {
    const entry = this.leaving.get(instanceId);
    if (!entry) return;
    this.leaving.delete(instanceId);
    entry.confirm();
    this.changed();
  }

  /**
   * Sleeps until wakeAll() (something changed), the request's deadline (504) or the client
   * leaving (499).
   */
  private sleep(requestId: string, signal: AbortSignal, deadlineMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        this.sleepers.delete(requestId);
      };
      const onAbort = (): void => {
        cleanup();
        reject(clientClosed());
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(gatewayTimeout(`the request waited in its model's queue until its deadline (${this.opts.requestTimeoutMs} ms after arrival)`));
      }, Math.max(0, deadlineMs - Date.now()));
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      this.sleepers.set(requestId, () => {
        cleanup();
        resolve();
      });
    });
  }

  /** Wakes every sleeping request, least slack first: each decides again in that order. */
  private wakeAll(): void {
    if (this.sleepers.size === 0) return;
    const now = Date.now();
    let queues = [...this.queues.values()];
    const order: string[] = [];
    for (let pick = nextRequest(queues, now, NOBODY_BLOCKED); pick !== null; pick = nextRequest(queues, now, NOBODY_BLOCKED)) {
      order.push(pick.request.id);
      const rest = pick.queue;
      queues = queues.map((q) => (q.model === rest.model ? rest : q));
    }
    for (const id of [...order, ...this.sleepers.keys()]) this.sleepers.get(id)?.();
  }

  /** Something that may change a decision happened: wake the sleepers, look at keep-alives. */
  private changed(): void {
    this.wakeAll();
    if (this.expiryQueued || this.closed) return;
    this.expiryQueued = true;
    setImmediate(() => {
      this.expiryQueued = false;
      this.expire();
    });
  }

  /**
   * Keep-alive (swap-policy.ts expireIdle): swaps idle GPU copies out and unloads idle host
   * copies, then arms one timer for the next keep-alive to run out.
   */
  private expire(): void {
    if (this.closed) return;
    const now = Date.now();
    const { actions, nextExpiryMs } = expireIdle(this.swapServers(now), this.models, this.queuedByModel(), now);
    for (const a of actions) {
      this.log.info({ worker: a.serverId, model: a.model, reason: a.reason }, 'keep-alive ran out');
      if (a.kind === 'swap-out') {
        this.dropCopy(a.serverId, a.instanceId, a.model, this.leaveDevice(), a.reason);
        continue;
      }
      if (a.kind === 'drop-stage') {
        this.dropStage(a.serverId, a.instanceId);
        continue;
      }
      for (const i of this.cluster.view(a.serverId)?.instances ?? []) {
        if (i.model === a.model && i.residency === 'HOST_ONLY' && !this.swaps.has(i.instanceId)) this.dropCopy(a.serverId, i.instanceId, a.model, 'unload', a.reason);
      }
    }
    if (this.expiryTimer !== null) clearTimeout(this.expiryTimer);
    this.expiryTimer = null;
    if (nextExpiryMs !== null) {
      this.expiryTimer = setTimeout(() => this.expire(), Math.max(0, nextExpiryMs - now) + 1);
      this.expiryTimer.unref();
    }
  }

  /** Takes a batch slot of an instance for a request placed on it. */
  private reserve(instanceId: string): void {
    this.active.set(instanceId, (this.active.get(instanceId) ?? 0) + 1);
    this.lastUsed.set(instanceId, Date.now());
  }

  /** Gives a reserved slot back when its request ended (`ranMs`: placement to end; null when it never ran). */
  private release(model: string, instanceId: string, ranMs: number | null): void {
    const n = (this.active.get(instanceId) ?? 1) - 1;
    if (n <= 0) this.active.delete(instanceId);
    else this.active.set(instanceId, n);
    this.lastUsed.set(instanceId, Date.now());
    if (ranMs !== null) this.serviceMs.set(model, 0.8 * (this.serviceMs.get(model) ?? ranMs) + 0.2 * ranMs);
    if (n <= 0 && this.dissolving.has(instanceId)) this.dissolve();
    this.changed();
  }

  /** Admits a request to its model's queue; 429 (queueFull) when the queue is full. */
  private enqueue(model: LoadableModel, params: GenerationParams): QueuedRequest {
    const slo = model.ttftSloMs ?? this.opts.sharing.ttftSloMs;
    const request: QueuedRequest = { id: params.requestId, model: model.name, arrivalMs: params.arrivalMs, deadlineMs: params.arrivalMs + slo };
    const queue = this.queues.get(model.name) ?? emptyQueue(model.name, this.opts.queueCapacity);
    const result = admit(queue, request, Date.now());
    if (result.kind === 'rejected') {
      params.trace.decided(`rejected: ${result.reason}`);
      throw queueFull(`model '${model.name}' is busy: ${result.reason}`, result.retryAfterS);
    }
    this.queues.set(model.name, result.queue);
    this.observer.queued(model.name, result.queue.requests.length);
    return request;
  }

  private dequeue(model: string, requestId: string): void {
    const queue = this.queues.get(model);
    if (!queue || !queue.requests.some((r) => r.id === requestId)) return;
    const requests = queue.requests.filter((r) => r.id !== requestId);
    this.queues.set(model, { ...queue, requests });
    this.observer.queued(model, requests.length);
  }

  /**
   * Waits for a load, telling the trace how long and what the load reports; with a `deadline`,
   * no later than its time (then its error).
   */
  private async waitOnLoad(
    entry: LoadEntry,
    instanceId: string,
    joined: boolean,
    signal: AbortSignal,
    trace: RequestTracer,
    deadline: { atMs: number; error: () => ApiError } | null,
  ): Promise<void> {
    const load: LoadTrace = { instanceId, joined, coldStart: entry.coldStart, stages: entry.stages };
    if (entry.loads.length > 1) this.holdForPrefill(entry, trace.requestId);
    const started = Date.now();
    let timer: NodeJS.Timeout | null = null;
    const expiry =
      deadline === null
        ? null
        : new Promise<never>((_resolve, reject) => {
            timer = setTimeout(() => reject(deadline.error()), Math.max(0, deadline.atMs - Date.now()));
          });
    try {
      await untilAborted(expiry === null ? entry.done : Promise.race([entry.done, expiry]), signal, clientClosed);
    } finally {
      if (timer !== null) clearTimeout(timer);
      trace.waitedOnLoad(load, Date.now() - started);
    }
  }

  /** Stage count of an instance as the worker's snapshot (or the gateway's own load) says. */
  private degreeOf(workerId: string, instanceId: string): number {
    const listed = this.cluster.view(workerId)?.instances.find((i) => i.instanceId === instanceId);
    return listed?.stage?.stageCount ?? this.loads.get(instanceId)?.loads.length ?? 1;
  }

  /**
   * Admits the request to its model's queue (429 when full), places it and streams its tokens.
   * Failures before the first token are retried on a fresh decision; after it they end the
   * stream with an ApiError. Aborting `signal` (client gone) and leaving the iteration early
   * (stop sequence) both cancel the worker's call.
   */
  async *generate(model: LoadableModel, params: GenerationParams, signal: AbortSignal): AsyncGenerator<GenerationEvent> {
    this.inflight += 1;
    let failure: string | null = null;
    let queued: QueuedRequest | null = null;
    try {
      if (this.closed) throw serviceUnavailable('the gateway is shutting down', 'shutting_down');
      queued = this.enqueue(model, params);
      yield* this.attempts(model, queued, params, signal);
    } catch (e) {
      failure = describe(e);
      throw e;
    } finally {
      if (queued !== null) this.dequeue(model.name, queued.id);
      this.prefillDone(params.requestId);
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

  private async *attempts(model: LoadableModel, queued: QueuedRequest, params: GenerationParams, signal: AbortSignal): AsyncGenerator<GenerationEvent> {
    for (let attempt = 1; ; attempt++) {
      const { workerId, instanceId } = await this.place(model, queued, signal, params.trace, params.arrivalMs + this.opts.requestTimeoutMs, params.promptTokenIds.length);
      const placedMs = Date.now();
      const channel = this.cluster.channel(workerId);
      if (!channel) {
        this.release(model.name, instanceId, null);
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
      let received = 0;
      let finished = false;
      try {
        for await (const ev of call as AsyncIterable<GenerateEvent__Output>) {
          if (ev.token) {
            if (received === 0) {
              this.observer.firstToken(model.name, (Date.now() - params.arrivalMs) / 1000);
              params.trace.firstToken(Date.now());
              this.prefillDone(params.requestId);
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
        if (!finished) call.cancel();
        this.release(model.name, instanceId, finished ? Date.now() - placedMs : null);
      }
    }
  }

  /** The checkpoint's tensors: `known` (registration just read them), else read once from the source's headers. */
  private checkpoint(model: LoadableModel, known: CheckpointTensors | null = null): Promise<CheckpointTensors> {
    const key = modelKey(model);
    if (known !== null) {
      const given = { reading: Promise.resolve(known), read: known };
      this.checkpoints.set(key, given);
      return given.reading;
    }
    const cached = this.checkpoints.get(key);
    if (cached !== undefined) return cached.reading;
    const entry: CheckpointEntry = { reading: readCheckpointTensors(openModelSource(model.source)), read: null };
    this.checkpoints.set(key, entry);
    entry.reading.then(
      (tensors) => {
        entry.read = tensors;
      },
      () => {
        if (this.checkpoints.get(key) === entry) this.checkpoints.delete(key);
      },
    );
    return entry.reading;
  }

  /** A stage's tensors for LoadStage once the checkpoint's headers were read; else none (the worker reads them). */
  private stageLayout(model: LoadableModel, range: StageRange): TensorLayoutEntry[] {
    const tensors = this.checkpoints.get(modelKey(model))?.read ?? null;
    if (tensors === null) return [];
    try {
      return layoutOf(planStageTensors(tensors, parseModelConfig(JSON.parse(model.configJson) as unknown), range));
    } catch {
      return []; // the worker reads the headers and says what is wrong
    }
  }

  /** The stage plan for a pipelined cold start of the model, or null (whole model). */
  private pipelinePlan(model: LoadableModel): Promise<PlannedStage[] | null> {
    const k = this.opts.forcedPipelineDegree ?? 1;
    if (k <= 1) return Promise.resolve(null);
    const key = modelKey(model);
    let plan = this.plans.get(key);
    if (!plan) {
      plan = planPipeline(model, k, () => this.checkpoint(model)).catch((e: unknown) => {
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
    const key = modelKey(model);
    let profile = this.profiles.get(key);
    if (!profile) {
      profile = profileOf(model, this.checkpoint(model));
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

  /**
   * Derives what a cold start of a newly registered model needs from its checkpoint's tensors,
   * which registration has just read (the stage plan, or the byte profile the cold-start policy
   * sizes k by), ahead of its first request, which would otherwise read the headers from the
   * store again (≈ 0.1 s of a pipelined cold start's time to first token). The tensors are kept:
   * each LoadStage carries its stage's layout, so the worker fetches without reading headers.
   */
  prepareModel(model: LoadableModel, tensors: CheckpointTensors): void {
    void this.checkpoint(model, tensors);
    this.pipelinePlan(model).catch(() => undefined);
    void this.coldStartRequest(model);
  }

  /** Best effort: asks every worker holding the model to drop it; loads under way are cancelled. */
  unloadModel(name: string): void {
    this.models.delete(name);
    this.footprints.delete(name);
    this.parameters.delete(name);
    this.serviceMs.delete(name);
    for (const cache of [this.checkpoints, this.plans, this.profiles]) {
      for (const key of cache.keys()) {
        if (key.startsWith(`${name}\n`)) cache.delete(key);
      }
    }
    for (const entry of this.loads.values()) {
      if (entry.loads[0]?.model === name) cancelLoad(entry);
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
    if (this.expiryTimer !== null) clearTimeout(this.expiryTimer);
    this.wakeAll();
    for (const entry of this.loads.values()) cancelLoad(entry);
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

  /** Starts LoadStage of the whole model; `warmUp`: prompt lengths its runtime init warms up for. */
  private startLoad(model: LoadableModel, action: Extract<SchedulerAction, { kind: 'load-then-run' }>, warmUp: number[]): LoadEntry {
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
        warmUpTokenCounts: warmUp,
        tensors: this.stageLayout(model, action.range),
      },
      this.opts.loadTimeoutMs,
    );
    const stage: StageLoadTrace = { workerId: action.workerId, stageIndex: 0, spans: [], readyMs: null, linkToNext: null };
    return this.track(model, {
      loads: [load],
      calls: [call],
      cancelled: false,
      done: this.loadSettled(call, `model '${model.name}' on worker ${action.workerId}`, action.workerId, stage),
      coldStart: action.coldStart,
      stages: [stage],
      prefilling: new Set(),
      afterPrefill: null,
    });
  }

  /**
   * Ids for the device links between a pipeline's adjacent stages, each made by the worker of
   * the stage that sends (the process that makes an id coordinates the link's setup); null for
   * a hop where either worker has no device links (CPU backend: asking only one end would
   * leave the other waiting for a peer that never joins) or the sender did not answer in
   * time — that hop's activations go over gRPC. Never rejects.
   */
  private linkIds(channels: readonly WorkerChannel[], workerIds: readonly string[]): Promise<(Buffer | null)[]> {
    const linkable = workerIds.map((id) => this.cluster.view(id)?.deviceLinks === true);
    return Promise.all(
      channels.slice(0, -1).map((channel, index) =>
        !linkable[index] || !linkable[index + 1]
          ? null
          : channel.createLinkId(LINK_ID_TIMEOUT_MS).then(
          (id) => id,
          (e: unknown) => {
            this.log.warn({ worker: workerIds[index], err: describe(e) }, 'no device link id: the hop goes over gRPC');
            return null;
          },
        ),
      ),
    );
  }

  /**
   * Starts LoadStage on every stage of a pipeline at once, each told all stages' addresses, the
   * ids of its device links once the sending workers made them (one round trip), its tensor
   * layout and the prompt lengths to warm up for (`warmUp`). The entry is done when all are
   * READY; if one fails, the others are cancelled and the stages that did load are unloaded
   * (best effort), so no half pipeline stays behind.
   */
  private startPipelineLoad(model: LoadableModel, action: Extract<SchedulerAction, { kind: 'load-pipeline-then-run' }>, warmUp: number[]): LoadEntry {
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
    const stages: StageLoadTrace[] = action.stages.map((s, stageIndex) => ({ workerId: s.workerId, stageIndex, spans: [], readyMs: null, linkToNext: null }));
    const calls: ClientReadableStream<LoadProgress__Output>[] = [];
    const entry: LoadEntry = { loads, calls, done: Promise.resolve(), cancelled: false, coldStart: action.coldStart, stages, prefilling: new Set(), afterPrefill: null };
    const start = (linkIds: readonly (Buffer | null)[]): Promise<void> => {
      if (entry.cancelled || this.closed) {
        throw new LoadFailedError(serviceUnavailable(`loading model '${model.name}' was called off before it started`), action.stages[0]!.workerId, false);
      }
      for (const [index, stage] of action.stages.entries()) {
        calls.push(
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
              linkIdFromPrevious: linkIds[index - 1] ?? Buffer.alloc(0),
              linkIdToNext: linkIds[index] ?? Buffer.alloc(0),
              warmUpTokenCounts: warmUp,
              tensors: this.stageLayout(model, stage.range),
            },
            this.opts.loadTimeoutMs,
          ),
        );
      }
      const settled = calls.map((call, index) =>
        this.loadSettled(call, `stage ${index} of model '${model.name}' on worker ${action.stages[index]!.workerId}`, action.stages[index]!.workerId, stages[index]!),
      );
      return this.pipelineLoaded(action, channels, calls, settled);
    };
    entry.done = this.linkIds(channels, action.stages.map((s) => s.workerId)).then(start);
    return this.track(model, entry);
  }

  /** Resolves when every stage is READY; on a failure, cancels and unloads the others, then rejects. */
  private pipelineLoaded(
    action: Extract<SchedulerAction, { kind: 'load-pipeline-then-run' }>,
    channels: readonly WorkerChannel[],
    calls: readonly ClientReadableStream<LoadProgress__Output>[],
    settled: readonly Promise<void>[],
  ): Promise<void> {
    return Promise.all(settled).then(
      () => undefined,
      (e: unknown) => {
        // A stage may finish loading as its cancel arrives (a worker keeps what it loaded), so
        // every stage on a worker still up is unloaded; one that holds nothing answers NOT_FOUND.
        this.retired.add(action.instanceId);
        for (const call of calls) call.cancel();
        void Promise.allSettled(settled).then(() => {
          for (const [index, stage] of action.stages.entries()) {
            if (this.cluster.channel(stage.workerId) === null) continue;
            channels[index]!.unloadStage(action.instanceId, UNLOAD_TIMEOUT_MS).catch((err: unknown) => {
              if (isServiceError(err) && err.code === GrpcStatus.NOT_FOUND) return;
              this.log.warn({ worker: stage.workerId, instanceId: action.instanceId, err: describe(err) }, 'unload failed');
            });
          }
        });
        throw e;
      },
    );
  }

  /**
   * Resolves when a LoadStage stream ended after READY; rejects with a LoadFailedError (the
   * ApiError to report, and whether the load died with its worker).
   */
  private loadSettled(call: ClientReadableStream<LoadProgress__Output>, where: string, workerId: string, trace: StageLoadTrace): Promise<void> {
    const workerState = (): WorkerStateName | null => this.cluster.view(workerId)?.state ?? null;
    const lostError = (why: string): LoadFailedError =>
      new LoadFailedError(
        serviceUnavailable(`loading ${where} failed: worker ${workerId} ${workerState() === 'DOWN' || workerState() === null ? 'went DOWN' : 'became unreachable'} (${why})`, 'worker_lost'),
        workerId,
        true,
      );
    return new Promise<void>((resolve, reject) => {
      let lastPhase = 'none';
      call.on('data', (p: LoadProgress__Output) => {
        lastPhase = p.phase;
        recordProgress(trace, p);
      });
      // grpc-js may also emit 'end' after 'error'; the error (possibly confirmed later) decides.
      let failed = false;
      call.on('error', (e: unknown) => {
        failed = true;
        if (this.abandoned.has(call)) return reject(lostError('the gateway lost its event stream, so its load was abandoned'));
        const code = isServiceError(e) ? e.code : null;
        const kind = loadFailureKind(code ?? GrpcStatus.UNKNOWN, workerState());
        if (code === GrpcStatus.DEADLINE_EXCEEDED) {
          reject(new LoadFailedError(gatewayTimeout(`loading ${where} did not finish within ${this.opts.loadTimeoutMs} ms`), workerId, false));
        } else if (kind === 'lost') {
          reject(lostError(describe(e)));
        } else if (kind === 'confirm') {
          void this.confirmDown(workerId).then((down) =>
            reject(down ? lostError(describe(e)) : new LoadFailedError(serviceUnavailable(`loading ${where} failed: ${describe(e)}`), workerId, false)),
          );
        } else if (code === GrpcStatus.RESOURCE_EXHAUSTED) {
          reject(new LoadFailedError(serviceUnavailable(`loading ${where} failed: ${describe(e)}`, 'worker_busy'), workerId, false));
        } else {
          reject(new LoadFailedError(workerFailed(`loading ${where} failed: ${describe(e)}`), workerId, false));
        }
      });
      call.on('end', () => {
        if (failed) return;
        if (lastPhase === 'READY') resolve();
        else if (loadFailureKind(null, workerState()) === 'lost') reject(lostError(`its load stream ended before READY, last phase ${lastPhase}`));
        else reject(new LoadFailedError(workerFailed(`loading ${where} ended before READY (last phase: ${lastPhase})`), workerId, false));
      });
    });
  }

  /** Resolves true once the worker is DOWN or forgotten, false if it is not within LOST_CONFIRM_MS. */
  private confirmDown(workerId: string): Promise<boolean> {
    const down = (): boolean => {
      const state = this.cluster.view(workerId)?.state ?? null;
      return state === null || state === 'DOWN';
    };
    if (down()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        off();
        resolve(down());
      }, LOST_CONFIRM_MS);
      const off = this.cluster.onChange(() => {
        if (!down()) return;
        clearTimeout(timer);
        off();
        resolve(true);
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
        this.lastUsed.set(first.instanceId, Date.now());
        this.observer.loadFinished(model.name, 'ok', (Date.now() - first.startedMs) / 1000);
        this.log.info({ instanceId: first.instanceId, ms: Date.now() - first.startedMs }, 'model loaded');
        this.prune();
        if (entry.loads.length > 1 && this.opts.consolidate) this.afterPrefill(entry, () => this.consolidate(model, entry));
      },
      (e: unknown) => {
        this.loads.delete(first.instanceId);
        this.observer.loadFinished(model.name, 'error', (Date.now() - first.startedMs) / 1000);
        this.log.warn({ instanceId: first.instanceId, err: describe(e) }, 'model load failed');
      },
    );
    return entry;
  }

  /** Runs `start` once no request that waited on the load is before its first token. */
  private afterPrefill(entry: LoadEntry, start: () => void): void {
    if (entry.prefilling.size === 0) start();
    else entry.afterPrefill = start;
  }

  private holdForPrefill(entry: LoadEntry, requestId: string): void {
    entry.prefilling.add(requestId);
    const held = this.prefillHolds.get(requestId) ?? new Set<LoadEntry>();
    held.add(entry);
    this.prefillHolds.set(requestId, held);
  }

  /**
   * The request has its first token or ended: what waited for its prefill may start, once the
   * token is on its way to the client (a consolidation's start — planning, the LoadStage of the
   * whole model with its layout — took 8–10 ms of the gateway's loop on 4 × H200).
   */
  private prefillDone(requestId: string): void {
    const held = this.prefillHolds.get(requestId);
    if (held === undefined) return;
    this.prefillHolds.delete(requestId);
    for (const entry of held) {
      entry.prefilling.delete(requestId);
      const start = entry.afterPrefill;
      if (entry.prefilling.size > 0 || start === null) continue;
      entry.afterPrefill = null;
      setImmediate(start);
    }
  }

  /**
   * Starts loading a READY pipeline's model whole in the background where
   * chooseConsolidationTarget says; when that load is READY the pipeline is retired and
   * dissolved. A consolidation that cannot start or fails leaves the pipeline serving.
   */
  private consolidate(model: LoadableModel, pipelineEntry: LoadEntry): void {
    if (this.closed) return;
    const pipeline: ConsolidationRequest = {
      model: model.name,
      instanceId: pipelineEntry.loads[0]!.instanceId,
      workers: pipelineEntry.loads.map((l) => l.workerId),
      range: model.range,
      bytes: model.bytes,
    };
    const decision = chooseConsolidationTarget(withoutInstances(this.state(), this.retired), pipeline, Date.now());
    if (decision.kind === 'skip') {
      this.log.info({ pipeline: pipeline.instanceId, reason: decision.reason }, 'not consolidating the pipeline');
      return;
    }
    const readyMs = Date.now();
    let entry: LoadEntry;
    try {
      entry = this.startLoad(model, decision.load, []);
    } catch (e) {
      this.log.warn({ pipeline: pipeline.instanceId, err: describe(e) }, 'consolidation could not start; the pipeline keeps serving');
      return;
    }
    const instanceId = decision.load.instanceId;
    entry.done.then(
      () => {
        const ms = Date.now() - readyMs;
        this.consolidatedInstances.add(instanceId);
        this.observer.consolidated(model.name, ms / 1000);
        this.log.info({ pipeline: pipeline.instanceId, instanceId, worker: decision.load.workerId, ms }, 'pipeline consolidated');
        this.retired.add(pipeline.instanceId);
        this.dissolving.set(pipeline.instanceId, { pipeline, consolidatedOn: decision.load.workerId });
        this.dissolve();
      },
      (e: unknown) => {
        this.log.warn({ pipeline: pipeline.instanceId, instanceId, err: describe(e) }, 'consolidation failed; the pipeline keeps serving');
      },
    );
  }

  /**
   * Dissolves every consolidated pipeline no request of the gateway runs on (best effort; a
   * stage already gone answers NOT_FOUND). Members swap their stage out and keep its host copy:
   * a later load of the model on that worker copies those layers instead of fetching them
   * (worker/daemon/local-copies.ts), until the model's host keep-alive drops it. The worker
   * now holding the whole model unloads its stage (its whole copy has those bytes), and so does
   * every member in the no-swapping baseline.
   */
  private dissolve(): void {
    for (const [id, { pipeline, consolidatedOn }] of this.dissolving) {
      if ((this.active.get(id) ?? 0) > 0) continue;
      this.dissolving.delete(id);
      this.log.info({ pipeline: id, workers: pipeline.workers }, 'dissolving the consolidated pipeline');
      for (const workerId of pipeline.workers) {
        const channel = this.cluster.channel(workerId);
        if (!channel) continue;
        const keep = this.opts.swapping && workerId !== consolidatedOn;
        const call = keep ? channel.swapOut(id, UNLOAD_TIMEOUT_MS) : channel.unloadStage(id, UNLOAD_TIMEOUT_MS);
        call.catch((err: unknown) => {
          if (isServiceError(err) && err.code === GrpcStatus.NOT_FOUND) return;
          this.log.warn({ worker: workerId, instanceId: id, err: describe(err) }, keep ? 'swap-out failed' : 'unload failed');
        });
      }
    }
  }

  /** Unloads a kept stage copy whose keep-alive ran out (once at a time per copy). */
  private dropStage(workerId: string, instanceId: string): void {
    const key = `${workerId}/${instanceId}`;
    const channel = this.cluster.channel(workerId);
    if (channel === null || this.droppingStages.has(key)) return;
    this.droppingStages.add(key);
    channel
      .unloadStage(instanceId, UNLOAD_TIMEOUT_MS)
      .catch((err: unknown) => {
        if (!(isServiceError(err) && err.code === GrpcStatus.NOT_FOUND)) this.log.warn({ worker: workerId, instanceId, err: describe(err) }, 'unload failed');
      })
      .finally(() => this.droppingStages.delete(key));
  }

  /**
   * The sharing side of a snapshot: instances seen for the first time count as used now (their
   * keep-alive starts), each model's footprint is noted (the most device or host bytes one of
   * its instances held), swap-ins the snapshot shows
   * landed (or whose worker is gone) and swap-outs and unloads it shows done are forgotten.
   * Then sleepers wake and keep-alives are looked at. Returns the ids the workers list.
   */
  private pruneSharing(): Set<string> {
    const now = Date.now();
    const seen = new Set<string>();
    for (const w of this.cluster.views()) {
      for (const i of w.instances) {
        seen.add(i.instanceId);
        if (!this.lastUsed.has(i.instanceId)) this.lastUsed.set(i.instanceId, now);
        if (wholeModel(i)) {
          this.footprints.set(i.model, Math.max(this.footprints.get(i.model) ?? 0, i.deviceBytes, i.hostBytes));
          const parameters = this.parameters.get(i.model) ?? 0;
          if (parameters > 0) this.bytesPerParameter = Math.max(this.bytesPerParameter, i.deviceBytes / parameters);
        }
      }
    }
    for (const id of this.lastUsed.keys()) {
      if (!seen.has(id) && !this.loads.has(id) && !this.swaps.has(id)) this.lastUsed.delete(id);
    }
    for (const [id, entry] of this.swaps) {
      const w = this.cluster.view(entry.swap.workerId);
      const i = w?.instances.find((x) => x.instanceId === id) ?? null;
      const gone = w === null || w.state === 'DOWN' || i === null;
      if (gone || (entry.swap.status === 'landed' && i.residency === 'ON_DEVICE' && i.device === entry.swap.device)) this.swaps.delete(id);
    }
    for (const [id, entry] of this.leaving) {
      const w = this.cluster.view(entry.workerId);
      const i = w?.instances.find((x) => x.instanceId === id) ?? null;
      const done = w === null || w.state === 'DOWN' || i === null || (entry.kind === 'swap-out' && entry.answered && i.residency !== 'ON_DEVICE');
      if (done) this.settleLeaving(id);
    }
    this.changed();
    return seen;
  }

  /**
   * Forgets finished loads once the workers' snapshots show every stage settled (or a worker is
   * gone); cancels the LoadStage of a stage whose worker went DOWN (its load then fails as lost).
   */
  private prune(): void {
    const listed = this.pruneSharing();
    for (const id of this.retired) {
      if (!listed.has(id) && !this.dissolving.has(id)) this.retired.delete(id);
    }
    for (const id of this.consolidatedInstances) {
      if (!listed.has(id) && !this.loads.has(id)) this.consolidatedInstances.delete(id);
    }
    for (const [id, entry] of this.loads) {
      for (const [index, load] of entry.loads.entries()) {
        const state = this.cluster.view(load.workerId)?.state ?? null;
        const call = entry.calls[index];
        if (call && load.status === 'loading' && (state === null || state === 'DOWN') && !this.abandoned.has(call)) {
          this.abandoned.add(call);
          call.cancel();
        }
      }
      if (entry.loads.some((l) => l.status !== 'ready')) continue;
      const views = entry.loads.map((l) => this.cluster.view(l.workerId));
      const gone = views.some((w) => !w || w.state === 'DOWN');
      const settled = views.every((w) => w?.instances.some((i) => i.instanceId === id && i.residency !== 'LOADING') ?? false);
      if (gone || settled) this.loads.delete(id);
    }
  }
}
