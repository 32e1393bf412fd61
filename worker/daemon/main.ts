// Starting and stopping a worker daemon: pick the compute backend, allocate the host cache's
// pool (pinned on CUDA), bind the gRPC service, tell systemd we are ready, register with the
// gateway; on close, drain (in-flight requests finish, new ones get UNAVAILABLE), free every
// instance and stop the server. The `paraserve
// worker` CLI command and `paraserve up` call startWorker; runWorkerProcess adds the signal
// handling of a standalone daemon process.
import os from 'node:os';
import * as grpc from '@grpc/grpc-js';
import { pino, type Logger } from 'pino';
import { loadParaserveProto } from '../../protos/load.js';
import { DEFAULT_SOURCE_OPTIONS } from '../models/source.js';
import { FetchLimiter } from '../models/throttle.js';
import { chooseBackend, loadNativeAddon } from '../native/addon.js';
import type { BackendName, HostPoolInfo, NativeAddon } from '../native/addon-types.js';
import { advertisedHost, formatAddress } from './address.js';
import { DEFAULT_FETCH_THREADS, startFetchThreads } from './fetch-threads.js';
import { releaseNative } from './host-cache.js';
import { MAX_ACTIVATION_MESSAGE_BYTES } from './pipeline.js';
import { GatewayRegistration } from './registration.js';
import { workerHandlers } from './service.js';
import { workerDevices, type CpuFacts } from './snapshot.js';
import { WorkerState } from './state.js';
import { swapSettled } from './swap.js';

export interface WorkerOptions {
  /** Stable id in the cluster; null: `<hostname>-<port>`. */
  id: string | null;
  /** Address to bind; also advertised to the gateway unless it is a wildcard. */
  host: string;
  /** gRPC port; 0 picks a free one. */
  port: number;
  /** Gateway to register with; null runs unregistered (tests, manual use). */
  gatewayUrl: string | null;
  backend: 'auto' | 'cpu' | 'cuda';
  /**
   * Size of the host-memory model cache, in bytes: the host pool allocated (pinned on CUDA)
   * at start, which every instance's host copy is carved out of.
   */
  hostCacheBytes: number;
  /** KV cache capacity per sequence for loads that do not ask for one. */
  maxContext: number;
  /** How long close() (and a Drain without deadline) waits for in-flight requests. */
  drainTimeoutMs: number;
  /** pino level: fatal, error, warn, info, debug, trace or silent. */
  logLevel: string;
  /** Cap on the bytes per second all of the worker's fetches share; null: no cap. */
  fetchBandwidthBytesPerS: number | null;
  /** Loads overlap fetch, runtime init and copy; false runs them one after another (baselines). */
  loadOverlap: boolean;
  /**
   * A fetch fails when its source sends nothing for this long (connect, headers, between
   * chunks). Absent: the model sources' default (30 s). (Optional until every caller sets it.)
   */
  fetchStallTimeoutMs?: number;
  /**
   * The memory budget of each device that loads and swap-ins are accounted against, instead
   * of the device's own size (a share of a GPU, experiments with many models per GPU, tests
   * on the CPU backend). Absent or null: the device's figures. (Optional until every caller
   * sets it.)
   */
  deviceMemoryBytes?: number | null;
  /**
   * Threads that receive and hash fetched bytes (fetch-threads.ts); workers in one process
   * share them. Absent: DEFAULT_FETCH_THREADS. (Optional until every caller sets it.)
   */
  fetchThreads?: number;
}

export interface RunningWorker {
  id: string;
  /** host:port of the gRPC service, as advertised to the gateway. */
  address: string;
  /** Drains, frees every instance and stops the server; idempotent. */
  close(): Promise<void>;
}

const FETCH_CONCURRENCY = 4;
const SNAPSHOT_DEBOUNCE_MS = 25;
const SHUTDOWN_GRACE_MS = 2_000;

function bindServer(server: grpc.Server, address: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (error, port) => (error ? reject(error) : resolve(port)));
  });
}

