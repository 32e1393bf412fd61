// GET /v1/models and /v1/models/:model in OpenAI's shape; every registered model is listed,
// loaded or not (serverless: any of them can serve the next request).
import type { FastifyInstance } from 'fastify';
import { modelNotFound } from '../errors.js';
import type { ModelRecord } from '../registry/registry.js';
import { ModelList, ModelObject, ModelParams } from '../schemas/openai.js';

function modelObject(m: ModelRecord) {
  return { id: m.name, object: 'model' as const, created: Math.floor(Date.parse(m.createdAt) / 1000), owned_by: 'paraserve' };
}

export async function modelRoutes(app: FastifyInstance): Promise<void> {
  app.get('/v1/models', { schema: { response: { 200: ModelList } } }, async () => ({
    object: 'list' as const,
    data: app.registry.listModels().map(modelObject),
  }));

  app.get<{ Params: ModelParams }>(
    '/v1/models/*',
    { schema: { params: ModelParams, response: { 200: ModelObject } } },
    async (request) => {
      const record = app.registry.getModel(request.params['*']);
      if (!record) throw modelNotFound(request.params['*']);
      return modelObject(record);
    },
  );
}
