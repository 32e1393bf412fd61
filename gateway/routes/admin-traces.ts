// GET /admin/traces/:id: the explanation a completion left (its x-paraserve-request-id) — the
// path it took and the time of each phase — for the last requests the scheduler keeps.
import type { FastifyInstance } from 'fastify';
import { notFound } from '../errors.js';

export async function adminTraceRoutes(app: FastifyInstance): Promise<void> {
  app.get<{ Params: { id: string } }>('/admin/traces/:id', async (request) => {
    const trace = app.scheduler.traces.get(request.params.id);
    if (!trace) {
      throw notFound(
        `no trace of request '${request.params.id}': it is unknown or older than the last ${app.scheduler.traces.capacity} requests`,
        'trace_not_found',
      );
    }
    return trace;
  });
}
