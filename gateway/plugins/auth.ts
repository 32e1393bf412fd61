// Who may call what. /health and /metrics are always open. /v1/* needs a Bearer API key once
// any key exists (in the registry or given at start-up). /admin/* needs the admin token when
// one is configured; without one it is open to loopback clients only, so a gateway bound to
// 127.0.0.1 (the default of `paraserve up`) works with no setup while a gateway on a public
// address refuses remote admin calls until PARASERVE_ADMIN_TOKEN is set.
// Keys are compared as sha256 digests with crypto.timingSafeEqual.
import { timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { ApiError, invalidApiKey } from '../errors.js';
import { sha256Digest } from '../registry/registry.js';
import { sharedPlugin } from './shared.js';

const OPEN_ROUTES = new Set(['/health', '/metrics']);

function bearer(request: FastifyRequest): string | null {
  const header = request.headers.authorization;
  if (!header) return null;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m?.[1] ?? null;
}

function isLoopback(address: string | undefined): boolean {
  return address === '127.0.0.1' || address === '::1' || address === '::ffff:127.0.0.1' || (address?.startsWith('127.') ?? false);
}

function missingApiKey(): ApiError {
  return new ApiError(
    401,
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    'invalid_request_error',
    null,
    'invalid_api_key',
  );
}

export const authPlugin = sharedPlugin<{ apiKeys: string[]; adminToken: string | null }>('paraserve-auth', async (app, opts) => {
  const optionDigests = opts.apiKeys.map(sha256Digest);
  const adminDigest = opts.adminToken === null ? null : sha256Digest(opts.adminToken);

  const apiKeyAccepted = (key: string): boolean => {
    const digest = sha256Digest(key);
    let ok = app.registry.matchesApiKey(digest);
    for (const d of optionDigests) {
      if (timingSafeEqual(d, digest)) ok = true;
    }
    return ok;
  };

  app.addHook('onRequest', async (request) => {
    const route = request.routeOptions.url;
    if (route === undefined || OPEN_ROUTES.has(route)) return;
    if (route.startsWith('/admin/')) {
      if (adminDigest === null) {
        if (!isLoopback(request.socket.remoteAddress)) {
          throw new ApiError(
            403,
            'The admin API accepts only loopback clients when the gateway has no admin token; configure one (PARASERVE_ADMIN_TOKEN) for remote administration.',
            'permission_error',
            null,
            'admin_loopback_only',
          );
        }
        return;
      }
      const token = bearer(request);
      if (token === null || !timingSafeEqual(sha256Digest(token), adminDigest)) {
        throw new ApiError(401, 'Incorrect or missing admin token', 'invalid_request_error', null, 'invalid_admin_token');
      }
      return;
    }
    if (optionDigests.length === 0 && !app.registry.hasApiKeys()) return;
    const key = bearer(request);
    if (key === null) throw missingApiKey();
    if (!apiKeyAccepted(key)) throw invalidApiKey();
  });
});
