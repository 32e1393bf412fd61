// Decorates the app with the registry (models, API keys); closes the SQLite file with the app.
import type { Registry } from '../registry/registry.js';
import { sharedPlugin } from './shared.js';

declare module 'fastify' {
  interface FastifyInstance {
    registry: Registry;
  }
}

export const registryPlugin = sharedPlugin<{ registry: Registry }>('paraserve-registry', async (app, opts) => {
  app.decorate('registry', opts.registry);
  app.addHook('onClose', async () => opts.registry.close());
});
