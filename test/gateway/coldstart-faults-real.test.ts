// A real in-process CPU worker closed while it loads (its fetches capped so the load takes a
// while): the gateway re-places the load on the other real worker and the request is served
// there; the trace names the failed attempt. Skipped where the native addon is not built.
import type { AddressInfo } from 'node:net';
import t from 'tap';
import type { RequestTrace } from '../../gateway/scheduler/trace.js';
import { MODEL, registerTiny, testApp } from './fixtures/helpers.js';
import { addonError, realWorker, until } from './fixtures/real-workers.js';

// The tiny model is a few hundred KB: capped like this its load takes about a second.
const SLOW_LOAD = { drainTimeoutMs: 500, fetchBandwidthBytesPerS: 256 * 1024 };

t.test('a real worker closed mid-load: the other one serves the request', { skip: addonError ?? false }, async (t) => {
  const app = await testApp(t, { requestTimeoutMs: 60_000 });
  await registerTiny(app);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  const a = await realWorker(app, url, 'a-first', SLOW_LOAD);
  const b = await realWorker(app, url, 'b-second', SLOW_LOAD);
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
