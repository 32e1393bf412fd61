// A real in-process CPU worker closed while it loads (its fetches capped so the load takes a
// while): the gateway re-places the load on the other real worker and the request is served
// there; the trace names the failed attempt. Skipped where the native addon is not built.
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import t from 'tap';
import type { RequestTrace } from '../../gateway/scheduler/trace.js';
import { startWorker, type RunningWorker } from '../../worker/daemon/main.js';
import { loadNativeAddon } from '../../worker/native/addon.js';
import { MODEL, registerTiny, testApp } from './fixtures/helpers.js';

let addonError: string | null = null;
try {
  loadNativeAddon();
} catch (e) {
  addonError = e instanceof Error ? e.message : String(e);
}

/** Resolves once the gateway's cluster view satisfies `predicate`. */
function until(app: FastifyInstance, predicate: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    if (predicate()) return resolve();
    const off = app.cluster.onChange(() => {
      if (predicate()) {
        off();
        resolve();
      }
    });
  });
}

async function worker(app: FastifyInstance, url: string, id: string): Promise<RunningWorker> {
  const ready = until(app, () => app.cluster.view(id)?.state === 'READY');
  const w = await startWorker({
    id,
    host: '127.0.0.1',
    port: 0,
    gatewayUrl: url,
    backend: 'cpu',
    hostCacheBytes: 256 * 1024 * 1024,
    maxContext: 512,
    drainTimeoutMs: 500,
    logLevel: 'silent',
    // The tiny model is a few hundred KB: its load takes about a second.
    fetchBandwidthBytesPerS: 256 * 1024,
    loadOverlap: true,
  });
  await ready;
  return w;
}

t.test('a real worker closed mid-load: the other one serves the request', { skip: addonError ?? false }, async (t) => {
  const app = await testApp(t, { requestTimeoutMs: 60_000 });
  await registerTiny(app);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  const a = await worker(app, url, 'a-first');
  const b = await worker(app, url, 'b-second');
  t.teardown(() => b.close());

  const loading = until(app, () => app.cluster.views().some((w) => w.instances.some((i) => i.model === MODEL && i.residency === 'LOADING')));
  const res = fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, prompt: 'Once', max_tokens: 4, temperature: 0 }),
  });
  await loading;
  const victim = app.cluster.views().find((w) => w.instances.some((i) => i.model === MODEL && i.residency === 'LOADING'))!.id;
  t.equal(victim, 'a-first', 'the first decision picked a-first');
  await a.close();

  const answer = await res;
  t.equal(answer.status, 200, await answer.clone().text());
  t.match(answer.headers.get('x-paraserve-path'), /^cold;k=1;workers=b-second;/);
  const trace = (await (await fetch(`${url}/admin/traces/${answer.headers.get('x-paraserve-request-id') ?? 'none'}`)).json()) as RequestTrace;
  t.match(trace.failedAttempts, [{ workerId: 'a-first' }]);
  t.same(trace.loads.map((l) => l.coldStart.workers), [['a-first'], ['b-second']], 'both attempts in the trace');
});
