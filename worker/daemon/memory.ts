// What fits where: the worker's decisions about its two kinds of memory, as pure functions over
// the instances' facts. Device memory is accounted per device index — the bytes the worker's
// stages hold there (weights plus KV caches, measured through stageDeviceBytes, or reserved
// while a stage is being created) against the device's capacity as snapshot.ts reports it —
// so a load or a swap-in that cannot fit is refused with the bytes needed and free before
// anything is allocated. The host cache holds every instance's host copy up to its limit;
// when a new copy does not fit, the least recently used HOST_ONLY instance goes first
// (instances on a device keep theirs: it is what a swap-out falls back to). swap.ts and
// loader.ts carry these decisions out.
import type { Device__Output } from '../../protos/generated/paraserve/v1/Device.js';
import type { TensorInfo } from '../models/safetensors.js';
import { DTYPE_BYTES } from '../models/safetensors.js';
import type { DeviceInfo, DType } from '../native/addon-types.js';
import type { InstanceFacts } from './snapshot.js';

/** An instance as eviction sees it: facts plus whether something else is using it now. */
export interface EvictionFacts extends Pick<InstanceFacts, 'id' | 'residency' | 'hostBytes' | 'activeRequests' | 'lastUsedMs'> {
  /** A swap, unload or load of it is in progress: it is not evictable. */
  busy: boolean;
}

/**
 * Pure: the instance to evict next from the host cache to make room for `forInstance`: the
 * HOST_ONLY instance used least recently (ties: the larger copy first), idle and holding a
 * host copy; null when none is left.
 */
export function nextEviction(instances: readonly EvictionFacts[], forInstance: string): EvictionFacts | null {
  let best: EvictionFacts | null = null;
  for (const i of instances) {
    if (i.id === forInstance || i.residency !== 'HOST_ONLY' || i.busy || i.activeRequests > 0 || i.hostBytes === 0) continue;
    if (best === null || i.lastUsedMs < best.lastUsedMs || (i.lastUsedMs === best.lastUsedMs && i.hostBytes > best.hostBytes)) best = i;
  }
  return best;
}

/**
 * Pure: whether `bytes` more of host cache fit under `limit` next to what the other instances
 * hold (`inUse`), or the message saying why not.
 */
export function hostCacheProblem(instanceId: string, bytes: number, inUse: number, limit: number): string | null {
  if (inUse + bytes <= limit) return null;
  return `host cache full: instance ${instanceId} needs ${bytes} bytes, ${Math.max(0, limit - inUse)} of ${limit} are free and no idle host-only instance is left to evict`;
}

/**
 * Pure: why a stage needing `neededBytes` does not fit on `device` (the snapshot's view, whose
 * free bytes already leave out what the worker holds there), or null when it fits.
 */
export function deviceFitProblem(instanceId: string, neededBytes: number, device: Device__Output): string | null {
  if (neededBytes <= device.freeBytes) return null;
  return `instance ${instanceId} needs ${neededBytes} bytes on device ${device.index} (${device.kind}), ${device.freeBytes} of ${device.totalBytes} are free`;
}

/**
 * Pure: the device bytes a stage's weights take once bound, before any KV cache: each tensor
 * converted to the stage's compute dtype. A lower bound of what createStage and bindTensor
 * allocate, used to refuse a load that cannot fit before it fetches anything.
 */
export function estimateWeightBytes(tensors: readonly Pick<TensorInfo, 'shape'>[], computeDType: DType): number {
  return tensors.reduce((sum, t) => sum + t.shape.reduce((n, d) => n * d, 1) * DTYPE_BYTES[computeDType], 0);
}

/** Pure: the device a stage goes to; -1 picks the one with the most free bytes. */
export function chooseDevice(requested: number, devices: readonly Pick<DeviceInfo, 'index' | 'freeBytes'>[]): number | string {
  if (devices.length === 0) return 'the backend has no devices';
  if (requested === -1) {
    return devices.reduce((best, d) => (d.freeBytes > best.freeBytes ? d : best)).index;
  }
  if (!devices.some((d) => d.index === requested)) {
    return `device ${requested} does not exist (devices: ${devices.map((d) => d.index).join(', ')})`;
  }
  return requested;
}
