// Admin API for API keys. A key is returned once, at creation; only its digest is stored.
import type { FastifyInstance } from 'fastify';
import { conflict, notFound } from '../errors.js';
import { RegistryConflictError } from '../registry/registry.js';
import { CreateKeyBody, NameParams } from '../schemas/admin.js';

export async function adminKeyRoutes(app: FastifyInstance): Promise<void> {
  app.post<{ Body: CreateKeyBody }>('/admin/keys', { schema: { body: CreateKeyBody } }, async (request, reply) => {
    try {
      const { name, key } = app.registry.createApiKey(request.body.name);
      return reply.status(201).send({ name, key });
    } catch (e) {
      if (e instanceof RegistryConflictError) throw conflict(e.message, 'name');
      throw e;
    }
  });

  app.get('/admin/keys', { schema: {} }, async () => ({ data: app.registry.listApiKeys() }));

  app.delete<{ Params: NameParams }>('/admin/keys/:name', { schema: { params: NameParams } }, async (request) => {
    if (!app.registry.deleteApiKey(request.params.name)) {
      throw notFound(`API key '${request.params.name}' does not exist`, 'key_not_found');
    }
    return { deleted: request.params.name };
  });
}
