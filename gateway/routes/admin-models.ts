// Admin API for models: register (inspect, validate, hash, store), list, delete. Deleting
// also asks workers to drop the model's instances.
import type { FastifyInstance } from 'fastify';
import { prepareRegistration } from '../admin/model-registration.js';
import { conflict, notFound } from '../errors.js';
import { RegistryConflictError } from '../registry/registry.js';
import { RegisterModelBody } from '../schemas/admin.js';
import { ModelParams } from '../schemas/openai.js';

/**
 * A registration lists every file's chunk digests: a 13.5 GB checkpoint in 64 KiB chunks is a
 * 13 MB body, far past the 1 MiB every other route accepts.
 */
const REGISTRATION_BODY_LIMIT = 64 * 1024 * 1024;

export async function adminModelRoutes(app: FastifyInstance): Promise<void> {
  app.post<{ Body: RegisterModelBody }>('/admin/models', { schema: { body: RegisterModelBody }, bodyLimit: REGISTRATION_BODY_LIMIT }, async (request, reply) => {
    const { name, source } = request.body;
    if (app.registry.getModel(name)) throw conflict(`model '${name}' is already registered`, 'name');
    const { model, tensors } = await prepareRegistration({
      name,
      source,
      files:
        request.body.files?.map((f) => ({ ...f, chunkBytes: f.chunkBytes ?? null, chunkSha256: f.chunkSha256 ?? null })) ?? null,
      ttftSloMs: request.body.ttftSloMs ?? null,
      gpuKeepAliveMs: request.body.gpuKeepAliveMs ?? null,
      hostKeepAliveMs: request.body.hostKeepAliveMs ?? null,
    });
    try {
      const record = app.registry.addModel(model);
      request.log.info({ model: name, source, bytes: record.bytes }, 'model registered');
      // Its tokenizer and cold-start plan are built now, not by its first request.
      const serving = app.catalog.get(name);
      if (serving !== null) app.scheduler.prepareModel(serving, tensors);
      return reply.status(201).send({ model: record });
    } catch (e) {
      if (e instanceof RegistryConflictError) throw conflict(e.message, 'name');
      throw e;
    }
  });

  app.get('/admin/models', { schema: {} }, async () => ({ data: app.registry.listModels() }));

  app.delete<{ Params: ModelParams }>('/admin/models/*', { schema: { params: ModelParams } }, async (request) => {
    const name = request.params['*'];
    if (!app.registry.deleteModel(name)) throw notFound(`model '${name}' is not registered`, 'model_not_found');
    app.catalog.forget(name);
    app.scheduler.unloadModel(name);
    request.log.info({ model: name }, 'model deleted');
    return { deleted: name };
  });
}
