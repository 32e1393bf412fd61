// Request bodies are JSON whatever Content-Type says (curl -d sends form encoding by default),
// parsed with Fastify's own safe JSON parser so that broken JSON is one clear 400.
import { sharedPlugin } from './shared.js';

export const jsonBodyPlugin = sharedPlugin('paraserve-json-body', async (app) => {
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser('*', { parseAs: 'string' }, app.getDefaultJsonParser('error', 'error'));
});
