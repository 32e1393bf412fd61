// A stuck fetch times out with a clear status, and the gateway does not mistake it for a dead
// worker: a model store that accepts connections and never answers makes the model source fail
// after its timeoutMs with 'timed out', which the worker reports as UNAVAILABLE; a worker that
// answers LoadStage that way and stays up fails the request with a 503 carrying that message,
// without re-placing it elsewhere (only a worker whose event stream also breaks is lost).
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import t, { type Test } from 'tap';
import { loadParaserveProto } from '../../protos/load.js';
import type { WorkerEvent } from '../../protos/generated/paraserve/v1/WorkerEvent.js';
import { toStatus } from '../../worker/daemon/errors.js';
import { openModelSource } from '../../worker/models/source.js';
import { MODEL, startCluster } from './fixtures/helpers.js';

/** A TCP server that accepts connections and never writes a byte. */
async function stalledStore(t: Test): Promise<string> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/model`;
}

/** Reads config.json from a stalled store with the given timeout: the error and how long it took. */
async function statusOfStalledRead(t: Test, timeoutMs: number): Promise<{ error: unknown; ms: number }> {
  const uri = await stalledStore(t);
  const started = Date.now();
  const error = await openModelSource(uri, { timeoutMs })
    .readFile('config.json')
    .then(
      () => null,
      (e: unknown) => e,
    );
  return { error, ms: Date.now() - started };
}

t.test('a stalled model store: the source times out and the worker status says so', async (t) => {
  const { error, ms } = await statusOfStalledRead(t, 300);
  t.match(error, { name: 'ModelFormatError', code: 'unreachable', message: /timed out after 300 ms reading config\.json/ });
  t.ok(ms >= 250 && ms < 5_000, `failed after ${ms} ms`);
  t.match(toStatus(error), { code: grpc.status.UNAVAILABLE, details: /timed out after 300 ms/ });
});

/** A worker that is up (its event stream stays open) and fails every LoadStage with `report`. */
async function failingLoader(t: Test, id: string, report: { code: grpc.status; details: string }): Promise<string> {
  const server = new grpc.Server();
  const snapshot: WorkerEvent = {
    timeMs: Date.now(),
    snapshot: {
      workerId: id,
      state: 'READY',
      backend: 'cpu',
      devices: [{ index: 0, kind: 'cpu', name: 'fake', totalBytes: 4e9, freeBytes: 4e9 }],
      hostCacheBytes: 0,
      hostCacheLimit: 4e9,
      instances: [],
      activeRequests: 0,
      fetchBytesPerS: 0,
    },
  };
  const unimplemented = (_call: unknown, cb: grpc.sendUnaryData<never>): void => cb({ code: grpc.status.UNIMPLEMENTED }, null);
  server.addService(loadParaserveProto().paraserve.v1.Worker.service, {
    Health: (_call: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, { workerId: id, state: 'READY', backend: 'cpu' }),
    WatchEvents: (call: grpc.ServerWritableStream<unknown, WorkerEvent>) => call.write(snapshot),
    LoadStage: (call: grpc.ServerWritableStream<unknown, unknown>) => {
      call.write({ phase: 'FETCH', bytesDone: 0, bytesTotal: 1, elapsedMs: 1 });
      call.emit('error', report);
    },
    Generate: (call: grpc.ServerWritableStream<unknown, unknown>) => call.emit('error', { code: grpc.status.UNIMPLEMENTED }),
    UnloadStage: unimplemented,
    SwapIn: unimplemented,
    SwapOut: unimplemented,
    Cancel: unimplemented,
    Drain: unimplemented,
    ForwardActivations: (call: grpc.ServerDuplexStream<unknown, unknown>) => call.emit('error', { code: grpc.status.UNIMPLEMENTED }),
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  t.teardown(() => server.forceShutdown());
  return `127.0.0.1:${port}`;
}

t.test('a worker whose fetch timed out: a clear 503, not re-placed', async (t) => {
  const { error } = await statusOfStalledRead(t, 200);
  const report = toStatus(error);
  // w1 (the fake) has less memory than the failing worker, so the failing one is chosen first.
  const c = await startCluster(t, { id: 'w1', freeBytes: 1e9 }, { requestTimeoutMs: 10_000 });
  const address = await failingLoader(t, 'stuck', report);
  const reg = await c.app.inject({ method: 'POST', url: '/admin/workers', payload: { id: 'stuck', address, backend: 'cpu' } });
  t.equal(reg.statusCode, 200, reg.body);

  const res = await fetch(`${c.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, prompt: 'Once', max_tokens: 4 }),
  });
  const body = (await res.json()) as { error: { message: string; code: string } };
  t.equal(res.status, 503);
  t.match(body.error.message, /^loading model 'tiny' on worker stuck failed: .*timed out after 200 ms reading config\.json/);
  t.equal(c.worker.loads.length, 0, 'the healthy worker was not asked: a store timeout is not a lost worker');
  t.equal(c.app.cluster.view('stuck')?.state, 'READY', 'and the worker is still up');
});
