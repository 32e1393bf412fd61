// Decorates the app with its Prometheus metrics and counts every HTTP response by route.
import { GatewayMetrics } from '../metrics.js';
import { sharedPlugin } from './shared.js';

declare module 'fastify' {
  interface FastifyInstance {
    metrics: GatewayMetrics;
  }
}

export const metricsPlugin = sharedPlugin('paraserve-metrics', async (app) => {
  const metrics = new GatewayMetrics(app.cluster);
  app.decorate('metrics', metrics);
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    metrics.httpRequests.inc({ method: request.method, route, status: String(reply.statusCode) });
    metrics.httpDuration.observe({ method: request.method, route }, reply.elapsedTime / 1000);
  });
});
