// SwapIn and SwapOut: moving an instance between its host copy and a device. A swap-out stops
// the instance taking new requests, waits for the running ones to finish, disposes the stage
// (the device copy) and keeps the host buffer: the instance is HOST_ONLY. A swap-in creates
// the stage on a device and binds every tensor from the kept host buffer by the copy plan
// recorded at load time (on CUDA each bind queues an asynchronous chunked copy and a forward
// waits only for the layers it reaches, so the instance is ON_DEVICE as soon as every copy is
// queued); an instance already on another device moves through its host copy while its old
// copy keeps serving the requests running on it. Before anything is allocated the stage's
// bytes are checked against the device's free bytes (memory.ts), and a swap that cannot fit is
// refused with RESOURCE_EXHAUSTED naming both. Swaps of one instance run one after the other;
// an unload waits for the one in progress.
import { status } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { nativeStageRunner } from '../engine/generator.js';
import type { BackendName, NativeAddon, StageHandle } from '../native/addon-types.js';
import { WorkerError } from './errors.js';
import { closeStageLinks, NO_LINKS } from './links.js';
import { chooseDevice, deviceFitProblem } from './memory.js';
import type { InstanceRecord, WorkerState } from './state.js';
import { bindSlices } from './bind-slices.js';

export interface SwapDeps {
  addon: NativeAddon;
  backend: BackendName;
  state: WorkerState;
  logger: Logger;
}

/** A finished swap, as SwapReply carries it. */
export interface SwapResult {
  elapsedMs: number;
  /** Bytes copied onto the device (swap-in) or freed on it (swap-out); 0 for a no-op. */
  bytes: number;
  /**
   * Swap-in: 'host' when the stage was built from the host copy, 'peer' when it was copied from
   * the instance's other device; '' for swap-out and no-ops.
   */
  source: '' | 'host' | 'peer';
  /** Where the instance is now; -1 after a swap-out. */
  device: number;
}

/**
 * Makes a created stage, whose tensors are all bound, the instance's device copy: it serves
 * from now on. The loader and swap-ins both end here. Residency changes go out to the
 * watchers at once (not debounced), so the gateway sees them before the reply of the call.
 */
export function attachStage(addon: NativeAddon, state: WorkerState, record: InstanceRecord, stage: StageHandle): void {
  record.nativeStage = stage;
  record.measureDeviceBytes = () => addon.stageDeviceBytes(stage);
  record.deviceBytes = record.measureDeviceBytes();
  record.runner = nativeStageRunner(addon, stage);
  record.residency = 'ON_DEVICE';
  state.flushSnapshot();
}

/**
 * Disposes the instance's device copy, if any, and what serves from it (the reverse of
 * attachStage, less the accounting), its device links included: a stage swapped in again
 * sends and receives over gRPC.
 */
export function detachStage(addon: NativeAddon, record: InstanceRecord): void {
  closeStageLinks(addon, record.links);
  record.links = NO_LINKS;
  if (record.nativeStage !== null) addon.disposeStage(record.nativeStage);
  record.nativeStage = null;
  record.runner = null;
  record.measureDeviceBytes = null;
}

function unknownInstance(instanceId: string): WorkerError {
  return new WorkerError(status.NOT_FOUND, `unknown instance ${JSON.stringify(instanceId)}`);
}

/** The instance named by a swap, or NOT_FOUND (unknown, being unloaded). */
function swappable(state: WorkerState, instanceId: string): InstanceRecord {
  const record = state.instance(instanceId);
  if (record === null || record.unloading) throw unknownInstance(instanceId);
  if (record.residency === 'LOADING') throw new WorkerError(status.FAILED_PRECONDITION, `instance ${instanceId} is still loading`);
  return record;
}

/**
 * Runs `swap` once no other swap of the instance is in progress; `record.transition` is set
 * while it runs (a move keeps it set until the copy it left is gone). Rechecks the instance
 * after waiting (it may have been unloaded meanwhile). The wait is inline: between seeing no
 * transition and setting one, nothing else may run.
 */
async function exclusive<T>(state: WorkerState, record: InstanceRecord, swap: () => Promise<T>): Promise<T> {
  while (record.transition !== null) await record.transition;
  if (state.instance(record.id) !== record || record.unloading) throw unknownInstance(record.id);
  const run = swap();
  const transition = run.then(
    () => undefined,
    () => undefined,
  );
  record.transition = transition;
  try {
    return await run;
  } finally {
    if (record.transition === transition) record.transition = null;
  }
}

