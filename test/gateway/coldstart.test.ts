// The cold-start planner is pure: TTFT predictions checked against hand-computed figures, degree
// and placement choices as rows of (model, servers) → decision, and monotonicity over random
// clusters (more bandwidth never makes a cold start slower).
import t from 'tap';
import type { InstanceView, WorkerView } from '../../gateway/cluster/worker-view.js';
import {
  chooseDegree,
  COLD_START_DEFAULTS,
  placeStages,
  predictTtft,
  prefillShares,
  serverFigures,
  type ColdStartDefaults,
  type ColdStartModel,
  type DegreeDecision,
  type LoadOnLink,
  type PlacementDecision,
  type ServerFigures,
  type TtftInput,
} from '../../gateway/scheduler/coldstart.js';

const GB = 1e9;

/** Round figures: 1 GB/s links, 10 GB/s copies, 10 MB chunks (the last copy takes 1 ms). */
const DEFAULTS: ColdStartDefaults = { fetchBytesPerS: GB, copyBytesPerS: 10 * GB, initMs: 500, prefillBytesPerS: 100 * GB, hopMs: 2, chunkBytes: 1e7 };

function createServer(o: Partial<ServerFigures> = {}): ServerFigures {
  return {
    id: 'w1',
    fetchBytesPerS: GB,
    fetchesInFlight: 0,
    copyBytesPerS: 10 * GB,
    initMs: 500,
    devices: [{ index: 0, freeBytes: 80 * GB }],
    hostCachedBytes: 0,
    heldStages: [],
    ...o,
  };
}

/** n servers w1..wn, each with the same figures unless overridden by index. */
function createServers(n: number, o: Record<number, Partial<ServerFigures>> = {}): ServerFigures[] {
  return Array.from({ length: n }, (_, i) => createServer({ id: `w${i + 1}`, ...o[i + 1] }));
}

/** 12 layers of 1 GB, no embedding or head bytes unless overridden: 12 GB in all. */
function createModel(o: Partial<ColdStartModel> = {}, profile: Partial<ColdStartModel['profile']> = {}): ColdStartModel {
  return {
    name: 'm',
    profile: { layerBytes: new Array<number>(12).fill(GB), embeddingBytes: 0, headBytes: 0, tiedEmbeddings: false, ...profile },
    ttftSloMs: null,
    prefillMs: 120,
    ...o,
  };
}

function createTtftInput(o: Partial<TtftInput> = {}): TtftInput {
  return { modelBytes: GB, stageBytes: [GB], servers: [createServer()], prefillMsPerStage: [50], hopMs: 2, defaults: DEFAULTS, ...o };
}

t.test('predictTtft: the breakdown', async (t) => {
  const rows: { name: string; input: TtftInput; expect: Record<string, number> }[] = [
    {
      name: 'init hidden behind the fetch: fetch + last chunk copy + prefill',
      input: createTtftInput(),
      expect: { fetchMs: 1000, initMs: 500, loadMs: 1, readyMs: 1001, prefillMs: 50, totalMs: 1051, floorFetchMs: 1000 },
    },
    {
      name: 'init longer than the fetch: init + last chunk copy',
      input: createTtftInput({ stageBytes: [0.2 * GB], servers: [createServer({ initMs: 800 })] }),
      expect: { fetchMs: 200, initMs: 800, loadMs: 1, readyMs: 801, totalMs: 851 },
    },
    {
      name: 'copy slower than the fetch: first chunk, then copies back to back',
      input: createTtftInput({ servers: [createServer({ copyBytesPerS: 0.1 * GB })] }),
      expect: { fetchMs: 1000, loadMs: 9010, readyMs: 10010, totalMs: 10060 },
    },
    {
      name: 'a server already fetching shares its link',
      input: createTtftInput({ servers: [createServer({ fetchesInFlight: 1 })] }),
      expect: { fetchMs: 2000, readyMs: 2001, totalMs: 2051, floorFetchMs: 2000 },
    },
    {
      name: 'two stages: the slowest sets ready, prefill in sequence with one hop',
      input: createTtftInput({
        modelBytes: 3 * GB,
        stageBytes: [GB, 2 * GB],
        servers: [createServer(), createServer({ id: 'w2', fetchBytesPerS: 4 * GB })],
        prefillMsPerStage: [10, 20],
        hopMs: 5,
      }),
      expect: { fetchMs: 1000, readyMs: 1001, prefillMs: 35, totalMs: 1036, floorFetchMs: 600, slowestStage: 0 },
    },
    {
      name: 'unmeasured bandwidth: the default applies',
      input: createTtftInput({ servers: [createServer({ fetchBytesPerS: null })], defaults: { ...DEFAULTS, fetchBytesPerS: 0.5 * GB } }),
      expect: { fetchMs: 2000, readyMs: 2001 },
    },
  ];
  for (const row of rows) {
    const p = predictTtft(row.input);
    for (const [key, value] of Object.entries(row.expect)) {
      t.ok(Math.abs((p as unknown as Record<string, number>)[key] as number - value) < 1e-6, `${row.name}: ${key} ${(p as unknown as Record<string, number>)[key]} = ${value}`);
    }
    t.ok(Math.abs(p.totalMs - (Math.max(p.fetchMs, p.initMs) + p.loadMs + p.prefillMs)) < 1e-6, `${row.name}: parts add up`);
  }
});

