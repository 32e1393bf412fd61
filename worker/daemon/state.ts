// The one place the worker's mutable state lives: its lifecycle (starting, ready, draining,
// drained), its model instances with their native handles and host cache bytes, and the
// requests in flight with the controllers that cancel them. Handlers and the loader change it
// only through these methods, and every change schedules a snapshot (debounced a little) for
// the WatchEvents streams, so the gateway's view follows the worker's. Snapshots are shaped by
// the pure helpers of snapshot.ts.
import type { Device__Output } from '../../protos/generated/paraserve/v1/Device.js';
import type { PhaseEvent__Output } from '../../protos/generated/paraserve/v1/PhaseEvent.js';
import type { WorkerEvent__Output } from '../../protos/generated/paraserve/v1/WorkerEvent.js';
import type { WorkerSnapshot__Output } from '../../protos/generated/paraserve/v1/WorkerSnapshot.js';
import { status } from '@grpc/grpc-js';
import type { FetchLimiter } from '../models/throttle.js';
import type { BackendName, DType, HostBufferHandle, StageHandle, StageSpec } from '../native/addon-types.js';
import type { StageRunner } from '../engine/generator.js';
import { WorkerError, type StatusReport } from './errors.js';
import type { StageLinks } from './links.js';
import { buildSnapshot, hostCacheBytes, type InstanceFacts, type Lifecycle } from './snapshot.js';

/** One tensor of an instance's host copy: where its bytes sit in the host buffer. */
export interface HostTensor {
  name: string;
  dtype: DType;
  shape: number[];
  offset: number;
  /** Bytes of the tensor in the buffer (as stored in the checkpoint). */
  bytes: number;
}

/** An instance and what the worker holds for it. */
export interface InstanceRecord extends InstanceFacts {
  /** KV cache capacity per sequence, in tokens. */
  maxContext: number;
  /** What createStage is given: the device is the load's; a swap-in or move creates the stage on its own device. Set once the load planned it. */
  stageSpec: StageSpec | null;
  /** Native stage; set while the instance has a device copy. */
  nativeStage: StageHandle | null;
  /** Identifies the model files' bytes (local-copies.ts); equal keys, same tensor bytes. */
  contentKey: string | null;
  /** The instance's host copy (host cache); set once allocated, kept until unload or eviction. */
  hostBuffer: HostBufferHandle | null;
  /** The copy plan: every tensor the stage binds, in layer order, from hostBuffer. */
  hostTensors: HostTensor[];
  /** Device bytes of the stage right after its tensors were bound (weights, no KV cache). */
  weightBytes: number;
  /** Set while the instance is ON_DEVICE. */
  runner: StageRunner | null;
  /** A pipeline stage's device links to its neighbours (links.ts); closed with the device copy. */
  links: StageLinks;
  /** Reads the stage's device bytes now (weights plus live KV caches); set with runner. */
  measureDeviceBytes: (() => number) | null;
  /**
   * A swap of the instance in progress (swaps of one instance run one at a time; a move stays
   * in progress until the copy it left is disposed); null when none. Never rejects.
   */
  transition: Promise<void> | null;
  /** A swap-out waits for its requests to end: it takes no new ones. */
  swappingOut: boolean;
  /**
   * Settles when the load ends: null once ready, else the failure. A second LoadStage for the
   * id waits on it; it never rejects.
   */
  loaded: Promise<StatusReport | null>;
  /** Aborts the load (unload, drain, client gone). */
  loadAbort: AbortController;
  /** UnloadStage is waiting for its requests to end; it takes no new ones. */
  unloading: boolean;
  nextSequence: number;
}

/** A Generate call in flight. */
export interface ActiveRequest {
  requestId: string;
  instanceId: string;
  /** Aborting it ends the generation with reason CANCELLED and frees its KV cache. */
  abort: AbortController;
  /** Settles when the request has ended and its sequence is released. */
  done: Promise<void>;
}

/** Receives WorkerEvents; onClose when the worker shuts down (the stream should end). */
export interface WorkerEventListener {
  onEvent(event: WorkerEvent__Output): void;
  onClose(): void;
}

export interface WorkerStateOptions {
  workerId: string;
  backend: BackendName;
  hostCacheLimit: number;
  /** Whether the host pool is page-locked, as configureHostPool reported. */
  hostCachePinned: boolean;
  /** Whether its stages can open device links (the addon's linksAvailable). */
  deviceLinks: boolean;
  /** The devices as they are now (free bytes change); instances are the registry's. */
  devices: (instances: readonly InstanceFacts[]) => Device__Output[];
  /** Snapshots are sent at most this often while changes keep coming. */
  snapshotDebounceMs: number;
  /** Paces and measures every fetch of the worker's loads. */
  fetchLimiter: FetchLimiter;
}

