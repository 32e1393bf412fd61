// Plugins of this gateway decorate the root instance (one decorator each) and hook every
// route, so they must not be encapsulated: fastify-plugin marks them so, and names them for
// Fastify's dependency checks and error messages.
import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';

export function sharedPlugin<Options extends Record<string, unknown>>(
  name: string,
  plugin: FastifyPluginAsync<Options>,
): FastifyPluginAsync<Options> {
  return fp(plugin, { name, fastify: '5.x' });
}