t.test("predictTtft: bytes a stage's server holds in host memory are not fetched", async (t) => {
  const fetching = predictTtft(createTtftInput({ stageBytes: [GB, GB], modelBytes: 2 * GB, prefillMsPerStage: [1, 1], servers: [createServer(), createServer({ id: 'w2' })] }));
  const holding = predictTtft(
    createTtftInput({ stageBytes: [GB, GB], heldBytes: [GB, 0.25 * GB], modelBytes: 2 * GB, prefillMsPerStage: [1, 1], servers: [createServer(), createServer({ id: 'w2' })] }),
  );
  t.same(holding.stages.map((s) => s.bytes), [0, 0.75 * GB], 'each stage fetches what its server lacks');
  t.equal(holding.stages[0]?.fetchMs, 0);
  t.equal(holding.fetchMs, 750);
  t.ok(holding.totalMs < fetching.totalMs);
});

t.test('predictTtft: defaults used are named, measured zero counts as unmeasured', async (t) => {
  const measuredAll = predictTtft(createTtftInput());
  t.same(measuredAll.defaultsUsed, []);
  const none = predictTtft(
    createTtftInput({
      stageBytes: [GB, GB],
      modelBytes: 2 * GB,
      prefillMsPerStage: [1, 1],
      hopMs: null,
      servers: [createServer({ fetchBytesPerS: 0, copyBytesPerS: null, initMs: null }), createServer({ id: 'w2' })],
    }),
  );
  t.same(none.defaultsUsed, ['w1 fetch bandwidth', 'w1 copy bandwidth', 'w1 init time', 'activation hop time']);
  t.equal(none.stages[0]?.effectiveFetchBytesPerS, DEFAULTS.fetchBytesPerS);
  t.equal(none.prefillMs, 2 + DEFAULTS.hopMs);
  const realDefaults = predictTtft(createTtftInput({ servers: [createServer({ fetchBytesPerS: null })], defaults: COLD_START_DEFAULTS }));
  t.equal(realDefaults.fetchMs, 800, '1 GB at the documented 10 Gbit/s default');
});

t.test('predictTtft: inconsistent input is a RangeError', async (t) => {
  t.throws(() => predictTtft(createTtftInput({ stageBytes: [] })), RangeError);
  t.throws(() => predictTtft(createTtftInput({ stageBytes: [GB, GB] })), RangeError);
  t.throws(() => predictTtft(createTtftInput({ prefillMsPerStage: [] })), RangeError);
  t.throws(() => predictTtft(createTtftInput({ stageBytes: [-1] })), RangeError);
  t.throws(() => predictTtft(createTtftInput({ prefillMsPerStage: [Number.NaN] })), RangeError);
});

t.test('prefillShares: by bytes, estimated from bytes when unmeasured', async (t) => {
  t.same(prefillShares(120, [GB, 2 * GB, 3 * GB], 6 * GB, DEFAULTS), [20, 40, 60]);
  t.same(prefillShares(null, [GB, GB], 2 * GB, DEFAULTS), [10, 10], '2 GB at 100 GB/s: 20 ms');
});

interface DegreeRow {
  name: string;
  model: ColdStartModel;
  servers: ServerFigures[];
  maxK?: number;
  expect: {
    kind: DegreeDecision['kind'];
    k?: number;
    servers?: string[];
    sloMet?: boolean;
    reason?: RegExp;
  };
}

