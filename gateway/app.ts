// Builds the gateway's Fastify app: plugins (state and cross-cutting hooks) first, then routes.
// Tests build it with their own registry and drive it with app.inject; server.ts listens.
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { DEFAULT_CLUSTER_OPTIONS, type ClusterOptions } from './cluster/cluster-state.js';
import { MAX_CONTEXT_TOKENS } from './inference/catalog.js';
import { DEFAULT_QUEUE_CAPACITY, DEFAULT_SHARING, type SharingDefaults } from './scheduler/sharing.js';
import { authPlugin } from './plugins/auth.js';
import { catalogPlugin } from './plugins/catalog.js';
import { clusterPlugin } from './plugins/cluster.js';
import { errorsPlugin } from './plugins/errors.js';
import { jsonBodyPlugin } from './plugins/json-body.js';
import { metricsPlugin } from './plugins/metrics.js';
import { registryPlugin } from './plugins/registry.js';
import { schedulerPlugin } from './plugins/scheduler.js';
import { shutdownPlugin } from './plugins/shutdown.js';
import type { Registry } from './registry/registry.js';
import { adminKeyRoutes } from './routes/admin-keys.js';
import { adminTraceRoutes } from './routes/admin-traces.js';
import { adminModelRoutes } from './routes/admin-models.js';
import { adminWorkerRoutes } from './routes/admin-workers.js';
import { completionRoutes } from './routes/completions.js';
import { healthRoutes } from './routes/health.js';
import { metricsRoutes } from './routes/metrics.js';
import { modelRoutes } from './routes/models.js';

export interface GatewayDeps {
  /** Owned by the app from here on: closed when the app closes. */
  registry: Registry;
  /** Keys accepted besides those in the registry (from configuration). */
  apiKeys: string[];
  /** Required on /admin/* when set; null leaves the admin API to loopback clients. */
  adminToken: string | null;
  /** null: no logging. */
  logger: FastifyBaseLogger | null;
  /** Deadline of each Generate call to a worker. */
  requestTimeoutMs: number;
  /** Deadline of each LoadStage call. */
  loadTimeoutMs: number;
  /** Context the gateway asks workers for (capped again by each model's own window). */
  maxContextTokens: number;
  /** How long closing waits for in-flight requests before cancelling them. */
  closeDrainMs: number;
  cluster: ClusterOptions;
  /** Cold starts load a pipeline of this many stages on distinct workers; null: one whole-model worker. */
  forcedPipelineDegree: number | null;
  /** After a pipelined cold start, load the model whole in the background and dissolve the pipeline. */
  consolidate: boolean;
  /** Requests each model's queue holds before the gateway answers 429 with Retry-After. */
  queueCapacity: number;
  /** Batch capacity of an instance, and the SLO and keep-alives of models registered without them. */
  sharing: SharingDefaults;
  /** Swap host-cached models in; false: models that left the GPU start cold (a no-swapping baseline). */
  swapping: boolean;
}

export const DEFAULT_DEPS = {
  apiKeys: [],
  adminToken: null,
  logger: null,
  requestTimeoutMs: 600_000,
  loadTimeoutMs: 900_000,
  maxContextTokens: MAX_CONTEXT_TOKENS,
  closeDrainMs: 5_000,
  cluster: DEFAULT_CLUSTER_OPTIONS,
  forcedPipelineDegree: null,
  consolidate: true,
  queueCapacity: DEFAULT_QUEUE_CAPACITY,
  sharing: DEFAULT_SHARING,
  swapping: true,
} satisfies Omit<GatewayDeps, 'registry'>;

export async function buildApp(deps: GatewayDeps): Promise<FastifyInstance> {
  const app = Fastify({
    ...(deps.logger ? { loggerInstance: deps.logger } : { logger: false }),
    // plugins/shutdown.ts answers requests during shutdown, in the OpenAI shape.
    return503OnClosing: false,
    // Wrong types are errors, not something to coerce ("1" is not a number); all errors are
    // collected so validation-errors.ts can report the most specific one.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: true } },
  });
  try {
    await app.register(registryPlugin, { registry: deps.registry });
    await app.register(clusterPlugin, { options: deps.cluster });
    await app.register(metricsPlugin);
    await app.register(schedulerPlugin, {
      options: {
        requestTimeoutMs: deps.requestTimeoutMs,
        loadTimeoutMs: deps.loadTimeoutMs,
        forcedPipelineDegree: deps.forcedPipelineDegree,
        consolidate: deps.consolidate,
        queueCapacity: deps.queueCapacity,
        sharing: deps.sharing,
        swapping: deps.swapping,
      },
    });
    await app.register(shutdownPlugin, { drainMs: deps.closeDrainMs });
    await app.register(catalogPlugin, { maxContextTokens: deps.maxContextTokens });
    await app.register(errorsPlugin);
    await app.register(jsonBodyPlugin);
    await app.register(authPlugin, { apiKeys: deps.apiKeys, adminToken: deps.adminToken });

    await app.register(healthRoutes);
    await app.register(metricsRoutes);
    await app.register(modelRoutes);
    await app.register(completionRoutes);
    await app.register(adminModelRoutes);
    await app.register(adminWorkerRoutes);
    await app.register(adminKeyRoutes);
    await app.register(adminTraceRoutes);
  } catch (e) {
    await app.close();
    throw e;
  }
  return app;
}
