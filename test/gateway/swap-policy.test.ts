// routeRequest (swap-policy.ts) table-driven: warm first, then wait-or-move for a busy copy,
// then swap-in from a host cache with LRU evictions that spare busy and protected copies, then
// a cold start, and no-room when nothing can make space. Each row builds its cluster from the
// swap-views factories and checks the decision and the reason the trace shows.
import t, { type Test } from 'tap';
import { buildSwapView, routeRequest, SWAP_DEFAULTS, type RouteDecision, type SwapFigures, type SwapModel, type SwapServer } from '../../gateway/scheduler/swap-policy.js';
import { GB, gpu, hostCopy, resident, swapModel, swapServer } from './fixtures/swap-views.js';

const NOW = 1_000_000;

interface Row {
  name: string;
  servers: SwapServer[];
  model?: SwapModel;
  queued?: [string, number][];
  service?: [string, number][];
  figures?: Partial<SwapFigures>;
  expect: (tt: Test, d: RouteDecision) => void;
}

const m = swapModel('m');

/** A GPU whose memory is full of `n` idle 8 GB copies of other models (LRU order: o0 oldest). */
function fullGpu(index: number, n = 10, o: { lastUsedBase?: number; active?: number[] } = {}) {
  return gpu(
    index,
    Array.from({ length: n }, (_, i) => resident(`o${index}-${i}`, { bytes: 8 * GB, lastUsedMs: (o.lastUsedBase ?? NOW - 100_000) + i * 1000, activeRequests: o.active?.includes(i) ? 1 : 0 })),
  );
}

