// The one module that turns scheduling decisions into effects: it asks decide() what to do,
// starts LoadStage calls and waits for READY, then runs Generate on the chosen instance and
// streams its tokens. Clocks, timers and gRPC live here so decide() stays pure.
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
import { decide } from './decide.js';
import type { InFlightLoad, SchedulerAction, SchedulerState, StageRange } from './types.js';

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
}

export type GenerationEvent =
  | { kind: 'token'; id: number }
  | { kind: 'finish'; reason: 'stop' | 'length'; promptTokens: number; completionTokens: number };

/** Hooks for metrics; called by the loop as things happen. */
export interface LoopObserver {
  loadFinished(model: string, outcome: 'ok' | 'error', seconds: number): void;
  firstToken(model: string, seconds: number): void;
  tokenGenerated(model: string): void;
}

export interface LoopOptions {
  /** Deadline of each Generate call. */
  requestTimeoutMs: number;
  /** Deadline of each LoadStage call. */
  loadTimeoutMs: number;
}

interface LoadEntry {
  load: InFlightLoad;
  done: Promise<void>;
  call: ClientReadableStream<LoadProgress__Output>;
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
      loads: [...this.loads.values()].map((e) => e.load),
      gatewayActive: this.active,
    };
  }

  /** Decides and performs until the model has an instance to run on; ApiError when it cannot. */
  async place(model: LoadableModel, signal: AbortSignal): Promise<{ workerId: string; instanceId: string }> {
    const request = { model: model.name, modelBytes: model.bytes, range: model.range };
    for (let i = 0; i < MAX_DECISIONS; i++) {
      if (signal.aborted) throw clientClosed();
      if (this.closed) throw serviceUnavailable('the gateway is shutting down', 'shutting_down');
      const action = decide(this.state(), request, Date.now());
      this.log.debug({ model: model.name, action }, 'scheduling decision');
      switch (action.kind) {
        case 'run-on':
          return { workerId: action.workerId, instanceId: action.instanceId };
        case 'await-load': {
          const entry = this.loads.get(action.instanceId);
          if (entry) await abortable(entry.done, signal);
          break;
        }
        case 'load-then-run':
          await abortable(this.startLoad(model, action).done, signal);
          break;
        case 'reject':
          throw serviceUnavailable(action.reason);
      }
    }
    throw serviceUnavailable(`could not place model '${model.name}' after ${MAX_DECISIONS} scheduling decisions`);
  }

  /**
   * Places the request and streams its tokens. Failures before the first token are retried on
   * a fresh decision; after it they end the stream with an ApiError. Aborting `signal` (client
   * gone) and leaving the iteration early (stop sequence) both cancel the worker's call.
   */
  async *generate(model: LoadableModel, params: GenerationParams, signal: AbortSignal): AsyncGenerator<GenerationEvent> {
    this.inflight += 1;
    try {
      yield* this.attempts(model, params, signal);
    } finally {
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
      const { workerId, instanceId } = await this.place(model, signal);
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
            if (received === 0) this.observer.firstToken(model.name, (Date.now() - params.arrivalMs) / 1000);
            received += 1;
            this.observer.tokenGenerated(model.name);
            yield { kind: 'token', id: ev.token.id };
          } else if (ev.finish) {
            finished = true;
            if (ev.finish.reason === 'CANCELLED') {
              throw serviceUnavailable(`worker ${workerId} cancelled the request (it may be draining)`, 'worker_cancelled');
            }
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

  /** Best effort: asks every worker holding the model to drop it; loads under way are cancelled. */
  unloadModel(name: string): void {
    for (const entry of this.loads.values()) {
      if (entry.load.model === name) entry.call.cancel();
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
    for (const entry of this.loads.values()) entry.call.cancel();
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
    const where = `model '${model.name}' on worker ${action.workerId}`;
    const done = new Promise<void>((resolve, reject) => {
      let lastPhase = 'none';
      call.on('data', (p: LoadProgress__Output) => {
        lastPhase = p.phase;
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
    const entry: LoadEntry = { load, done, call };
    this.loads.set(load.instanceId, entry);
    done.then(
      () => {
        load.status = 'ready';
        this.observer.loadFinished(model.name, 'ok', (Date.now() - load.startedMs) / 1000);
        this.log.info({ instanceId: load.instanceId, ms: Date.now() - load.startedMs }, 'model loaded');
        this.prune();
      },
      (e: unknown) => {
        this.loads.delete(load.instanceId);
        this.observer.loadFinished(model.name, 'error', (Date.now() - load.startedMs) / 1000);
        this.log.warn({ instanceId: load.instanceId, err: describe(e) }, 'model load failed');
      },
    );
    return entry;
  }

  /** Forgets finished loads once the worker's snapshot shows the instance settled (or the worker is gone). */
  private prune(): void {
    for (const [id, entry] of this.loads) {
      if (entry.load.status !== 'ready') continue;
      const w = this.cluster.view(entry.load.workerId);
      const settled = w?.instances.some((i) => i.instanceId === id && i.residency !== 'LOADING') ?? false;
      if (!w || w.state === 'DOWN' || settled) this.loads.delete(id);
    }
  }
}
