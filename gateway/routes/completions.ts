// POST /v1/chat/completions and POST /v1/completions: validate (schema, then plan), resolve
// the model, run and answer (inference/respond.ts).
import type { FastifyInstance } from 'fastify';
import { modelNotFound } from '../errors.js';
import { planChat, planCompletion } from '../inference/prepare.js';
import { serveCompletion } from '../inference/respond.js';
import { ChatCompletionBody, CompletionBody } from '../schemas/openai.js';

export async function completionRoutes(app: FastifyInstance): Promise<void> {
  app.post<{ Body: ChatCompletionBody }>(
    '/v1/chat/completions',
    { schema: { body: ChatCompletionBody } },
    async (request, reply) => {
      const arrivalMs = Date.now() - reply.elapsedTime;
      const model = app.catalog.get(request.body.model);
      if (!model) throw modelNotFound(request.body.model);
      const plan = planChat(request.body, model);
      return serveCompletion({ kind: 'chat', model, plan, scheduler: app.scheduler, reply, log: request.log, arrivalMs });
    },
  );

  app.post<{ Body: CompletionBody }>(
    '/v1/completions',
    { schema: { body: CompletionBody } },
    async (request, reply) => {
      const arrivalMs = Date.now() - reply.elapsedTime;
      const model = app.catalog.get(request.body.model);
      if (!model) throw modelNotFound(request.body.model);
      const plan = planCompletion(request.body, model);
      return serveCompletion({ kind: 'text', model, plan, scheduler: app.scheduler, reply, log: request.log, arrivalMs });
    },
  );
}