/**
 * Drops the device copy once the instance's running requests have finished (it takes no new
 * ones meanwhile); the host copy stays. Resolves to the device bytes freed.
 */
async function dropDeviceCopy(deps: SwapDeps, record: InstanceRecord): Promise<number> {
  record.swappingOut = true;
  deps.state.changed();
  try {
    const running = deps.state.requestsOf(record.id);
    if (running.length > 0) deps.logger.debug({ instance: record.id, requests: running.length }, 'swap-out waits for running requests');
    await Promise.all(running.map((r) => r.done));
    const freed = record.measureDeviceBytes?.() ?? record.deviceBytes;
    detachStage(deps.addon, record);
    record.deviceBytes = 0;
    record.device = -1;
    record.residency = 'HOST_ONLY';
    return freed;
  } finally {
    record.swappingOut = false;
    deps.state.flushSnapshot();
  }
}

/** Throws RESOURCE_EXHAUSTED unless `bytes` of the instance fit in `device`'s free bytes now. */
export function checkRoom(state: WorkerState, instanceId: string, bytes: number, device: number): void {
  const problem = deviceFitProblem(instanceId, bytes, state.currentDevices().find((d) => d.index === device)!);
  if (problem !== null) throw new WorkerError(status.RESOURCE_EXHAUSTED, problem);
}

/**
 * Creates the instance's stage on `device` and binds every tensor from its host copy. The
 * caller accounts the bytes; on failure the stage is disposed and an out-of-memory device
 * becomes RESOURCE_EXHAUSTED. Resolves to the stage and the bytes copied.
 */
async function buildStage(deps: SwapDeps, record: InstanceRecord, device: number): Promise<{ stage: StageHandle; copied: number }> {
  const { addon } = deps;
  const buffer = record.hostBuffer;
  const spec = record.stageSpec;
  if (buffer === null || spec === null) throw new WorkerError(status.FAILED_PRECONDITION, `instance ${record.id} has no host copy`);
  let stage: StageHandle | null = null;
  try {
    await addon.prepareDevice(deps.backend, device);
    stage = addon.createStage({ ...spec, device });
    const copyStarted = performance.now();
    let copied = 0;
    const endOfBind = bindSlices();
    for (const t of record.hostTensors) {
      addon.bindTensor(stage, { name: t.name, dtype: t.dtype, shape: t.shape, buffer, offset: t.offset });
      copied += t.bytes;
      await endOfBind();
    }
    const missing = addon.missingTensors(stage);
    if (missing.length > 0) throw new WorkerError(status.INTERNAL, `the host copy of instance ${record.id} lacks tensors: ${missing.join(', ')}`);
    // Copies still in flight (CUDA) finish in the background; how long they took is logged.
    addon.awaitStageCopies(stage).then(
      () => deps.logger.debug({ instance: record.id, device, bytes: copied, copyMs: performance.now() - copyStarted }, 'swap-in copies landed'),
      () => undefined,
    );
    return { stage, copied };
  } catch (e) {
    if (stage !== null) addon.disposeStage(stage);
    if (e instanceof Error && e.name === 'OutOfMemoryError') {
      throw new WorkerError(status.RESOURCE_EXHAUSTED, `instance ${record.id} needs ${record.weightBytes} bytes on device ${device}: ${e.message}`, { cause: e });
    }
    throw e;
  }
}

/** HOST_ONLY → `device`: its weight bytes are reserved there while the stage is built. */
async function placeOnDevice(deps: SwapDeps, record: InstanceRecord, device: number): Promise<number> {
  checkRoom(deps.state, record.id, record.weightBytes, device);
  record.device = device;
  record.deviceBytes = record.weightBytes;
  deps.state.changed();
  try {
    const { stage, copied } = await buildStage(deps, record, device);
    attachStage(deps.addon, deps.state, record, stage);
    return copied;
  } catch (e) {
    record.device = -1;
    record.deviceBytes = 0;
    deps.state.changed();
    throw e;
  }
}

/**
 * ON_DEVICE → another `device`, without waiting for the instance to be idle: the stage is
 * built on the target while the old one keeps serving, then new requests go to the new one,
 * and the old one is disposed once the requests running on it end. Both copies are accounted
 * meanwhile (secondCopy). Resolves to the bytes copied and a promise of the old copy's end.
 */
