// startGateway as a process would run it: data dir, listening, registry across restarts.
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import t from 'tap';
import { startGateway, type GatewayOptions } from '../../gateway/server.js';
import { MODEL, tempDir, tinyModelUri } from './fixtures/helpers.js';

t.test('the registry survives a gateway restart', async (t) => {
  const dataDir = path.join(await tempDir(t), 'nested', 'data');
  const opts: GatewayOptions = { host: '127.0.0.1', port: 0, dataDir, apiKeys: [], adminToken: 'adm', logLevel: 'silent', requestTimeoutMs: 5_000 };
  const admin = { 'content-type': 'application/json', authorization: 'Bearer adm' };

  const first = await startGateway(opts);
  t.match(first.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  t.same(await (await fetch(`${first.url}/health`)).json(), { status: 'ok', workers: 0 });
  const reg = await fetch(`${first.url}/admin/models`, { method: 'POST', headers: admin, body: JSON.stringify({ name: MODEL, source: await tinyModelUri(), files: null, ttftSloMs: null }) });
  t.equal(reg.status, 201);
  const key = await fetch(`${first.url}/admin/keys`, { method: 'POST', headers: admin, body: JSON.stringify({ name: 'k' }) });
  const { key: apiKey } = (await key.json()) as { key: string };
  await first.close();
  t.ok(existsSync(path.join(dataDir, 'registry.sqlite')));
  await t.rejects(fetch(`${first.url}/health`), 'closed gateways stop listening');

  const second = await startGateway(opts);
  t.teardown(() => second.close());
  const noKey = await fetch(`${second.url}/v1/models`);
  t.equal(noKey.status, 401, 'the key still exists');
  const models = await fetch(`${second.url}/v1/models`, { headers: { authorization: `Bearer ${apiKey}` } });
  t.match(await models.json(), { data: [{ id: MODEL }] });
});

t.test('a port in use is an error, not a crash', async (t) => {
  const dataDir = await tempDir(t);
  const opts: GatewayOptions = { host: '127.0.0.1', port: 0, dataDir, apiKeys: ['k'], adminToken: null, logLevel: 'silent', requestTimeoutMs: 5_000 };
  const first = await startGateway(opts);
  t.teardown(() => first.close());
  const port = Number(new URL(first.url).port);
  await t.rejects(startGateway({ ...opts, dataDir: await tempDir(t), port }), { code: 'EADDRINUSE' });
});

const hasPython = spawnSync('python3', ['--version']).status === 0;

t.test('systemd readiness: READY=1 on $NOTIFY_SOCKET once listening', { skip: hasPython ? false : 'needs python3' }, async (t) => {
  const dir = await tempDir(t);
  const socket = path.join(dir, 'notify.sock');
  // Node cannot bind a unix datagram socket; python3 plays systemd.
  const listener = spawn('python3', ['-u', '-c', NOTIFY_LISTENER, socket], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => listener.kill());
  const lines = createInterface({ input: listener.stdout });
  const received = (async () => {
    const out: string[] = [];
    for await (const line of lines) {
      out.push(line);
      if (line.startsWith('GOT ')) break;
    }
    return out;
  })();
  const [first] = await once(lines, 'line');
  t.equal(first, 'listening');

  const previous = process.env.NOTIFY_SOCKET;
  process.env.NOTIFY_SOCKET = socket;
  t.teardown(() => {
    if (previous === undefined) delete process.env.NOTIFY_SOCKET;
    else process.env.NOTIFY_SOCKET = previous;
  });
  const gateway = await startGateway({ host: '127.0.0.1', port: 0, dataDir: dir, apiKeys: [], adminToken: null, logLevel: 'silent', requestTimeoutMs: 5_000 });
  t.teardown(() => gateway.close());
  t.same(await received, ['listening', 'GOT READY=1']);
});

const NOTIFY_LISTENER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("listening")
print("GOT " + s.recv(4096).decode())
`;
