// The worker's state as the gateway sees it (WorkerSnapshot of the proto), computed from plain
// data by pure functions: the registry (state.ts) gathers the facts, these helpers shape
// them, and the gateway's scheduler reads the result. Keeping this pure lets tests check the
// accounting (host cache, free device bytes, active requests) without a worker.
import type { Device__Output } from '../../protos/generated/paraserve/v1/Device.js';
import type { InstanceState__Output } from '../../protos/generated/paraserve/v1/InstanceState.js';
import type { StageRange__Output } from '../../protos/generated/paraserve/v1/StageRange.js';
import type { WorkerSnapshot__Output } from '../../protos/generated/paraserve/v1/WorkerSnapshot.js';
import type { BackendName, DeviceInfo } from '../native/addon-types.js';

export type Lifecycle = 'STARTING' | 'READY' | 'DRAINING' | 'DRAINED';
export type Residency = 'LOADING' | 'ON_DEVICE' | 'HOST_ONLY' | 'FAILED';

/** What the snapshot needs to know of one instance. */
export interface InstanceFacts {
  id: string;
  model: string;
  stage: StageRange__Output;
  /** Device index of its device copy (reserved while loading or swapping in); -1 while HOST_ONLY. */
  device: number;
  residency: Residency;
  deviceBytes: number;
  /** Host cache bytes held (reserved from the moment a load knows its size). */
  hostBytes: number;
  activeRequests: number;
  /** Why it failed; '' otherwise. */
  error: string;
  /**
   * Worker wall clock (ms since the epoch) when a request last started or ended on it; the
   * time it became ready until then. The host cache evicts the oldest first.
   */
  lastUsedMs: number;
  /**
   * A second device copy while the instance moves between devices: the one being built on the
   * target, then the one it left until the requests running there end; null otherwise.
   */
  secondCopy: { device: number; bytes: number } | null;
}

/** The host's CPU as a device, for the CPU backend: memory is the machine's RAM. */
export interface CpuFacts {
  name: string;
  totalBytes: number;
  freeBytes: number;
}

export interface SnapshotFacts {
  workerId: string;
  lifecycle: Lifecycle;
  backend: BackendName;
  devices: Device__Output[];
  hostCacheLimit: number;
  /** Whether the host pool is page-locked (false where pinning failed or was not asked). */
  hostCachePinned: boolean;
  /** Whether its stages can open device links to other workers' stages. */
  deviceLinks: boolean;
  instances: readonly InstanceFacts[];
  fetchBytesPerS: number;
}

/** GPU memory left to the CUDA context, cuBLAS and allocator slack when no budget is configured. */
const CUDA_RUNTIME_RESERVE_BYTES = 2 * 1024 ** 3;

/** Device bytes the worker's instances hold (or have reserved) on one device. */
export function deviceHeldBytes(instances: readonly InstanceFacts[], device: number): number {
  return instances.reduce(
    (sum, i) => sum + (i.device === device ? i.deviceBytes : 0) + (i.secondCopy !== null && i.secondCopy.device === device ? i.secondCopy.bytes : 0),
    0,
  );
}

/**
 * The devices a snapshot reports, and the capacity loads and swaps are checked against (one
 * source for both). CPU backend: one device whose free bytes are the given figure (the OS's,
 * or a configured budget) minus what instances hold on it — conservative, as the OS figure
 * may already count them. CUDA: the addon's devices, each with the configured budget (or
 * its size less a reserve for the runtime) minus what the worker's stages hold there. The
 * driver's free figure is not used: device memory the worker freed stays in its allocator's
 * pool for the next swap-in, so the driver counts it as used although it is the worker's.
 */
export function workerDevices(
  backend: BackendName,
  nativeDevices: readonly DeviceInfo[],
  cpu: CpuFacts,
  budgetBytes: number | null,
  instances: readonly InstanceFacts[],
): Device__Output[] {
  if (backend === 'cpu') {
    const held = deviceHeldBytes(instances, 0);
    return [{ index: 0, kind: 'cpu', name: cpu.name, totalBytes: cpu.totalBytes, freeBytes: Math.max(0, cpu.freeBytes - held) }];
  }
  return nativeDevices.map((d) => {
    const usable = budgetBytes ?? Math.max(0, d.totalBytes - CUDA_RUNTIME_RESERVE_BYTES);
    return { index: d.index, kind: d.kind, name: d.name, totalBytes: usable, freeBytes: Math.max(0, usable - deviceHeldBytes(instances, d.index)) };
  });
}

export function instanceState(instance: InstanceFacts): InstanceState__Output {
  return {
    instanceId: instance.id,
    model: instance.model,
    stage: { ...instance.stage },
    device: instance.device,
    residency: instance.residency,
    deviceBytes: instance.deviceBytes,
    hostBytes: instance.hostBytes,
    activeRequests: instance.activeRequests,
    error: instance.error,
    lastUsedMs: instance.lastUsedMs,
  };
}

export function hostCacheBytes(instances: readonly InstanceFacts[]): number {
  return instances.reduce((sum, i) => sum + i.hostBytes, 0);
}

export function buildSnapshot(facts: SnapshotFacts): WorkerSnapshot__Output {
  return {
    workerId: facts.workerId,
    state: facts.lifecycle,
    backend: facts.backend,
    devices: facts.devices,
    hostCacheBytes: hostCacheBytes(facts.instances),
    hostCacheLimit: facts.hostCacheLimit,
    instances: facts.instances.map(instanceState),
    activeRequests: facts.instances.reduce((sum, i) => sum + i.activeRequests, 0),
    fetchBytesPerS: facts.fetchBytesPerS,
    hostCachePinned: facts.hostCachePinned,
    deviceLinks: facts.deviceLinks,
  };
}