const rows: Row[] = [
  {
    name: 'resident with a free batch slot: run there, the less loaded copy first',
    servers: [
      swapServer('s1', [gpu(0, [resident('m', { instanceId: 'm#a', activeRequests: 3 })]), gpu(1, [resident('m', { instanceId: 'm#b', activeRequests: 1 })])]),
    ],
    expect: (tt, d) => {
      tt.match(d, { kind: 'run', serverId: 's1', gpu: 1, instanceId: 'm#b', predictedTtftMs: 10 });
      tt.match(d.reason, /warm: m#b .*1\/4 running/);
    },
  },
  {
    name: 'a copy still landing is not runnable: wait for it',
    servers: [swapServer('s1', [gpu(0, [resident('m', { readyAtMs: NOW + 30 })])])],
    expect: (tt, d) => tt.match(d, { kind: 'wait', instanceId: 'm#0', waitMs: 30, predictedTtftMs: 40, reason: /still landing/ }),
  },
  {
    name: 'busy, a slot frees in 5 ms: waiting beats moving (~19 ms over the peer link)',
    servers: [swapServer('s1', [gpu(0, [resident('m', { activeRequests: 4, slotFreeAtMs: NOW + 5 })]), gpu(1)], [hostCopy('m')])],
    expect: (tt, d) => tt.match(d, { kind: 'wait', waitMs: 5, predictedTtftMs: 15, reason: /batch slot\(s\) are taken/ }),
  },
  {
    name: 'busy for 2 s: move to the idle GPU over the peer link, faster than the host path',
    servers: [swapServer('s1', [gpu(0, [resident('m', { activeRequests: 4, slotFreeAtMs: NOW + 2_000 })]), gpu(1, [resident('x', { activeRequests: 1 })]), gpu(2)], [hostCopy('m')])],
    expect: (tt, d) => {
      tt.match(d, { kind: 'move', from: { serverId: 's1', gpu: 0, instanceId: 'm#0' }, to: { serverId: 's1', gpu: 2 }, source: 'peer', evictions: [] });
      tt.ok(d.kind === 'move' && d.predictedTtftMs < 25, 'about 19 ms');
      tt.match(d.reason, /idle GPU 2 .*peer link/);
    },
  },
  {
    name: 'a slow peer link: the move copies from the host cache instead',
    servers: [swapServer('s1', [gpu(0, [resident('m', { activeRequests: 4, slotFreeAtMs: NOW + 2_000 })]), gpu(1)], [hostCopy('m')], { peerBytesPerS: 10 * GB })],
    expect: (tt, d) => tt.match(d, { kind: 'move', to: { gpu: 1 }, source: 'host' }),
  },
  {
    name: 'busy, no idle GPU on its server, a host copy on another server: swap in there',
    servers: [
      swapServer('s1', [gpu(0, [resident('m', { activeRequests: 4, slotFreeAtMs: NOW + 2_000 })])], [hostCopy('m')]),
      swapServer('s2', [gpu(0)], [hostCopy('m')]),
    ],
    expect: (tt, d) => tt.match(d, { kind: 'swap-in', to: { serverId: 's2', gpu: 0 }, evictions: [] }),
  },
  {
    name: 'host-cached: swap in to the GPU whose link is free rather than one busy for 500 ms',
    servers: [swapServer('s1', [gpu(0, [], { linkFreeAtMs: NOW + 500 }), gpu(1)], [hostCopy('m')])],
    expect: (tt, d) => {
      tt.match(d, { kind: 'swap-in', to: { serverId: 's1', gpu: 1 }, evictions: [] });
      if (d.kind === 'swap-in') tt.ok(Math.abs(d.predictedTtftMs - 42) < 1, `layer-pipelined: copy ~41.4 ms + one layer's prefill (${d.predictedTtftMs})`);
      tt.match(d.reason, /swap-in: .*s1's host cache to GPU 1/);
    },
  },
  {
    name: 'equal links: the idle GPU is preferred over one running requests',
    servers: [swapServer('s1', [gpu(0, [resident('x', { activeRequests: 2 })]), gpu(1, [resident('y')])], [hostCopy('m')])],
    expect: (tt, d) => tt.match(d, { kind: 'swap-in', to: { gpu: 1 } }),
  },
  {
    name: 'a full GPU: evict the least recently used idle copy, sparing busy ones',
    servers: [swapServer('s1', [fullGpu(0, 10, { active: [0] })], [hostCopy('m')])],
    expect: (tt, d) => {
      tt.match(d, { kind: 'swap-in', to: { gpu: 0 } });
      if (d.kind === 'swap-in') tt.same(d.evictions.map((e) => e.model), ['o0-1'], 'o0-0 is older but busy');
      tt.match(d.reason, /evicting 1 idle LRU copy/);
    },
  },
  {
    name: 'a model with queued requests keeps its only GPU copy',
    servers: [swapServer('s1', [fullGpu(0, 10)], [hostCopy('m')])],
    queued: [['o0-0', 2]],
    expect: (tt, d) => {
      tt.match(d, { kind: 'swap-in' });
      if (d.kind === 'swap-in') tt.same(d.evictions.map((e) => e.model), ['o0-1']);
    },
  },
  {
    name: 'a queued model with a second runnable copy elsewhere is not protected',
    servers: [swapServer('s1', [fullGpu(0, 10), gpu(1, [resident('o0-0', { instanceId: 'o0-0#1', lastUsedMs: NOW })], { totalBytes: 2 * GB })], [hostCopy('m')])],
    queued: [['o0-0', 2]],
    expect: (tt, d) => {
      tt.match(d, { kind: 'swap-in', to: { gpu: 0 } });
      if (d.kind === 'swap-in') tt.same(d.evictions.map((e) => e.instanceId), ['o0-0#0']);
    },
  },
  {
    name: 'two copies of a queued model on the full GPU: one may go, the other stays',
    model: swapModel('m', { bytes: 16 * GB }),
    servers: [
      swapServer(
        's1',
        [gpu(0, [resident('q', { instanceId: 'q#0', bytes: 8 * GB, lastUsedMs: 1 }), resident('q', { instanceId: 'q#1', bytes: 8 * GB, lastUsedMs: 2 }), ...fullGpu(0, 8).residents])],
        [hostCopy('m', { bytes: 16 * GB })],
      ),
    ],
    queued: [['q', 1]],
    expect: (tt, d) => {
      tt.match(d, { kind: 'swap-in' });
      if (d.kind === 'swap-in') tt.same(d.evictions.map((e) => e.instanceId), ['q#0', 'o0-0#0']);
    },
  },
  {
    name: 'a bigger model evicts as many LRU copies as it needs',
    model: swapModel('m', { bytes: 20 * GB }),
    servers: [swapServer('s1', [fullGpu(0, 10)], [hostCopy('m', { bytes: 20 * GB })])],
    expect: (tt, d) => {
      tt.match(d, { kind: 'swap-in' });
      if (d.kind === 'swap-in') tt.same(d.evictions.map((e) => e.model), ['o0-0', 'o0-1', 'o0-2']);
    },
  },
  {
    name: 'the caching server has no room (all busy): cold start on another server',
    servers: [
      swapServer('s1', [fullGpu(0, 10, { active: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] })], [hostCopy('m')]),
      swapServer('s2', [gpu(0)]),
    ],
    model: swapModel('m', { ttftSloMs: 10_000 }),
    expect: (tt, d) => {
      tt.match(d, { kind: 'cold-start', evictions: [] });
      if (d.kind === 'cold-start') tt.same(d.stages.map((s) => s.serverId), ['s2']);
      tt.match(d.reason, /no GPU of a server caching it has room/);
    },
  },
  {
    name: 'nowhere cached: cold start, pipelined over servers when one fetch misses the SLO',
    model: swapModel('m', { bytes: 8 * GB, ttftSloMs: 5_000 }),
    servers: [swapServer('s1', [gpu(0)]), swapServer('s2', [gpu(0)]), swapServer('s3', [gpu(0)])],
    expect: (tt, d) => {
      tt.match(d, { kind: 'cold-start' });
      if (d.kind !== 'cold-start') return;
      tt.equal(d.stages.length, 2, '8 GB at 1.25 GB/s is 6.4 s on one link, 3.2 s on two');
      tt.equal(new Set(d.stages.map((s) => s.serverId)).size, 2);
      tt.ok(d.predictedTtftMs <= 5_000);
    },
  },
  {
    name: 'cold start makes room by evicting idle copies on the chosen GPU',
    servers: [swapServer('s1', [fullGpu(0, 10)])],
    model: swapModel('m', { ttftSloMs: 10_000 }),
    expect: (tt, d) => {
      tt.match(d, { kind: 'cold-start' });
      if (d.kind === 'cold-start') tt.same(d.evictions.map((e) => e.model), ['o0-0']);
    },
  },
  {
    name: 'swapping off (a baseline): the host copy is ignored, cold start',
    servers: [swapServer('s1', [gpu(0)], [hostCopy('m')])],
    figures: { swapping: false, maxColdStartDegree: 1 },
    expect: (tt, d) => {
      tt.match(d, { kind: 'cold-start' });
      if (d.kind === 'cold-start') tt.equal(d.stages.length, 1);
    },
  },
  {
    name: 'swapping off: a busy copy is not moved to the idle GPU, it is waited for',
    servers: [swapServer('s1', [gpu(0, [resident('m', { activeRequests: 4, slotFreeAtMs: NOW + 500 })]), gpu(1)], [hostCopy('m')])],
    figures: { swapping: false },
    expect: (tt, d) => tt.match(d, { kind: 'wait', waitMs: 500 }),
  },
  {
    name: 'every GPU full of busy copies and nothing cached: no-room',
    servers: [swapServer('s1', [fullGpu(0, 10, { active: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] })])],
    expect: (tt, d) => tt.match(d, { kind: 'no-room', reason: /no room for 'm'/ }),
  },
  {
    name: 'busy, every option misses the SLO, a cold start slower still: wait anyway',
    model: swapModel('m', { bytes: 8 * GB }),
    servers: [swapServer('s1', [gpu(0, [resident('m', { bytes: 8 * GB, activeRequests: 4, slotFreeAtMs: NOW + 3_000 })])])],
    expect: (tt, d) => tt.match(d, { kind: 'wait', waitMs: 3_000 }),
  },
  {
    name: 'busy for 30 s with no other copy: a cold start is sooner',
    servers: [swapServer('s1', [gpu(0, [resident('m', { activeRequests: 4, slotFreeAtMs: NOW + 30_000 })])])],
    expect: (tt, d) => tt.match(d, { kind: 'cold-start', reason: /sooner than waiting \(30010 ms\) or another warm copy \(none\)/ }),
  },
  {
    name: 'a slot frees soon but 40 queue behind one copy: add a copy (move) that drains them in time',
    servers: [swapServer('s1', [gpu(0, [resident('m', { activeRequests: 4, slotFreeAtMs: NOW + 5 })]), gpu(1)], [hostCopy('m')])],
    queued: [['m', 40]],
    service: [['m', 2_000]],
    expect: (tt, d) => tt.match(d, { kind: 'move', to: { gpu: 1 }, reason: /adds a copy: waiting on the 1 there are, the queue's last request would see 19515 ms/ }),
  },
  {
    name: 'the same queue with no measured service time: judged by its head, wait',
    servers: [swapServer('s1', [gpu(0, [resident('m', { activeRequests: 4, slotFreeAtMs: NOW + 5 })]), gpu(1)], [hostCopy('m')])],
    queued: [['m', 40]],
    expect: (tt, d) => tt.match(d, { kind: 'wait', waitMs: 5 }),
  },
  {
    name: 'a short queue the copy drains within the SLO: wait',
    servers: [swapServer('s1', [gpu(0, [resident('m', { activeRequests: 4, slotFreeAtMs: NOW + 5 })]), gpu(1)], [hostCopy('m')])],
    queued: [['m', 3]],
    service: [['m', 200]],
    expect: (tt, d) => tt.match(d, { kind: 'wait', waitMs: 5 }),
  },
];

for (const row of rows) {
  t.test(row.name, async (tt) => {
    const model = row.model ?? m;
    const view = buildSwapView(row.servers, new Map(row.queued ?? []), new Map(row.service ?? []));
    row.expect(tt, routeRequest(view, model, { ...SWAP_DEFAULTS, ...row.figures }, NOW));
  });
}

t.test('buildSwapView indexes residents and host copies by model', async (tt) => {
  const view = buildSwapView(
    [swapServer('s1', [gpu(0, [resident('a')]), gpu(1, [resident('a', { instanceId: 'a#1' }), resident('b')])], [hostCopy('a')]), swapServer('s2', [gpu(0)], [hostCopy('a'), hostCopy('c')])],
    new Map(),
  );
  tt.same(view.residentsByModel.get('a')?.map((r) => [r.server, r.gpu, r.resident.instanceId]), [[0, 0, 'a#0'], [0, 1, 'a#1']]);
  tt.same(view.hostByModel.get('a'), [0, 1]);
  tt.same(view.hostByModel.get('c'), [1]);
  tt.equal(view.residentsByModel.get('c'), undefined);
});