export interface DrainResult {
  finished: number;
  cancelled: number;
}

export class WorkerState {
  readonly workerId: string;
  readonly backend: BackendName;
  readonly hostCacheLimit: number;
  readonly hostCachePinned: boolean;
  readonly deviceLinks: boolean;
  readonly fetchLimiter: FetchLimiter;
  private lifecycleState: Lifecycle = 'STARTING';
  private readonly instances = new Map<string, InstanceRecord>();
  private readonly requests = new Map<string, ActiveRequest>();
  private readonly listeners = new Set<WorkerEventListener>();
  private readonly watcherCountListeners = new Set<(count: number) => void>();
  private readonly devices: WorkerStateOptions['devices'];
  private readonly debounceMs: number;
  private snapshotTimer: NodeJS.Timeout | null = null;
  private drainPromise: Promise<DrainResult> | null = null;
  private fetchRate = 0;
  private anonymousRequests = 0;

  constructor(options: WorkerStateOptions) {
    this.workerId = options.workerId;
    this.backend = options.backend;
    this.hostCacheLimit = options.hostCacheLimit;
    this.hostCachePinned = options.hostCachePinned;
    this.deviceLinks = options.deviceLinks;
    this.devices = options.devices;
    this.debounceMs = options.snapshotDebounceMs;
    this.fetchLimiter = options.fetchLimiter;
  }

  get lifecycle(): Lifecycle {
    return this.lifecycleState;
  }

  setLifecycle(next: Lifecycle): void {
    if (this.lifecycleState === next) return;
    this.lifecycleState = next;
    this.changed();
  }

  /** Throws UNAVAILABLE unless the worker takes new work. */
  assertAccepting(): void {
    if (this.lifecycleState === 'DRAINING' || this.lifecycleState === 'DRAINED') {
      throw new WorkerError(status.UNAVAILABLE, 'worker is draining');
    }
  }

  // ------------------------------------------------------------ instances

  instance(id: string): InstanceRecord | null {
    return this.instances.get(id) ?? null;
  }

  allInstances(): InstanceRecord[] {
    return [...this.instances.values()];
  }

  addInstance(record: InstanceRecord): void {
    this.instances.set(record.id, record);
    this.changed();
  }

  hostCacheBytes(): number {
    return hostCacheBytes(this.allInstances());
  }

  /** The devices as the snapshot reports them: what loads and swaps are checked against. */
  currentDevices(): Device__Output[] {
    return this.devices(this.allInstances());
  }

  /** Marks the instance failed, makes sure watchers see it, then drops it (freeing its bytes). */
  failInstance(record: InstanceRecord, error: string): void {
    record.residency = 'FAILED';
    record.error = error;
    this.flushSnapshot();
    this.removeInstance(record);
  }

  removeInstance(record: InstanceRecord): void {
    if (this.instances.get(record.id) === record) this.instances.delete(record.id);
    this.changed();
  }

  recordFetchRate(bytesPerS: number): void {
    this.fetchRate = bytesPerS;
    this.changed();
  }

  // ------------------------------------------------------------ requests

  /** A request id for calls that did not bring one (they cannot be cancelled by id). */
  anonymousRequestId(): string {
    this.anonymousRequests++;
    return `anonymous-${this.anonymousRequests}`;
  }

  /**
   * Registers a request on an instance; `run` is the generation, given the request's abort
   * signal, which also fires when `caller` (the gRPC call's) does. The request counts as
   * active until run settles; its start and end are the instance's last use. Refused with
   * FAILED_PRECONDITION while the instance is being swapped out.
   */
  trackRequest<T>(
    requestId: string,
    record: InstanceRecord,
    caller: AbortSignal,
    run: (signal: AbortSignal) => Promise<T>,
  ): Promise<T> {
    if (this.requests.has(requestId)) {
      throw new WorkerError(status.ALREADY_EXISTS, `request ${requestId} is already running`);
    }
    if (record.swappingOut) {
      throw new WorkerError(status.FAILED_PRECONDITION, `instance ${record.id} is being swapped out`);
    }
    const abort = new AbortController();
    if (caller.aborted) abort.abort(caller.reason);
    else caller.addEventListener('abort', () => abort.abort(caller.reason), { once: true });
    const result = Promise.resolve().then(() => run(abort.signal));
    const request: ActiveRequest = {
      requestId,
      instanceId: record.id,
      abort,
      done: result.then(
        () => undefined,
        () => undefined,
      ),
    };
    this.requests.set(requestId, request);
    record.activeRequests++;
    record.lastUsedMs = Date.now();
    this.changed();
    void request.done.then(() => {
      this.requests.delete(requestId);
      record.activeRequests--;
      record.lastUsedMs = Date.now();
      if (record.measureDeviceBytes !== null) record.deviceBytes = record.measureDeviceBytes();
      this.changed();
    });
    return result;
  }

