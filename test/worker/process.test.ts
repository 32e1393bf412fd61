// runWorkerProcess as systemd runs it: a separate process that serves until SIGTERM, then
// drains and exits 0.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import t from 'tap';
import type { HealthReply__Output } from '../../protos/generated/paraserve/v1/HealthReply.js';
import { unary, workerClient } from './fixtures/harness.js';

t.test('SIGTERM drains the worker and exits 0', async (t) => {
  const script = fileURLToPath(new URL('./fixtures/worker-process.ts', import.meta.url));
  const env = { ...process.env };
  delete env['NODE_OPTIONS'];
  const child = spawn(process.execPath, [...process.execArgv.filter((a) => a.includes('@tapjs/typescript')), script], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  const exited = once(child, 'exit');
  const [line] = (await once(createInterface({ input: child.stdout }), 'line')) as [string];
  const { address } = JSON.parse(line) as { address: string };

  const client = workerClient(address);
  const health = await unary<HealthReply__Output>((o, cb) => client.Health({}, o, cb));
  t.same(health.reply, { workerId: 'process-worker', state: 'READY', backend: 'cpu' });
  client.close();

  child.kill('SIGTERM');
  const [code, signal] = (await exited) as [number | null, NodeJS.Signals | null];
  t.equal(signal, null);
  t.equal(code, 0);
  const after = workerClient(address);
  const refused = await unary<HealthReply__Output>((o, cb) => after.Health({}, { ...o, deadline: Date.now() + 2_000 }, cb));
  t.equal(refused.error?.code, grpc.status.UNAVAILABLE, 'nothing listens any more');
  after.close();
});