const degreeRows: DegreeRow[] = [
  {
    name: 'SLO met at k=1: k=1',
    model: createModel({ ttftSloMs: 20_000 }),
    servers: createServers(4),
    expect: { kind: 'cold-start', k: 1, servers: ['w1'], sloMet: true, reason: /degree 1 on w1: predicted TTFT 12\d{3} ms ≤ SLO 20000 ms/ },
  },
  {
    // k=3: 4000 ms fetch + 1 + 120 prefill + 4 hops > 3500; k=4: 3000 + 1 + 120 + 6 = 3127.
    name: 'tight SLO: the smallest degree that meets it',
    model: createModel({ ttftSloMs: 3500 }),
    servers: createServers(8),
    expect: { kind: 'cold-start', k: 4, servers: ['w1', 'w2', 'w3', 'w4'], sloMet: true },
  },
  {
    name: 'no SLO: smallest degree that places',
    model: createModel(),
    servers: createServers(4),
    expect: { kind: 'cold-start', k: 1, sloMet: true, reason: /no TTFT SLO/ },
  },
  {
    name: 'busy servers avoided',
    model: createModel({ ttftSloMs: 7000 }),
    servers: createServers(4, { 1: { fetchesInFlight: 2 }, 2: { fetchesInFlight: 1 } }),
    expect: { kind: 'cold-start', k: 2, servers: ['w3', 'w4'], sloMet: true },
  },
  {
    name: 'a server without room is skipped, even with the fastest link',
    model: createModel({ ttftSloMs: 7000 }),
    servers: createServers(3, { 1: { fetchBytesPerS: 2 * GB, devices: [{ index: 0, freeBytes: 5 * GB }] } }),
    expect: { kind: 'cold-start', k: 2, servers: ['w2', 'w3'] },
  },
  {
    name: 'SLO out of reach: the least predicted TTFT, sloMet false, capped by servers',
    model: createModel({ ttftSloMs: 1000 }),
    servers: createServers(3),
    maxK: 8,
    expect: { kind: 'cold-start', k: 3, sloMet: false, reason: /no degree up to 3 meets the TTFT SLO of 1000 ms \(degrees capped at 3 by 3 READY worker\(s\)\); degree 3 on w1, w2, w3 predicts the least, 41\d\d ms/ },
  },
  {
    name: 'too big for one device: the smallest degree whose stages fit',
    model: createModel(),
    servers: createServers(4, { 1: { devices: [{ index: 0, freeBytes: 5 * GB }] }, 2: { devices: [{ index: 0, freeBytes: 5 * GB }] }, 3: { devices: [{ index: 0, freeBytes: 5 * GB }] }, 4: { devices: [{ index: 0, freeBytes: 5 * GB }] } }),
    expect: { kind: 'cold-start', k: 3 },
  },
  {
    name: 'nothing fits anywhere',
    model: createModel(),
    servers: createServers(2, { 1: { devices: [{ index: 0, freeBytes: GB }] }, 2: { devices: [] } }),
    expect: { kind: 'unplaceable', reason: /no degree up to 2 gives every stage of model 'm' \(11\.2 GiB\) a device with room; the most free on one device is 953\.7 MiB/ },
  },
  { name: 'no servers', model: createModel(), servers: [], expect: { kind: 'unplaceable', reason: /no READY worker/ } },
];

t.test('chooseDegree', async (t) => {
  for (const row of degreeRows) {
    const d = chooseDegree({ model: row.model, servers: row.servers, maxK: row.maxK ?? 8, hopMs: null, defaults: DEFAULTS });
    t.equal(d.kind, row.expect.kind, `${row.name}: kind`);
    if (row.expect.reason) t.match(d.reason, row.expect.reason, `${row.name}: reason`);
    if (d.kind !== 'cold-start') continue;
    if (row.expect.k !== undefined) t.equal(d.k, row.expect.k, `${row.name}: k`);
    if (row.expect.servers) t.same(d.stages.map((s) => s.serverId), row.expect.servers, `${row.name}: servers`);
    if (row.expect.sloMet !== undefined) t.equal(d.sloMet, row.expect.sloMet, `${row.name}: sloMet`);
    t.equal(d.stages.length, d.k);
    t.equal(new Set(d.stages.map((s) => s.serverId)).size, d.k, `${row.name}: distinct servers`);
    if (d.sloMet) t.equal(d.considered.at(-1)?.k, d.k, `${row.name}: stops at the first degree meeting the SLO`);
    for (const s of d.stages) {
      const server = row.servers.find((x) => x.id === s.serverId);
      const device = server?.devices.find((x) => x.index === s.device);
      t.ok(device && device.freeBytes >= s.bytes, `${row.name}: stage ${s.stageIndex} fits on ${s.serverId}`);
    }
  }
});

