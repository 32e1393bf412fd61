// API keys on /v1/*, the admin token on /admin/*, and what stays open.
import t from 'tap';
import { MODEL, registerTiny, testApp } from './fixtures/helpers.js';

const chat = { model: MODEL, messages: [{ role: 'user', content: 'hi' }] };

t.test('configured API keys', async (t) => {
  const app = await testApp(t, { apiKeys: ['sk-right'] });
  await registerTiny(app);

  const none = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: chat });
  t.equal(none.statusCode, 401);
  t.match(none.json(), { error: { code: 'invalid_api_key', type: 'invalid_request_error', param: null, message: /didn't provide an API key/ } });

  const wrong = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: chat, headers: { authorization: 'Bearer sk-wrong' } });
  t.equal(wrong.statusCode, 401);
  t.same(wrong.json(), { error: { message: 'Incorrect API key provided', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } });

  const notBearer = await app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: 'Basic sk-right' } });
  t.equal(notBearer.statusCode, 401);

  const right = await app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: 'Bearer sk-right' } });
  t.equal(right.statusCode, 200);
  const rightChat = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: chat, headers: { authorization: 'bearer sk-right' } });
  t.equal(rightChat.statusCode, 503, 'past auth: no worker');

  for (const url of ['/health', '/metrics']) {
    t.equal((await app.inject({ method: 'GET', url })).statusCode, 200, `${url} is open`);
  }
  t.equal((await app.inject({ method: 'GET', url: '/v1/nothing' })).statusCode, 404, 'unknown routes are 404 either way');
});

t.test('keys created through the admin API turn auth on and off', async (t) => {
  const app = await testApp(t);
  t.equal((await app.inject({ method: 'GET', url: '/v1/models' })).statusCode, 200, 'open without keys');

  const created = await app.inject({ method: 'POST', url: '/admin/keys', payload: { name: 'ci' } });
  t.equal(created.statusCode, 201);
  const { key } = created.json() as { key: string };
  t.equal((await app.inject({ method: 'GET', url: '/v1/models' })).statusCode, 401);
  t.equal((await app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: `Bearer ${key}` } })).statusCode, 200);

  t.equal((await app.inject({ method: 'DELETE', url: '/admin/keys/ci' })).statusCode, 200);
  t.equal((await app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: `Bearer ${key}` } })).statusCode, 200, 'open again');
});

t.test('admin token', async (t) => {
  const app = await testApp(t, { adminToken: 'adm-secret', apiKeys: ['sk-user'] });
  const none = await app.inject({ method: 'GET', url: '/admin/models' });
  t.equal(none.statusCode, 401);
  t.match(none.json(), { error: { code: 'invalid_admin_token' } });
  const userKey = await app.inject({ method: 'GET', url: '/admin/models', headers: { authorization: 'Bearer sk-user' } });
  t.equal(userKey.statusCode, 401, 'an API key is not an admin token');
  const ok = await app.inject({ method: 'GET', url: '/admin/workers', headers: { authorization: 'Bearer adm-secret' } });
  t.equal(ok.statusCode, 200);
  t.same(ok.json(), { data: [] });
  const remote = await app.inject({ method: 'GET', url: '/admin/models', remoteAddress: '10.1.2.3', headers: { authorization: 'Bearer adm-secret' } });
  t.equal(remote.statusCode, 200, 'the token works from anywhere');
  const adminOnV1 = await app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: 'Bearer adm-secret' } });
  t.equal(adminOnV1.statusCode, 401, 'the admin token is not an API key');
});

t.test('no admin token: admin API for loopback clients only', async (t) => {
  const app = await testApp(t);
  t.equal((await app.inject({ method: 'GET', url: '/admin/models' })).statusCode, 200);
  t.equal((await app.inject({ method: 'GET', url: '/admin/models', remoteAddress: '::1' })).statusCode, 200);
  const remote = await app.inject({ method: 'POST', url: '/admin/keys', remoteAddress: '192.168.1.20', payload: { name: 'x' } });
  t.equal(remote.statusCode, 403);
  t.match(remote.json(), { error: { type: 'permission_error', code: 'admin_loopback_only' } });
  t.same(app.registry.listApiKeys(), [], 'nothing was created');
});
