// Loads the native addon (native/build/Release/paraserve.node) once per process and wraps
// each export so native errors, thrown or rejected, become the typed classes of errors.ts.
// A native crash cannot be caught, so the first load in a process test-loads the binary
// in a short-lived child first: a broken or mismatched build fails with a clear error
// instead of killing the worker. Also decides which backend a worker runs stages on.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import type { BackendName, BuildInfo, NativeAddon } from './addon-types.js';
import { BackendUnavailableError, NativeError, mapNativeError } from './errors.js';

const ADDON_PATH_IN_REPO = path.join('native', 'build', 'Release', 'paraserve.node');

/** Every export of NativeAddon; the Record type makes the compiler check the list is complete. */
const EXPORTS: Record<keyof NativeAddon, true> = {
  buildInfo: true,
  listDevices: true,
  allocHostBuffer: true,
  hostBufferInfo: true,
  writeHostBuffer: true,
  copyHostBuffer: true,
  freeHostBuffer: true,
  configureHostPool: true,
  hostPoolInfo: true,
  prepareDevice: true,
  createStage: true,
  cloneStage: true,
  peerAccess: true,
  bindTensor: true,
  missingTensors: true,
  forward: true,
  forwardBatch: true,
  forwardToLink: true,
  linksAvailable: true,
  linkUniqueId: true,
  openLink: true,
  closeLink: true,
  releaseSequence: true,
  stageDeviceBytes: true,
  awaitStageCopies: true,
  warmUpStage: true,
  disposeStage: true,
  measureHostToDevice: true,
  measureDeviceMemory: true,
  notifySystemd: true,
};

let loaded: NativeAddon | null = null;

/** The addon, loaded (and test-loaded in a child) on first call. Throws NativeError when the binary is missing or broken. */
export function loadNativeAddon(): NativeAddon {
  if (loaded === null) {
    const file = findAddonFile(path.dirname(fileURLToPath(import.meta.url)));
    testLoadInChild(file);
    // OpenMP reads its settings when the addon loads it. Its default lets idle threads spin,
    // which on a server shared by several processes (pipeline stages, gateway) turns a first
    // forward of tens of ms into hundreds; an operator's own setting still wins.
    process.env.OMP_WAIT_POLICY ??= 'PASSIVE';
    const raw: unknown = createRequire(import.meta.url)(file);
    loaded = wrapAddon(raw, file);
  }
  return loaded;
}

export interface BackendChoice {
  backend: BackendName;
  /** Why, for logs and `workers ls`. */
  reason: string;
}

/** Picks the backend stages run on: 'auto' takes CUDA only when it can run stages and a GPU is present. */
export function chooseBackend(preference: 'auto' | 'cpu' | 'cuda'): BackendChoice {
  const addon = loadNativeAddon();
  const info = addon.buildInfo();
  let cudaDevices = 0;
  let cudaQueryError: string | null = null;
  if (preference !== 'cpu' && info.backends.includes('cuda')) {
    try {
      cudaDevices = addon.listDevices('cuda').length;
    } catch (e) {
      cudaQueryError = e instanceof Error ? e.message : String(e);
    }
  }
  return decideBackend(preference, info, cudaDevices, cudaQueryError);
}

/**
 * The pure part of chooseBackend. cudaQueryError is set when listing CUDA devices failed.
 * Throws BackendUnavailableError when 'cuda' was asked for and cannot be had.
 */
export function decideBackend(
  preference: 'auto' | 'cpu' | 'cuda',
  info: BuildInfo,
  cudaDevices: number,
  cudaQueryError: string | null,
): BackendChoice {
  if (preference === 'cpu') return { backend: 'cpu', reason: 'cpu backend requested' };
  let unavailable: string | null = null;
  if (!info.backends.includes('cuda')) {
    unavailable = `CUDA backend not compiled in: ${info.cudaSkippedReason ?? 'unknown reason'}`;
  } else if (!info.stageBackends.includes('cuda')) {
    unavailable = 'CUDA backend is compiled in but cannot execute stages yet';
  } else if (cudaQueryError !== null) {
    unavailable = `listing CUDA devices failed: ${cudaQueryError}`;
  } else if (cudaDevices === 0) {
    unavailable = 'no CUDA device found';
  }
  if (unavailable === null) {
    return { backend: 'cuda', reason: `${cudaDevices} CUDA device(s) found` };
  }
  if (preference === 'cuda') throw new BackendUnavailableError(`cuda backend requested but ${unavailable}`);
  return { backend: 'cpu', reason: unavailable };
}

