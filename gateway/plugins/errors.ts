// One place turns every failure into an OpenAI-shaped error response: ApiErrors as they are,
// schema violations as 400s naming the parameter, body parse failures as 400/413, unknown
// URLs as 404 and known URLs with the wrong method as 405. Anything else is a bug: logged with
// its stack and answered 500 without internals.
import type { FastifyError } from 'fastify';
import { ApiError, badRequest, internalError } from '../errors.js';
import { validationError } from '../validation-errors.js';
import { sharedPlugin } from './shared.js';

function toApiError(error: FastifyError | ApiError): ApiError {
  if (error instanceof ApiError) return error;
  if (error.validation) return validationError(error.validation, error.validationContext);
  switch (error.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return badRequest(
        'We could not parse the JSON body of your request. The API expects a JSON payload; what was sent was not valid JSON.',
        null,
        'invalid_json',
      );
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return badRequest('The request body is empty; the API expects a JSON object.', null, 'invalid_json');
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError(413, 'The request body is too large.', 'invalid_request_error', null, 'payload_too_large');
  }
  const status = error.statusCode ?? 500;
  if (status >= 400 && status < 500) return new ApiError(status, error.message, 'invalid_request_error', null, error.code ?? null);
  return internalError();
}

/** '/v1/models/*' → /^\/v1\/models\/.*$/, ':name' segments match one path segment. */
function routeRegExp(pattern: string): RegExp {
  const body = pattern
    .split('/')
    .map((seg) => (seg === '*' ? '.*' : seg.startsWith(':') ? '[^/]+' : seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
    .join('/');
  return new RegExp(`^${body}$`);
}

export const errorsPlugin = sharedPlugin('paraserve-errors', async (app) => {
  const routes: { pattern: RegExp; methods: string[] }[] = [];
  app.addHook('onRoute', (route) => {
    const methods = Array.isArray(route.method) ? route.method : [route.method];
    routes.push({ pattern: routeRegExp(route.url), methods });
  });

  app.setErrorHandler((error: FastifyError | ApiError, request, reply) => {
    const api = toApiError(error);
    if (api.statusCode >= 500 && !(error instanceof ApiError)) request.log.error({ err: error }, 'internal error');
    else if (api.statusCode >= 500) request.log.warn({ err: api.message, code: api.code }, 'request failed');
    return reply.status(api.statusCode).headers(api.headers).send(api.toBody());
  });

  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0] ?? '';
    const allowed = [...new Set(routes.filter((r) => r.pattern.test(path)).flatMap((r) => r.methods))];
    if (allowed.length > 0) {
      const api = new ApiError(405, `Method ${request.method} is not allowed for ${path}; use ${allowed.join(' or ')}.`, 'invalid_request_error', null, 'method_not_allowed');
      return reply.status(405).header('allow', allowed.join(', ')).send(api.toBody());
    }
    const api = new ApiError(404, `Unknown request URL: ${request.method} ${path}.`, 'invalid_request_error', null, 'unknown_url');
    return reply.status(404).send(api.toBody());
  });
});
