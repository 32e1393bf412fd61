// The host cache: every instance's host copy lives in one buffer carved out of the host pool
// (configured once at worker start, pinned on CUDA). A new copy that does not fit — under the
// configured limit by the worker's accounting, or in the pool itself, which may be fragmented
// — first evicts idle HOST_ONLY instances, least recently used first (memory.ts decides which),
// and fails with RESOURCE_EXHAUSTED naming the bytes needed and free only when none is left.
// An evicted instance is gone from the worker (the gateway sees it leave in the next snapshot);
// instances on a device keep their copies, which are what their swap-out falls back to.
import { status } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { HostBufferHandle, NativeAddon } from '../native/addon-types.js';
import { WorkerError } from './errors.js';
import { hostCacheProblem, nextEviction, type EvictionFacts } from './memory.js';
import { detachStage } from './swap.js';
import type { InstanceRecord, WorkerState } from './state.js';

export interface HostCacheDeps {
  addon: NativeAddon;
  state: WorkerState;
  logger: Logger;
}

/** Frees what an instance holds natively (its stage, then its host buffer). */
export function releaseNative(addon: NativeAddon, record: InstanceRecord): void {
  detachStage(addon, record);
  if (record.hostBuffer !== null) addon.freeHostBuffer(record.hostBuffer);
  record.hostBuffer = null;
}

function evictionFacts(record: InstanceRecord): EvictionFacts {
  return {
    id: record.id,
    residency: record.residency,
    hostBytes: record.hostBytes,
    activeRequests: record.activeRequests,
    lastUsedMs: record.lastUsedMs,
    busy: record.transition !== null || record.unloading,
  };
}

/** Evicts the least recently used idle HOST_ONLY instance other than `record`; false when there is none. */
function evictOne(deps: HostCacheDeps, record: InstanceRecord, why: string): boolean {
  const victim = nextEviction(deps.state.allInstances().map(evictionFacts), record.id);
  const evicted = victim === null ? null : deps.state.instance(victim.id);
  if (evicted === null) return false;
  const freed = evicted.hostBytes;
  releaseNative(deps.addon, evicted);
  deps.state.removeInstance(evicted);
  deps.state.flushSnapshot();
  deps.logger.info({ instance: evicted.id, model: evicted.model, freedBytes: freed, lastUsedMs: evicted.lastUsedMs, for: record.id, why }, 'host copy evicted');
  return true;
}

function isOutOfMemory(e: unknown): boolean {
  return e instanceof Error && e.name === 'OutOfMemoryError';
}

/**
 * Allocates `bytes` of host cache for `record`'s host copy (accounted to it from now on),
 * evicting as needed. Throws RESOURCE_EXHAUSTED when the copy cannot fit even with every idle
 * HOST_ONLY instance evicted; other allocation failures are rethrown.
 */
export function allocateHostCopy(deps: HostCacheDeps, record: InstanceRecord, bytes: number): HostBufferHandle {
  const { state, addon } = deps;
  for (;;) {
    const problem = hostCacheProblem(record.id, bytes, state.hostCacheBytes() - record.hostBytes, state.hostCacheLimit);
    if (problem !== null) {
      if (evictOne(deps, record, 'host cache limit')) continue;
      throw new WorkerError(status.RESOURCE_EXHAUSTED, problem);
    }
    try {
      const buffer = addon.allocHostBuffer(bytes, true);
      record.hostBytes = bytes;
      state.changed();
      return buffer;
    } catch (e) {
      if (!isOutOfMemory(e)) throw e;
      if (evictOne(deps, record, 'host pool full')) continue;
      const pool = addon.hostPoolInfo();
      const free = pool === null ? 'unknown' : `${pool.freeBytes} of ${pool.bytes} (largest free range ${pool.largestFreeBytes})`;
      throw new WorkerError(
        status.RESOURCE_EXHAUSTED,
        `host cache full: instance ${record.id} needs ${bytes} bytes, the host pool has ${free} bytes free and no idle host-only instance is left to evict (${e instanceof Error ? e.message : String(e)})`,
        { cause: e },
      );
    }
  }
}