t.test('chooseDegree: considered lists every degree tried with its prediction', async (t) => {
  const d = chooseDegree({ model: createModel({ ttftSloMs: 3500 }), servers: createServers(8), maxK: 8, hopMs: 2, defaults: DEFAULTS });
  if (d.kind !== 'cold-start') throw new Error(d.reason);
  t.same(d.considered.map((c) => c.k), [1, 2, 3, 4]);
  const totals = d.considered.map((c) => c.totalMs ?? Infinity);
  t.ok(totals.every((x, i) => i === 0 || x < (totals[i - 1] ?? 0)), `uniform servers: each degree faster (${totals.map(Math.round).join(', ')})`);
  t.equal(d.prediction.totalMs, totals[3]);
  t.throws(() => chooseDegree({ model: createModel(), servers: createServers(1), maxK: 0, hopMs: null, defaults: DEFAULTS }), RangeError);

  // 4 GB stages of degree 3 fit on two servers only; degree 4's 3 GB stages fit on all four.
  const small = { devices: [{ index: 0, freeBytes: 3.5 * GB }] };
  const skip = chooseDegree({ model: createModel({ ttftSloMs: 3500 }), servers: createServers(4, { 1: { devices: [{ index: 0, freeBytes: 7 * GB }] }, 2: { devices: [{ index: 0, freeBytes: 7 * GB }] }, 3: small, 4: small }), maxK: 8, hopMs: 2, defaults: DEFAULTS });
  if (skip.kind !== 'cold-start') throw new Error(skip.reason);
  t.same(skip.considered.map((c) => [c.k, c.totalMs === null ? null : Math.round(c.totalMs)]), [[1, null], [2, 6123], [3, null], [4, 3127]], 'a degree that does not place is skipped, not the end');
  t.equal(skip.k, 4);

  const unmeasured = chooseDegree({ model: createModel({ ttftSloMs: 3500 }), servers: createServers(8).map((s) => ({ ...s, fetchBytesPerS: null })), maxK: 8, hopMs: 2, defaults: DEFAULTS });
  if (unmeasured.kind !== 'cold-start') throw new Error(unmeasured.reason);
  t.equal(unmeasured.prediction.totalMs, d.prediction.totalMs, 'unmeasured links predicted at the default bandwidth');
  t.ok(unmeasured.prediction.defaultsUsed.includes('w1 fetch bandwidth'));
});

function placed(d: PlacementDecision): Extract<PlacementDecision, { kind: 'placed' }> {
  if (d.kind !== 'placed') throw new Error(d.reason);
  return d;
}

