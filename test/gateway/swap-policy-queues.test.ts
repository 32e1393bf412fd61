// The queue and keep-alive halves of swap-policy.ts, table-driven: admit keeps a model's queue in
// deadline order and rejects past its bound with a Retry-After; nextRequest takes the least
// slack across models, skipping blocked ones; expireIdle swaps idle GPU copies out after the
// GPU keep-alive, drops host copies after the host keep-alive (scale to zero) and says when
// the next one runs out.
import t, { type Test } from 'tap';
import { admit, emptyQueue, expireIdle, nextRequest, type ExpiryResult, type ModelQueue, type QueuedRequest, type SwapServer } from '../../gateway/scheduler/swap-policy.js';
import { gpu, hostCopy, resident, swapModel, swapServer } from './fixtures/swap-views.js';

const NOW = 100_000;

function req(id: string, model: string, arrivalMs: number, sloMs = 1_000): QueuedRequest {
  return { id, model, arrivalMs, deadlineMs: arrivalMs + sloMs };
}

function queueOf(model: string, requests: QueuedRequest[], o: Partial<ModelQueue> = {}): ModelQueue {
  let q: ModelQueue = { ...emptyQueue(model, 8), ...o };
  for (const r of requests) {
    const a = admit(q, r, NOW);
    if (a.kind !== 'admitted') throw new Error(`fixture: ${r.id} not admitted`);
    q = a.queue;
  }
  return q;
}

t.test('admit', async (tt) => {
  const rows: { name: string; queue: ModelQueue; request: QueuedRequest; expect: (t2: Test, r: ReturnType<typeof admit>) => void }[] = [
    {
      name: 'keeps deadline order; equal deadlines stay in arrival order',
      queue: queueOf('m', [req('a', 'm', NOW, 500), req('b', 'm', NOW, 2_000)]),
      request: req('c', 'm', NOW, 500),
      expect: (t2, r) => t2.same(r.kind === 'admitted' && r.queue.requests.map((q) => q.id), ['a', 'c', 'b']),
    },
    {
      name: 'full: rejected with Retry-After until the head deadline',
      queue: queueOf('m', [req('a', 'm', NOW - 200, 3_000), req('b', 'm', NOW)], { capacity: 2 }),
      request: req('c', 'm', NOW),
      expect: (t2, r) => t2.match(r, { kind: 'rejected', retryAfterS: 1, reason: /queue of 'm' is full \(2 waiting\)/ }),
    },
    {
      name: 'full with a far head deadline: Retry-After rounds the wait up to seconds',
      queue: queueOf('m', [req('a', 'm', NOW, 4_500)], { capacity: 1 }),
      request: req('c', 'm', NOW),
      expect: (t2, r) => t2.match(r, { kind: 'rejected', retryAfterS: 5 }),
    },
    {
      name: 'full, the head late already: at least the predicted service time, at least 1 s',
      queue: queueOf('m', [req('a', 'm', NOW - 5_000)], { capacity: 1, predictedServiceMs: 2_100 }),
      request: req('c', 'm', NOW),
      expect: (t2, r) => t2.match(r, { kind: 'rejected', retryAfterS: 3 }),
    },
  ];
  for (const row of rows) tt.test(row.name, async (t2) => row.expect(t2, admit(row.queue, row.request, NOW)));
  tt.throws(() => admit(emptyQueue('m', 1), req('x', 'other', NOW), NOW), RangeError, 'another model’s request');
  tt.throws(() => emptyQueue('m', 0), RangeError);
});

t.test('nextRequest', async (tt) => {
  const a = queueOf('a', [req('a1', 'a', NOW - 100, 1_000), req('a2', 'a', NOW, 1_000)]);
  const b = queueOf('b', [req('b1', 'b', NOW - 50, 5_000)]);
  // c's head has a later deadline than a's, but its service (a cold start) eats the slack.
  const c = queueOf('c', [req('c1', 'c', NOW, 2_000)], { predictedServiceMs: 1_500 });
  const rows: { name: string; queues: ModelQueue[]; blocked?: string[]; expect: [string, number] | null }[] = [
    { name: 'least slack first, net of the predicted service', queues: [a, b, c], expect: ['c1', 500] },
    { name: 'without c: a’s head (900 ms) before b (4950 ms)', queues: [a, b], expect: ['a1', 900] },
    { name: 'a blocked model is skipped', queues: [a, b, c], blocked: ['c', 'a'], expect: ['b1', 4_950] },
    { name: 'nothing eligible: null', queues: [emptyQueue('z', 1), a], blocked: ['a'], expect: null },
  ];
  for (const row of rows) {
    tt.test(row.name, async (t2) => {
      const pick = nextRequest(row.queues, NOW, new Set(row.blocked ?? []));
      t2.same(pick && [pick.request.id, pick.slackMs], row.expect);
      if (pick) {
        const before = row.queues.find((q) => q.model === pick.request.model);
        t2.equal(pick.queue.requests.length, (before?.requests.length ?? 0) - 1, 'taken off its queue');
        t2.notOk(pick.queue.requests.some((r) => r.id === pick.request.id));
      }
    });
  }
  tt.test('ties go to the earliest arrival, then the model name', async (t2) => {
    const x = queueOf('x', [req('x1', 'x', NOW - 10, 1_010)]);
    const y = queueOf('y', [req('y1', 'y', NOW - 20, 1_020)]);
    const z = queueOf('z', [req('z1', 'z', NOW - 20, 1_020)]);
    t2.equal(nextRequest([x, z, y], NOW, new Set())?.request.id, 'y1');
  });
});