  request(requestId: string): ActiveRequest | null {
    return this.requests.get(requestId) ?? null;
  }

  requestsOf(instanceId: string): ActiveRequest[] {
    return [...this.requests.values()].filter((r) => r.instanceId === instanceId);
  }

  // ------------------------------------------------------------ drain

  /**
   * Stops new work, waits up to deadlineMs for requests and loads in flight, then cancels
   * what is left and waits for it to wind down. Concurrent calls share one drain; after it,
   * the worker is DRAINED and a new call finds nothing to do.
   */
  drain(deadlineMs: number): Promise<DrainResult> {
    if (this.lifecycleState === 'DRAINED') return Promise.resolve({ finished: 0, cancelled: 0 });
    this.drainPromise ??= this.runDrain(deadlineMs);
    return this.drainPromise;
  }

  private async runDrain(deadlineMs: number): Promise<DrainResult> {
    this.setLifecycle('DRAINING');
    const requests = [...this.requests.values()];
    const loads = this.allInstances().filter((i) => i.residency === 'LOADING');
    const work = [...requests.map((r) => r.done), ...loads.map((l) => l.loaded)];
    let timer: NodeJS.Timeout | null = null;
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, deadlineMs);
    });
    await Promise.race([Promise.all(work), deadline]);
    if (timer !== null) clearTimeout(timer);

    const leftRequests = requests.filter((r) => this.requests.get(r.requestId) === r);
    for (const r of leftRequests) r.abort.abort(new WorkerError(status.UNAVAILABLE, 'worker is draining'));
    for (const l of loads) l.loadAbort.abort(new WorkerError(status.UNAVAILABLE, 'worker is draining'));
    await Promise.all(work);
    this.setLifecycle('DRAINED');
    return { finished: requests.length - leftRequests.length, cancelled: leftRequests.length };
  }

  // ------------------------------------------------------------ events

  snapshot(): WorkerSnapshot__Output {
    const instances = this.allInstances();
    return buildSnapshot({
      workerId: this.workerId,
      lifecycle: this.lifecycleState,
      backend: this.backend,
      devices: this.devices(instances),
      hostCacheLimit: this.hostCacheLimit,
      hostCachePinned: this.hostCachePinned,
      deviceLinks: this.deviceLinks,
      instances,
      fetchBytesPerS: this.fetchLimiter.measuredBytesPerSecond() || this.fetchRate,
    });
  }

  /** Adds a WatchEvents stream: it gets a full snapshot at once, then every event. */
  subscribe(listener: WorkerEventListener): () => void {
    this.listeners.add(listener);
    listener.onEvent({ timeMs: Date.now(), event: 'snapshot', snapshot: this.snapshot() });
    this.notifyWatcherCount();
    return () => {
      if (this.listeners.delete(listener)) this.notifyWatcherCount();
    };
  }

  /** Calls back with the number of WatchEvents streams whenever it changes. */
  onWatcherCount(callback: (count: number) => void): () => void {
    this.watcherCountListeners.add(callback);
    return () => this.watcherCountListeners.delete(callback);
  }

  private notifyWatcherCount(): void {
    for (const callback of this.watcherCountListeners) callback(this.listeners.size);
  }

  emitPhase(phase: PhaseEvent__Output): void {
    this.broadcast({ timeMs: Date.now(), event: 'phase', phase });
  }

  /** Schedules a snapshot for the watchers, coalescing changes within the debounce window. */
  changed(): void {
    if (this.snapshotTimer !== null || this.listeners.size === 0) return;
    this.snapshotTimer = setTimeout(() => this.flushSnapshot(), this.debounceMs);
  }

  /** Sends a snapshot now (for states that must not be coalesced away, like FAILED). */
  flushSnapshot(): void {
    if (this.snapshotTimer !== null) clearTimeout(this.snapshotTimer);
    this.snapshotTimer = null;
    if (this.listeners.size === 0) return;
    this.broadcast({ timeMs: Date.now(), event: 'snapshot', snapshot: this.snapshot() });
  }

  private broadcast(event: WorkerEvent__Output): void {
    for (const listener of this.listeners) listener.onEvent(event);
  }

  /** Ends every WatchEvents stream and stops timers; the worker is shutting down. */
  close(): void {
    if (this.snapshotTimer !== null) clearTimeout(this.snapshotTimer);
    this.snapshotTimer = null;
    for (const listener of [...this.listeners]) listener.onClose();
    this.listeners.clear();
    this.notifyWatcherCount();
  }
}
