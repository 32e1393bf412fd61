// The gateway's picture of one worker, as plain data: what the scheduler decides over and what
// GET /admin/workers shows. Built only from the worker's own WatchEvents snapshots (plus the
// gateway's DOWN verdict when the stream breaks), so it never guesses at worker internals.
import type { WorkerSnapshot__Output } from '../../protos/generated/paraserve/v1/WorkerSnapshot.js';

/** The worker's WorkerState, plus DOWN: the gateway lost its event stream. */
export type WorkerStateName = 'STARTING' | 'READY' | 'DRAINING' | 'DRAINED' | 'DOWN';

export type Residency = 'LOADING' | 'ON_DEVICE' | 'HOST_ONLY' | 'FAILED' | 'UNKNOWN';

export interface DeviceView {
  index: number;
  kind: string;
  name: string;
  totalBytes: number;
  /** As the worker accounts it (weights and KV caches it placed there). */
  freeBytes: number;
}

export interface StageView {
  layerStart: number;
  layerEnd: number;
  hasEmbeddings: boolean;
  hasHead: boolean;
  stageIndex: number;
  stageCount: number;
}

export interface InstanceView {
  instanceId: string;
  model: string;
  stage: StageView | null;
  device: number;
  residency: Residency;
  deviceBytes: number;
  hostBytes: number;
  activeRequests: number;
  /** Why the instance FAILED; null otherwise. */
  error: string | null;
  /** Worker wall clock (ms since the epoch) of the instance's last request; 0 when it has had none. */
  lastUsedMs: number;
}

export interface WorkerView {
  id: string;
  /** gRPC host:port. */
  address: string;
  backend: string;
  state: WorkerStateName;
  devices: DeviceView[];
  instances: InstanceView[];
  activeRequests: number;
  hostCacheBytes: number;
  hostCacheLimit: number;
  /** false where pinning the host pool failed and it is pageable. */
  hostCachePinned: boolean;
  /** Its stages can open NCCL links to other workers' stages (a pipeline hop between two such workers gets one). */
  deviceLinks: boolean;
  /** Last measured fetch bandwidth; 0 when unknown. */
  fetchBytesPerS: number;
  /** Gateway clock (ms since the epoch) of the last event or registration. */
  lastSeenMs: number;
}

export function registeredView(id: string, address: string, backend: string, nowMs: number): WorkerView {
  return {
    id,
    address,
    backend,
    state: 'STARTING',
    devices: [],
    instances: [],
    activeRequests: 0,
    hostCacheBytes: 0,
    hostCacheLimit: 0,
    hostCachePinned: false,
    deviceLinks: false,
    fetchBytesPerS: 0,
    lastSeenMs: nowMs,
  };
}

function workerState(s: WorkerSnapshot__Output['state']): WorkerStateName {
  return s === 'WORKER_STATE_UNSPECIFIED' ? 'STARTING' : s;
}

function residency(r: WorkerSnapshot__Output['instances'][number]['residency']): Residency {
  return r === 'RESIDENCY_UNSPECIFIED' ? 'UNKNOWN' : r;
}

/** The view after a snapshot: the snapshot replaces everything the worker reports. */
export function applySnapshot(view: WorkerView, snap: WorkerSnapshot__Output, nowMs: number): WorkerView {
  return {
    ...view,
    backend: snap.backend || view.backend,
    state: workerState(snap.state),
    devices: snap.devices.map((d) => ({
      index: d.index,
      kind: d.kind,
      name: d.name,
      totalBytes: d.totalBytes,
      freeBytes: d.freeBytes,
    })),
    instances: snap.instances.map((i) => ({
      instanceId: i.instanceId,
      model: i.model,
      stage: i.stage ? { ...i.stage } : null,
      device: i.device,
      residency: residency(i.residency),
      deviceBytes: i.deviceBytes,
      hostBytes: i.hostBytes,
      activeRequests: i.activeRequests,
      error: i.error === '' ? null : i.error,
      lastUsedMs: i.lastUsedMs,
    })),
    activeRequests: snap.activeRequests,
    hostCacheBytes: snap.hostCacheBytes,
    hostCacheLimit: snap.hostCacheLimit,
    hostCachePinned: snap.hostCachePinned,
    deviceLinks: snap.deviceLinks,
    fetchBytesPerS: snap.fetchBytesPerS,
    lastSeenMs: nowMs,
  };
}