t.test('expireIdle', async (tt) => {
  const models = new Map(
    [swapModel('a', { gpuKeepAliveS: 60, hostKeepAliveS: 600 }), swapModel('b', { gpuKeepAliveS: 10, hostKeepAliveS: 100 })].map((m) => [m.name, m]),
  );
  const rows: { name: string; servers: SwapServer[]; queued?: [string, number][]; expect: (t2: Test, r: ExpiryResult) => void }[] = [
    {
      name: 'an idle GPU copy past its keep-alive is swapped out; its host copy stays while it is on the GPU',
      servers: [swapServer('s1', [gpu(0, [resident('a', { lastUsedMs: NOW - 61_000 })])], [hostCopy('a', { lastUsedMs: NOW - 61_000 })])],
      expect: (t2, r) => {
        t2.match(r.actions, [{ kind: 'swap-out', serverId: 's1', gpu: 0, instanceId: 'a#0', model: 'a', idleS: 61, reason: /idle 61\.0 s ≥ 60 s/ }]);
        t2.equal(r.actions.length, 1);
        t2.equal(r.nextExpiryMs, null, 'the host copy is timed after the swap-out, on the next call');
      },
    },
    {
      name: 'within keep-alive: nothing, and the next expiry is the earliest pending',
      servers: [swapServer('s1', [gpu(0, [resident('a', { lastUsedMs: NOW - 1_000 }), resident('b', { lastUsedMs: NOW - 5_000 })])], [hostCopy('a'), hostCopy('b')])],
      expect: (t2, r) => t2.same(r, { actions: [], nextExpiryMs: NOW + 5_000 }),
    },
    {
      name: 'a copy running a request, landing, or of a model with queued requests is kept',
      servers: [
        swapServer('s1', [
          gpu(0, [resident('a', { lastUsedMs: 0, activeRequests: 1 }), resident('b', { lastUsedMs: 0, readyAtMs: NOW + 10 })]),
          gpu(1, [resident('b', { instanceId: 'b#1', lastUsedMs: 0 })]),
        ]),
      ],
      queued: [['b', 1]],
      expect: (t2, r) => t2.same(r, { actions: [], nextExpiryMs: null }),
    },
    {
      name: 'host copies without a GPU copy: dropped past the host keep-alive (scale to zero)',
      servers: [swapServer('s1', [gpu(0)], [hostCopy('a', { lastUsedMs: NOW - 700_000 }), hostCopy('b', { lastUsedMs: NOW - 50_000 }), hostCopy('unknown', { lastUsedMs: 0 })])],
      expect: (t2, r) => {
        t2.match(r.actions, [{ kind: 'drop-host', serverId: 's1', model: 'a', idleS: 700, reason: /scale to zero on s1/ }]);
        t2.equal(r.actions.length, 1, 'unregistered models are left alone');
        t2.equal(r.nextExpiryMs, NOW + 50_000);
      },
    },
    {
      name: 'kept stage copies: dropped past the host keep-alive, kept while their model has queued requests',
      servers: [
        swapServer('s1', [gpu(0)], [], {
          stageCopies: [
            { instanceId: 'a-pipe', model: 'a', lastUsedMs: NOW - 700_000 },
            { instanceId: 'b-pipe', model: 'b', lastUsedMs: NOW - 700_000 },
            { instanceId: 'a-new', model: 'a', lastUsedMs: NOW - 1_000 },
          ],
        }),
      ],
      queued: [['b', 1]],
      expect: (t2, r) => {
        t2.match(r.actions, [{ kind: 'drop-stage', serverId: 's1', instanceId: 'a-pipe', model: 'a', idleS: 700, reason: /kept stage a-pipe/ }]);
        t2.equal(r.actions.length, 1);
        t2.ok(r.nextExpiryMs !== null && r.nextExpiryMs > NOW, 'the younger copy is timed');
      },
    },
  ];
  for (const row of rows) tt.test(row.name, async (t2) => row.expect(t2, expireIdle(row.servers, models, new Map(row.queued ?? []), NOW)));
});
