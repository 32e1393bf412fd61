// Decorates the app with the model catalog: registered models ready to serve.
import { ModelCatalog } from '../inference/catalog.js';
import { sharedPlugin } from './shared.js';

declare module 'fastify' {
  interface FastifyInstance {
    catalog: ModelCatalog;
  }
}

export const catalogPlugin = sharedPlugin<{ maxContextTokens: number }>('paraserve-catalog', async (app, opts) => {
  app.decorate('catalog', new ModelCatalog(app.registry, opts.maxContextTokens));
});