async function moveToDevice(
  deps: SwapDeps,
  record: InstanceRecord,
  device: number,
): Promise<{ copied: number; source: 'host' | 'peer'; retired: Promise<void> }> {
  checkRoom(deps.state, record.id, record.weightBytes, device);
  record.secondCopy = { device, bytes: record.weightBytes };
  deps.state.changed();
  // A device-to-device copy where the GPUs have peer access (NVLink or PCIe P2P, faster than
  // going through host memory again); the host copy otherwise.
  const peer = deps.addon.peerAccess(deps.backend, record.device, device);
  let built: { stage: StageHandle; copied: number };
  try {
    built = peer ? { stage: deps.addon.cloneStage(record.nativeStage!, device), copied: record.weightBytes } : await buildStage(deps, record, device);
  } catch (e) {
    record.secondCopy = null;
    deps.state.changed();
    throw e;
  }
  const old = record.nativeStage!;
  const from = record.device;
  const running = deps.state.requestsOf(record.id);
  record.secondCopy = { device: from, bytes: record.measureDeviceBytes?.() ?? record.deviceBytes };
  record.device = device;
  attachStage(deps.addon, deps.state, record, built.stage);
  const retired = Promise.all(running.map((r) => r.done))
    .then(() => {
      try {
        deps.addon.disposeStage(old);
      } finally {
        record.secondCopy = null;
        deps.state.changed();
      }
    })
    .catch((e: unknown) => deps.logger.error({ instance: record.id, device: from, err: e }, 'disposing the copy a moved instance left failed'));
  return { copied: built.copied, source: peer ? 'peer' : 'host', retired };
}

/**
 * SwapIn: puts the instance on `requested` (-1: the device with the most free bytes) from its
 * host copy. On the device already (or -1 while on one): a no-op. On another device: moved
 * there by a device-to-device copy where the GPUs have peer access, else through the host
 * copy (the reply comes once the new copy serves; the old one goes when its running requests
 * end, and the next swap of the instance waits for that).
 */
export function swapIn(deps: SwapDeps, instanceId: string, requested: number): Promise<SwapResult> {
  const started = performance.now();
  const record = swappable(deps.state, instanceId);
  return exclusive(deps.state, record, async () => {
    if (record.residency === 'ON_DEVICE' && (requested === -1 || requested === record.device)) {
      return { elapsedMs: performance.now() - started, bytes: 0, source: '', device: record.device };
    }
    const device = chooseDevice(requested, deps.state.currentDevices());
    if (typeof device === 'string') throw new WorkerError(status.INVALID_ARGUMENT, device);
    const from = record.device;
    let bytes: number;
    let source: 'host' | 'peer' = 'host';
    if (record.residency === 'ON_DEVICE') {
      const move = await moveToDevice(deps, record, device);
      bytes = move.copied;
      source = move.source;
      const settled = move.retired;
      record.transition = settled;
      void settled.then(() => {
        if (record.transition === settled) record.transition = null;
      });
    } else {
      bytes = await placeOnDevice(deps, record, device);
    }
    const elapsedMs = performance.now() - started;
    deps.logger.info({ instance: instanceId, from, device, source, bytes, elapsedMs: Math.round(elapsedMs) }, 'swapped in');
    return { elapsedMs, bytes, source, device };
  });
}

/** SwapOut: drops the device copy (after the running requests); HOST_ONLY already: a no-op. */
export function swapOut(deps: SwapDeps, instanceId: string): Promise<SwapResult> {
  const started = performance.now();
  const record = swappable(deps.state, instanceId);
  return exclusive(deps.state, record, async () => {
    if (record.residency !== 'ON_DEVICE') return { elapsedMs: performance.now() - started, bytes: 0, source: '', device: -1 };
    const from = record.device;
    const bytes = await dropDeviceCopy(deps, record);
    const elapsedMs = performance.now() - started;
    deps.logger.info({ instance: instanceId, from, bytes, elapsedMs: Math.round(elapsedMs) }, 'swapped out');
    return { elapsedMs, bytes, source: '', device: -1 };
  });
}

/** Waits for a swap of the instance in progress, if any (unload calls it before freeing). */
export async function swapSettled(record: InstanceRecord): Promise<void> {
  while (record.transition !== null) await record.transition;
}
