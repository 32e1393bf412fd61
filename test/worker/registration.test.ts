// Registration with the gateway, against a fake gateway on 127.0.0.1: the worker POSTs its id,
// address and backend with the admin token, retries until accepted, and registers again once
// the gateway's WatchEvents stream has been gone for the grace period.
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import t from 'tap';
import { startWorker } from '../../worker/daemon/main.js';
import { GatewayRegistration } from '../../worker/daemon/registration.js';
import { watchEvents, workerClient } from './fixtures/harness.js';

interface Posted {
  path: string;
  authorization: string | null;
  body: unknown;
}

/** A gateway that answers the listed statuses in turn (then 200) and records each request. */
async function fakeGateway(statuses: number[]) {
  const posts: Posted[] = [];
  const waiters: { count: number; resolve: () => void }[] = [];
  const server = createServer((req: IncomingMessage, res) => {
    let text = '';
    req.on('data', (chunk: Buffer) => (text += chunk.toString()));
    req.on('end', () => {
      posts.push({ path: `${req.method} ${req.url}`, authorization: req.headers.authorization ?? null, body: JSON.parse(text) as unknown });
      res.writeHead(statuses.shift() ?? 200, { 'content-type': 'application/json' }).end('{}');
      for (const w of waiters.filter((w) => posts.length >= w.count)) w.resolve();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    posts,
    received: (count: number) =>
      posts.length >= count ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ count, resolve })),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

t.test('a worker registers with retries, the admin token, and again when unwatched', async (t) => {
  const gateway = await fakeGateway([503]);
  t.teardown(() => gateway.close());
  const saved = process.env['PARASERVE_ADMIN_TOKEN'];
  process.env['PARASERVE_ADMIN_TOKEN'] = 'sekret';
  t.teardown(() => {
    if (saved === undefined) delete process.env['PARASERVE_ADMIN_TOKEN'];
    else process.env['PARASERVE_ADMIN_TOKEN'] = saved;
  });
  const worker = await startWorker({
    id: null,
    host: '127.0.0.1',
    port: 0,
    gatewayUrl: gateway.url,
    backend: 'cpu',
    hostCacheBytes: 1 << 20,
    maxContext: 64,
    drainTimeoutMs: 1000,
    logLevel: 'silent',
    fetchBandwidthBytesPerS: null,
    loadOverlap: true,
    fetchThreads: 1,
  });
  const client = workerClient(worker.address);
  t.teardown(async () => {
    client.close();
    await worker.close();
  });

  await gateway.received(2);
  t.match(worker.address, /^127\.0\.0\.1:\d+$/);
  t.match(worker.id, new RegExp(`-${worker.address.split(':')[1]}$`), 'default id ends with the port');
  t.same(gateway.posts[1], {
    path: 'POST /admin/workers',
    authorization: 'Bearer sekret',
    body: { id: worker.id, address: worker.address, backend: 'cpu' },
  });

  const { call } = await watchEvents(client);
  call.cancel();
  await gateway.received(3);
  t.same(gateway.posts[2]!.body, gateway.posts[1]!.body, 'registered again after the watcher left');
});

t.test('GatewayRegistration registers again once no watcher is left', async (t) => {
  const gateway = await fakeGateway([]);
  t.teardown(() => gateway.close());
  const registration = new GatewayRegistration({
    gatewayUrl: `${gateway.url}/`,
    body: { id: 'w', address: 'h:1', backend: 'cpu' },
    adminToken: null,
    logger: pino({ level: 'silent' }),
    initialBackoffMs: 10,
    maxBackoffMs: 50,
    rewatchGraceMs: 10,
    requestTimeoutMs: 5_000,
  });
  t.teardown(() => registration.close());
  await registration.register();
  t.equal(gateway.posts[0]!.authorization, null);
  t.equal(gateway.posts[0]!.path, 'POST /admin/workers');
  registration.watchersChanged(1);
  registration.watchersChanged(0);
  await gateway.received(2);
  t.equal(gateway.posts.length, 2);
});

t.test('an unreachable gateway is retried until it answers', async (t) => {
  const gateway = await fakeGateway([500, 500]);
  t.teardown(() => gateway.close());
  const registration = new GatewayRegistration({
    gatewayUrl: gateway.url,
    body: { id: 'w', address: 'h:1', backend: 'cpu' },
    adminToken: 'x',
    logger: pino({ level: 'silent' }),
    initialBackoffMs: 5,
    maxBackoffMs: 20,
    rewatchGraceMs: 1_000,
    requestTimeoutMs: 5_000,
  });
  t.teardown(() => registration.close());
  await registration.register();
  t.equal(gateway.posts.length, 3);
  t.equal(registration.accepted, 1);
});