t.test('placeStages', async (t) => {
  const model = createModel();
  const place = (servers: ServerFigures[], k: number, m = model) => placeStages({ model: m, servers, k, defaults: DEFAULTS });

  const few = placed(place(createServers(2), 4));
  t.equal(few.requestedK, 4);
  t.equal(few.stages.length, 2, 'too few servers: the best available smaller degree');
  t.match(few.note, /degree 4 wanted 4 servers, 2 READY; placed 2 stage\(s\) instead/);
  t.same(few.stages.map((s) => [s.range.layerStart, s.range.layerEnd, s.bytes]), [[0, 6, 6 * GB], [6, 12, 6 * GB]]);

  const roomless = placed(place(createServers(4, { 1: { devices: [{ index: 0, freeBytes: 2 * GB }] }, 2: { devices: [{ index: 0, freeBytes: 2 * GB }] } }), 4));
  t.equal(roomless.stages.length, 2, 'only two servers have room for a 3 GB stage');
  t.match(roomless.note, /degree 4 wanted 4 servers with room for a stage \(2\.8 GiB or more\), 2 of 4 have it/);
  t.same(roomless.stages.map((s) => s.serverId), ['w3', 'w4']);

  t.equal(placed(place(createServers(4), 4)).note, null);

  const cached = placed(place(createServers(4, { 3: { hostCachedBytes: GB }, 4: { hostCachedBytes: 2 * GB } }), 2));
  t.same(cached.stages.map((s) => s.serverId).sort(), ['w3', 'w4'], 'equal links: servers holding bytes of the model first');

  // Servers that kept the stages of an earlier pipeline of this split get those stages back and
  // fetch nothing; the prediction credits them.
  const [front, back] = [
    { layerStart: 0, layerEnd: 6, hasEmbeddings: true, hasHead: false },
    { layerStart: 6, layerEnd: 12, hasEmbeddings: false, hasHead: true },
  ];
  const keeping = createServers(4, { 3: { hostCachedBytes: 6 * GB, heldStages: [back] }, 4: { hostCachedBytes: 6 * GB, heldStages: [front] } });
  const reformed = placed(place(keeping, 2));
  t.same(reformed.stages.map((s) => s.serverId), ['w4', 'w3'], 'each kept stage goes back to the server holding it');
  const swappedHolders = createServers(4, { 3: { hostCachedBytes: 6 * GB, heldStages: [front] }, 4: { hostCachedBytes: 6 * GB, heldStages: [back] } });
  t.same(placed(place(swappedHolders, 2)).stages.map((s) => s.serverId), ['w3', 'w4']);

  const faster = placed(place(createServers(4, { 1: { fetchesInFlight: 1 }, 2: { fetchBytesPerS: 0.5 * GB }, 4: { fetchBytesPerS: 2 * GB } }), 2));
  t.same(faster.stages.map((s) => s.serverId).sort(), ['w3', 'w4'], 'idle links first, then the fastest');

  const heavy = createModel({}, { layerBytes: new Array<number>(4).fill(GB), embeddingBytes: 6 * GB });
  const skewed = placed(place(createServers(2, { 2: { fetchBytesPerS: 3 * GB } }), 2, heavy));
  t.same(skewed.stages.map((s) => [s.serverId, s.bytes]), [['w2', 7 * GB], ['w1', 3 * GB]], 'the largest stage goes to the fastest link');

  const constrained = placed(
    place(createServers(2, { 1: { fetchBytesPerS: 3 * GB, devices: [{ index: 0, freeBytes: 4 * GB }] }, 2: { devices: [{ index: 0, freeBytes: 2 * GB }, { index: 1, freeBytes: 8 * GB }] } }), 2, heavy),
  );
  t.same(constrained.stages.map((s) => [s.serverId, s.device]), [['w2', 1], ['w1', 0]], 'memory first: the 7 GB stage only fits on w2 device 1');

  t.throws(() => place(createServers(2), 13), RangeError);
  t.throws(() => place(createServers(2), 0), RangeError);
  const none = place([], 2);
  t.equal(none.kind, 'unplaceable');
});

t.test('serverFigures from a worker view', async (t) => {
  const instance = (o: Partial<InstanceView>): InstanceView => ({
    instanceId: 'm@w1#0',
    model: 'm',
    stage: null,
    device: 0,
    residency: 'HOST_ONLY',
    deviceBytes: 0,
    hostBytes: 3 * GB,
    activeRequests: 0,
    error: null,
    lastUsedMs: 0,
    ...o,
  });
  const view: WorkerView = {
    id: 'w1',
    address: '127.0.0.1:1',
    backend: 'cuda',
    state: 'READY',
    devices: [
      { index: 0, kind: 'cuda', name: 'gpu', totalBytes: 80 * GB, freeBytes: 40 * GB },
      { index: 1, kind: 'cuda', name: 'gpu', totalBytes: 80 * GB, freeBytes: 70 * GB },
    ],
    instances: [instance({}), instance({ instanceId: 'other@w1#0', model: 'other', hostBytes: 9 * GB }), instance({ instanceId: 'x@w1#1', model: 'x' })],
    activeRequests: 0,
    hostCacheBytes: 15 * GB,
    hostCacheLimit: 100 * GB,
    hostCachePinned: true,
    deviceLinks: false,
    fetchBytesPerS: 0,
    lastSeenMs: 0,
  };
  const load = (o: Partial<LoadOnLink>): LoadOnLink => ({ instanceId: 'n@w1#0', workerId: 'w1', device: 1, bytes: 10 * GB, status: 'loading', ...o });
  const loads = [load({}), load({ instanceId: 'x@w1#1', device: 0 }), load({ instanceId: 'y@w2#0', workerId: 'w2' }), load({ instanceId: 'z@w1#2', status: 'ready', device: 1 })];
  t.same(serverFigures(view, 'm', loads), {
    id: 'w1',
    fetchBytesPerS: null,
    fetchesInFlight: 2,
    copyBytesPerS: null,
    initMs: null,
    devices: [
      { index: 0, freeBytes: 40 * GB },
      { index: 1, freeBytes: 50 * GB },
    ],
    hostCachedBytes: 3 * GB,
    heldStages: [{ layerStart: 0, layerEnd: Number.MAX_SAFE_INTEGER, hasEmbeddings: true, hasHead: true }],
  });
  t.equal(serverFigures({ ...view, fetchBytesPerS: 2 * GB }, 'm', []).fetchBytesPerS, 2 * GB);
  const stage = { layerStart: 4, layerEnd: 8, hasEmbeddings: false, hasHead: true, stageIndex: 1, stageCount: 2 };
  const kept = { ...view, instances: [instance({ stage }), instance({ instanceId: 'loading', stage: null, residency: 'LOADING' })] };
  t.same(serverFigures(kept, 'm', []).heldStages, [stage], 'a kept stage is held; a copy still loading is not');
});