function shutdownServer(server: grpc.Server, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

function cpuFacts(name: string, budgetBytes: number | null): CpuFacts {
  if (budgetBytes !== null) return { name, totalBytes: budgetBytes, freeBytes: budgetBytes };
  return { name, totalBytes: os.totalmem(), freeBytes: os.freemem() };
}

/** What a worker runs on: the native addon, the backend chosen for it, where logs go. */
export interface WorkerRuntime {
  addon: NativeAddon;
  backend: BackendName;
  logger: Logger;
}

/** Starts a worker on the native addon, with pino JSON logs on stdout. */
export async function startWorker(opts: WorkerOptions): Promise<RunningWorker> {
  const logger = pino({ level: opts.logLevel, base: { component: 'worker', pid: process.pid } });
  const addon = loadNativeAddon();
  const choice = chooseBackend(opts.backend);
  logger.info({ backend: choice.backend, reason: choice.reason, version: addon.buildInfo().version }, 'backend chosen');
  return startWorkerWith(opts, { addon, backend: choice.backend, logger });
}

/** startWorker on a given runtime (tests pass a fake addon or a log destination). */
export async function startWorkerWith(opts: WorkerOptions, runtime: WorkerRuntime): Promise<RunningWorker> {
  const { addon, backend, logger } = runtime;
  // The host cache is allocated (and pinned) once, before the worker takes any work.
  const pinHostCache = backend === 'cuda';
  let pool: HostPoolInfo;
  try {
    pool = addon.configureHostPool(opts.hostCacheBytes, pinHostCache);
  } catch (e) {
    throw new Error(`cannot allocate the host cache of ${opts.hostCacheBytes} bytes (--host-cache-bytes): ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  if (pinHostCache && !pool.pinned) {
    logger.warn({ hostCacheBytes: opts.hostCacheBytes }, 'could not pin the host cache: it is pageable memory, host-to-GPU copies run slower');
  }
  // Fetch threads run before the worker takes work, so no cold start waits for one to start.
  await startFetchThreads(opts.fetchThreads ?? DEFAULT_FETCH_THREADS);
  // Pipeline activations of a long prefill exceed gRPC's 4 MiB default.
  const server = new grpc.Server({ 'grpc.max_receive_message_length': MAX_ACTIVATION_MESSAGE_BYTES });
  const bindAddress = formatAddress(opts.host, opts.port);
  let port: number;
  try {
    port = await bindServer(server, bindAddress);
  } catch (e) {
    server.forceShutdown();
    throw new Error(`cannot bind the worker's gRPC port at ${bindAddress}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  const id = opts.id ?? `${os.hostname()}-${port}`;
  const address = formatAddress(advertisedHost(opts.host, os.networkInterfaces()), port);
  const log = logger.child({ worker: id });

  const deviceMemoryBytes = opts.deviceMemoryBytes ?? null;
  // What does not change while the worker runs is read once; snapshots only add what instances hold.
  const gpus = backend === 'cpu' ? [] : addon.listDevices(backend);
  const cpuName = os.cpus()[0]?.model.trim() ?? 'cpu';
  const state = new WorkerState({
    workerId: id,
    backend,
    hostCacheLimit: opts.hostCacheBytes,
    hostCachePinned: pool.pinned,
    deviceLinks: addon.linksAvailable(backend),
    devices: (instances) => workerDevices(backend, gpus, cpuFacts(cpuName, deviceMemoryBytes), deviceMemoryBytes, instances),
    snapshotDebounceMs: SNAPSHOT_DEBOUNCE_MS,
    fetchLimiter: new FetchLimiter(opts.fetchBandwidthBytesPerS),
  });
  server.addService(
    loadParaserveProto().paraserve.v1.Worker.service,
    workerHandlers({
      addon,
      backend,
      state,
      logger: log,
      defaultMaxContext: opts.maxContext,
      fetchConcurrency: FETCH_CONCURRENCY,
      loadOverlap: opts.loadOverlap,
      fetchStallTimeoutMs: opts.fetchStallTimeoutMs ?? DEFAULT_SOURCE_OPTIONS.timeoutMs,
      drainTimeoutMs: opts.drainTimeoutMs,
    }),
  );
  state.setLifecycle('READY');
  addon.notifySystemd('READY=1');
  log.info(
    { address, bound: formatAddress(opts.host, port), hostCacheBytes: opts.hostCacheBytes, hostCachePinned: pool.pinned, fetchBandwidthBytesPerS: opts.fetchBandwidthBytesPerS, loadOverlap: opts.loadOverlap },
    'worker ready',
  );

  let registration: GatewayRegistration | null = null;
  let stopWatching: (() => void) | null = null;
  if (opts.gatewayUrl !== null) {
    const reg = new GatewayRegistration({
      gatewayUrl: opts.gatewayUrl,
      body: { id, address, backend },
      adminToken: process.env['PARASERVE_ADMIN_TOKEN'] || null,
      logger: log,
      initialBackoffMs: 200,
      maxBackoffMs: 10_000,
      rewatchGraceMs: 3_000,
      requestTimeoutMs: 10_000,
    });
    stopWatching = state.onWatcherCount((count) => reg.watchersChanged(count));
    void reg.register();
    registration = reg;
  }

  let closing: Promise<void> | null = null;
  const close = async (): Promise<void> => {
    addon.notifySystemd('STOPPING=1');
    const drained = await state.drain(opts.drainTimeoutMs);
    log.info(drained, 'drained');
    stopWatching?.();
    await registration?.close();
    for (const record of state.allInstances()) {
      await swapSettled(record);
      releaseNative(addon, record);
      state.removeInstance(record);
    }
    state.close();
    await shutdownServer(server, SHUTDOWN_GRACE_MS);
    log.info('worker stopped');
  };
  return {
    id,
    address,
    close: () => {
      closing ??= close();
      return closing;
    },
  };
}

/**
 * Runs a worker as the process's main job: SIGTERM or SIGINT drains and exits 0; a second
 * signal during the drain exits 1 at once.
 */
export async function runWorkerProcess(opts: WorkerOptions): Promise<RunningWorker> {
  const worker = await startWorker(opts);
  let stopping = false;
  const onSignal = (): void => {
    if (stopping) process.exit(1);
    stopping = true;
    worker.close().then(
      () => process.exit(0),
      (e: unknown) => {
        process.stderr.write(`worker ${worker.id}: shutdown failed: ${e instanceof Error ? e.message : String(e)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  return worker;
}