/** Walks up from dir to the directory holding native/build/Release/paraserve.node (works from source and from dist/). */
function findAddonFile(dir: string): string {
  for (let current = dir; ; current = path.dirname(current)) {
    const candidate = path.join(current, ADDON_PATH_IN_REPO);
    if (existsSync(candidate)) return candidate;
    if (path.dirname(current) === current) break;
  }
  throw new NativeError(`native addon ${ADDON_PATH_IN_REPO} not found above ${dir}: run npm run build:native`);
}

/** Requires file in a child process; throws NativeError when that child fails or crashes. Exported for tests. */
export function testLoadInChild(file: string): void {
  const env = { ...process.env };
  delete env['NODE_OPTIONS'];
  const child = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(file)})`], {
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
    encoding: 'utf8',
    timeout: 60_000,
  });
  if (child.error !== undefined) {
    throw new NativeError(`could not test-load ${file} in a child process: ${child.error.message}`);
  }
  if (child.status !== 0) {
    const how = child.signal !== null ? `was killed by ${child.signal}` : `exited with ${child.status}`;
    const lastLine = child.stderr.trim().split('\n').pop() ?? '';
    throw new NativeError(`native addon ${file} is broken: loading it in a child process ${how}: ${lastLine}`);
  }
}

function wrapAddon(raw: unknown, file: string): NativeAddon {
  if (typeof raw !== 'object' || raw === null) throw new NativeError(`${file} did not export an object`);
  const exports = raw as Record<string, unknown>;
  const missing = Object.keys(EXPORTS).filter((name) => typeof exports[name] !== 'function');
  if (missing.length > 0) {
    throw new NativeError(`${file} lacks exports ${missing.join(', ')}: rebuild it (npm run build:native)`);
  }
  const addon = raw as NativeAddon;
  return {
    buildInfo: guard(addon.buildInfo),
    listDevices: guard(addon.listDevices),
    allocHostBuffer: guard(addon.allocHostBuffer),
    hostBufferInfo: guard(addon.hostBufferInfo),
    writeHostBuffer: guard(addon.writeHostBuffer),
    copyHostBuffer: guard(addon.copyHostBuffer),
    freeHostBuffer: guard(addon.freeHostBuffer),
    configureHostPool: guard(addon.configureHostPool),
    hostPoolInfo: guard(addon.hostPoolInfo),
    prepareDevice: guard(addon.prepareDevice),
    createStage: guard(addon.createStage),
    cloneStage: guard(addon.cloneStage),
    peerAccess: guard(addon.peerAccess),
    bindTensor: guard(addon.bindTensor),
    missingTensors: guard(addon.missingTensors),
    forward: guard(addon.forward),
    forwardBatch: guard(addon.forwardBatch),
    forwardToLink: guard(addon.forwardToLink),
    linksAvailable: guard(addon.linksAvailable),
    linkUniqueId: guard(addon.linkUniqueId),
    openLink: guard(addon.openLink),
    closeLink: guard(addon.closeLink),
    releaseSequence: guard(addon.releaseSequence),
    stageDeviceBytes: guard(addon.stageDeviceBytes),
    awaitStageCopies: guard(addon.awaitStageCopies),
    warmUpStage: guard(addon.warmUpStage),
    disposeStage: guard(addon.disposeStage),
    measureHostToDevice: guard(addon.measureHostToDevice),
    measureDeviceMemory: guard(addon.measureDeviceMemory),
    notifySystemd: guard(addon.notifySystemd),
  };
}

/** Maps what fn throws, and what a promise it returns rejects with, through mapNativeError. */
function guard<A extends unknown[], R>(fn: (...args: A) => R): (...args: A) => R {
  return (...args: A): R => {
    let result: R;
    try {
      result = fn(...args);
    } catch (e) {
      throw mapNativeError(e);
    }
    if (result instanceof Promise) {
      return result.catch((e: unknown) => {
        throw mapNativeError(e);
      }) as R;
    }
    return result;
  };
}
