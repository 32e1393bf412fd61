// Starts the gateway process: opens the registry under the data dir, builds the app, listens,
// tells systemd it is ready. Nothing else lives here (the app is in app.ts).
import { mkdir } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import pino from 'pino';
import { loadNativeAddon } from '../worker/native/addon.js';
import { buildApp, DEFAULT_DEPS } from './app.js';
import { DEFAULT_SHARING } from './scheduler/sharing.js';
import { Registry } from './registry/registry.js';

export interface GatewayOptions {
  host: string;
  port: number;
  /** Holds registry.sqlite; created when missing. */
  dataDir: string;
  /** Accepted Bearer keys besides those created through the admin API. */
  apiKeys: string[];
  adminToken: string | null;
  logLevel: string;
  /** Deadline of each generation on a worker. */
  requestTimeoutMs: number;
  /**
   * Serve cold starts as a pipeline of this many stages on distinct workers (testing and
   * experiments until the scheduler chooses the degree); absent or null: whole models.
   */
  pipelineDegree?: number | null;
  /** Consolidate a serving pipeline into one whole-model instance in the background; absent: true. */
  consolidate?: boolean;
  /** Requests each model's queue holds before 429; absent: DEFAULT_DEPS'. */
  queueCapacity?: number;
  /** Keep-alives of models registered without their own, ms; absent: DEFAULT_SHARING's. */
  gpuKeepAliveMs?: number;
  hostKeepAliveMs?: number;
  /** Swap host-cached models in; absent: true (false: a no-swapping baseline). */
  swapping?: boolean;
}

export interface RunningGateway {
  /** http://host:port, dialable (a wildcard bind address is given as loopback). */
  url: string;
  /** Stops accepting, lets in-flight requests drain briefly, closes worker channels and the registry. */
  close(): Promise<void>;
}

function dialableHost(host: string): string {
  if (host === '0.0.0.0' || host === '') return '127.0.0.1';
  if (host === '::') return '[::1]';
  return host.includes(':') ? `[${host}]` : host;
}

function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

export async function startGateway(opts: GatewayOptions): Promise<RunningGateway> {
  const logger = pino({ name: 'paraserve-gateway', level: opts.logLevel });
  await mkdir(opts.dataDir, { recursive: true });
  const registry = Registry.open(path.join(opts.dataDir, 'registry.sqlite'));
  let app;
  try {
    app = await buildApp({
      ...DEFAULT_DEPS,
      registry,
      apiKeys: opts.apiKeys,
      adminToken: opts.adminToken,
      logger,
      requestTimeoutMs: opts.requestTimeoutMs,
      forcedPipelineDegree: opts.pipelineDegree ?? null,
      consolidate: opts.consolidate ?? true,
      queueCapacity: opts.queueCapacity ?? DEFAULT_DEPS.queueCapacity,
      sharing: {
        ...DEFAULT_SHARING,
        gpuKeepAliveMs: opts.gpuKeepAliveMs ?? DEFAULT_SHARING.gpuKeepAliveMs,
        hostKeepAliveMs: opts.hostKeepAliveMs ?? DEFAULT_SHARING.hostKeepAliveMs,
      },
      swapping: opts.swapping ?? true,
    });
  } catch (e) {
    registry.close();
    throw e;
  }
  try {
    await app.listen({ host: opts.host, port: opts.port });
  } catch (e) {
    await app.close();
    throw e;
  }
  const { port } = app.server.address() as AddressInfo;
  const url = `http://${dialableHost(opts.host)}:${port}`;
  if (opts.adminToken === null && !isLoopbackHost(opts.host)) {
    logger.warn('no admin token: the admin API (and so worker registration) accepts loopback clients only');
  }
  logger.info({ url, dataDir: opts.dataDir }, 'gateway listening');
  notifyReady(logger);
  return { url, close: () => app.close() };
}

/** sd_notify READY=1 for systemd Type=notify units; outside systemd the addon is not even loaded. */
function notifyReady(logger: pino.Logger): void {
  if (!process.env.NOTIFY_SOCKET) return;
  try {
    if (!loadNativeAddon().notifySystemd('READY=1')) logger.warn('systemd readiness notification was not delivered');
  } catch (e) {
    logger.warn({ err: e }, 'could not notify systemd of readiness');
  }
}
