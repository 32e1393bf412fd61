// Admin API for workers: registration (called by worker daemons on start and whenever their
// event stream from the gateway ends) and the cluster listing for `paraserve workers ls`.
import type { FastifyInstance } from 'fastify';
import { WorkerIdentityError, WorkerUnreachableError } from '../cluster/cluster-state.js';
import { ApiError, badRequest } from '../errors.js';
import { RegisterWorkerBody } from '../schemas/admin.js';

export async function adminWorkerRoutes(app: FastifyInstance): Promise<void> {
  app.get('/admin/workers', { schema: {} }, async () => ({ data: app.cluster.views() }));

  app.post<{ Body: RegisterWorkerBody }>('/admin/workers', { schema: { body: RegisterWorkerBody } }, async (request) => {
    try {
      return { worker: await app.cluster.register(request.body) };
    } catch (e) {
      if (e instanceof WorkerIdentityError) throw badRequest(e.message, 'id', 'worker_identity_mismatch');
      if (e instanceof WorkerUnreachableError) throw new ApiError(502, e.message, 'server_error', 'address', 'worker_unreachable');
      throw e;
    }
  });
}