t.test('monotonicity: more bandwidth never increases predicted TTFT', async (t) => {
  let seed = 11;
  const next = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const randomServer = (i: number): ServerFigures =>
    createServer({
      id: `w${i}`,
      fetchBytesPerS: next(4) === 0 ? null : (1 + next(40)) * 0.1 * GB,
      fetchesInFlight: next(3),
      copyBytesPerS: next(4) === 0 ? null : (1 + next(40)) * GB,
      initMs: next(4) === 0 ? null : next(3000),
      devices: [{ index: 0, freeBytes: (1 + next(16)) * GB }],
      hostCachedBytes: next(3) * GB,
    });
  let checks = 0;
  for (let trial = 0; trial < 40; trial++) {
    const k = 1 + next(4);
    const servers = Array.from({ length: k }, (_, i) => randomServer(i));
    const stageBytes = Array.from({ length: k }, () => (1 + next(50)) * 0.1 * GB);
    const base = createTtftInput({ modelBytes: stageBytes.reduce((a, b) => a + b, 0), stageBytes, servers, prefillMsPerStage: stageBytes.map(() => next(50)) });
    const before = predictTtft(base).totalMs;
    const i = next(k);
    const s = servers[i] as ServerFigures;
    const faster = (o: Partial<ServerFigures>) => predictTtft({ ...base, servers: servers.map((x, j) => (j === i ? { ...s, ...o } : x)) }).totalMs;
    const fetch = s.fetchBytesPerS ?? DEFAULTS.fetchBytesPerS;
    t.ok(faster({ fetchBytesPerS: fetch * (1 + next(10)) }) <= before + 1e-9, `trial ${trial}: faster link`);
    t.ok(faster({ copyBytesPerS: (s.copyBytesPerS ?? DEFAULTS.copyBytesPerS) * 2 }) <= before + 1e-9, `trial ${trial}: faster copy`);
    t.ok(faster({ fetchesInFlight: 0 }) <= before + 1e-9, `trial ${trial}: idle link`);
    checks += 3;

    // The degree choice: every degree's prediction improves and the chosen degree never grows
    // when every link gets faster (the preference order is unchanged by a common factor).
    const cluster = Array.from({ length: 3 + next(4) }, (_, j) => randomServer(j));
    const model = createModel({ ttftSloMs: 1000 + next(10_000), prefillMs: next(200) });
    const scale = 1 + next(5);
    const choose = (servers: ServerFigures[]) => chooseDegree({ model, servers, maxK: 6, hopMs: 2, defaults: DEFAULTS });
    const slow = choose(cluster);
    const fast = choose(cluster.map((x) => ({ ...x, fetchBytesPerS: (x.fetchBytesPerS ?? DEFAULTS.fetchBytesPerS) * scale })));
    if (slow.kind !== 'cold-start' || fast.kind !== 'cold-start') {
      t.equal(fast.kind, slow.kind, `trial ${trial}: placeable either way or neither`);
      continue;
    }
    if (slow.sloMet) t.ok(fast.sloMet && fast.k <= slow.k, `trial ${trial}: degree ${slow.k} → ${fast.k}`);
    for (const c of fast.considered) {
      const was = slow.considered.find((x) => x.k === c.k);
      if (was?.totalMs != null && c.totalMs !== null) t.ok(c.totalMs <= was.totalMs + 1e-9, `trial ${trial} k=${c.k}: ${was.totalMs} → ${c.totalMs}`);
    }
    checks += 1;
  }
  t.ok(checks > 100, `${checks} checks`);
});
