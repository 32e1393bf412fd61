// sharing.ts is pure: the swap policy's view of the cluster (residents, free bytes, host copies)
// built from worker snapshots plus what the gateway has under way, and a registered model as the
// policy sees it. Table rows of (snapshot, in-flight work) → the view.
import t from 'tap';
import type { InstanceView } from '../../gateway/cluster/worker-view.js';
import { hostInstanceOf, pipelineActive, swapModelOf, swapServers, type InFlightSwap, type SharingInputs } from '../../gateway/scheduler/sharing.js';
import type { InFlightLoad } from '../../gateway/scheduler/types.js';
import { GiB, readyWorker, stageView } from './fixtures/scheduler-views.js';

const NOW = 1_000_000;

function instance(id: string, o: Partial<InstanceView> = {}): InstanceView {
  return {
    instanceId: id,
    model: id.split('@')[0]!,
    stage: null,
    device: 0,
    residency: 'ON_DEVICE',
    deviceBytes: 2 * GiB,
    hostBytes: 2 * GiB,
    activeRequests: 0,
    error: null,
    lastUsedMs: NOW - 5_000,
    ...o,
  };
}

function inputs(o: Partial<SharingInputs>): SharingInputs {
  return {
    workers: [],
    loads: [],
    swaps: [],
    leaving: new Set(),
    gatewayActive: new Map(),
    lastUsed: new Map(),
    slotFreeInMs: () => 700,
    loadReadyAtMs: (l) => l.startedMs + 3_000,
    ...o,
  };
}

const load = (o: Partial<InFlightLoad>): InFlightLoad => ({
  instanceId: 'n@w1#0',
  model: 'n',
  workerId: 'w1',
  device: 0,
  bytes: 3 * GiB,
  startedMs: NOW - 1_000,
  status: 'loading',
  pipelineStage: null,
  ...o,
});

const swap = (o: Partial<InFlightSwap>): InFlightSwap => ({
  instanceId: 'h@w1#0',
  model: 'h',
  workerId: 'w1',
  device: 0,
  bytes: 2 * GiB,
  readyAtMs: NOW + 200,
  status: 'swapping',
  ...o,
});

interface Row {
  name: string;
  inputs: SharingInputs;
  expect: Record<string, unknown>;
}

const rows: Row[] = [
  {
    name: 'an idle instance on the device is a runnable resident; its host copy is listed',
    inputs: inputs({ workers: [readyWorker('w1', 10 * GiB, { instances: [instance('m@w1#0')] })] }),
    expect: {
      gpus: [{ index: 0, freeBytes: 10 * GiB, linkFreeAtMs: 0, residents: [{ instanceId: 'm@w1#0', bytes: 2 * GiB, activeRequests: 0, readyAtMs: null, lastUsedMs: NOW - 5_000 }] }],
      hostCopies: [{ model: 'm', bytes: 2 * GiB, lastUsedMs: NOW - 5_000 }],
    },
  },
  {
    name: "the gateway's own figures win when fresher: requests it placed, its last use",
    inputs: inputs({
      workers: [readyWorker('w1', 10 * GiB, { instances: [instance('m@w1#0', { activeRequests: 1 })] })],
      gatewayActive: new Map([['m@w1#0', 3]]),
      lastUsed: new Map([['m@w1#0', NOW - 10]]),
    }),
    expect: { gpus: [{ residents: [{ activeRequests: 3, lastUsedMs: NOW - 10, slotFreeAtMs: NOW + 700 }] }] },
  },
  {
    name: 'a load the snapshot does not list yet lands later and takes its bytes off the free memory',
    inputs: inputs({ workers: [readyWorker('w1', 10 * GiB)], loads: [load({})] }),
    expect: { gpus: [{ freeBytes: 7 * GiB, residents: [{ instanceId: 'n@w1#0', readyAtMs: NOW - 1_000 + 3_000 }] }], fetchesInFlight: 1 },
  },
  {
    name: 'a swap-in under way lands at its prediction and holds the link; the HOST_ONLY copy is not a resident twice',
    inputs: inputs({
      workers: [readyWorker('w1', 10 * GiB, { instances: [instance('h@w1#0', { residency: 'HOST_ONLY', deviceBytes: 0, device: -1 })] })],
      swaps: [swap({})],
    }),
    expect: {
      gpus: [{ freeBytes: 8 * GiB, linkFreeAtMs: NOW + 200, residents: [{ instanceId: 'h@w1#0', readyAtMs: NOW + 200 }] }],
      hostCopies: [{ model: 'h' }],
    },
  },
  {
    name: 'a landed swap-in the snapshot already shows is runnable and not counted twice',
    inputs: inputs({
      workers: [readyWorker('w1', 8 * GiB, { instances: [instance('h@w1#0')] })],
      swaps: [swap({ status: 'landed' })],
    }),
    expect: { gpus: [{ freeBytes: 8 * GiB, linkFreeAtMs: 0, residents: [{ instanceId: 'h@w1#0', readyAtMs: null }] }] },
  },
  {
    name: 'copies the gateway is swapping out or unloading are neither residents nor host copies',
    inputs: inputs({
      workers: [readyWorker('w1', 10 * GiB, { instances: [instance('m@w1#0'), instance('o@w1#0', { residency: 'HOST_ONLY', deviceBytes: 0 })] })],
      leaving: new Set(['m@w1#0', 'o@w1#0']),
    }),
    expect: { gpus: [{ residents: [] }], hostCopies: [] },
  },
  {
    name: 'pipeline stages are not residents; workers that are not READY are left out',
    inputs: inputs({
      workers: [
        readyWorker('w1', 10 * GiB, { instances: [instance('p@w1#0', { stage: stageView(0, 2) })] }),
        readyWorker('w2', 10 * GiB, { state: 'DRAINING', instances: [instance('m@w2#0')] }),
      ],
    }),
    expect: { id: 'w1', gpus: [{ residents: [] }], hostCopies: [] },
  },
  {
    name: "a stage kept in host memory after its pipeline dissolved is a stage copy, not the model's host copy",
    inputs: inputs({
      workers: [readyWorker('w1', 10 * GiB, { instances: [instance('p', { stage: stageView(1, 2), residency: 'HOST_ONLY', deviceBytes: 0, device: -1 })] })],
    }),
    expect: { hostCopies: [], stageCopies: [{ instanceId: 'p', model: 'p', lastUsedMs: NOW - 5_000 }] },
  },
];

for (const row of rows) {
  t.test(row.name, async (t) => {
    const servers = swapServers(row.inputs, NOW);
    t.equal(servers.length, 1);
    t.match(servers[0], row.expect);
  });
}

t.test('the model as the policy sees it: registry values over defaults, the footprint over the weights', async (t) => {
  const defaults = { maxBatch: 8, ttftSloMs: 10_000, gpuKeepAliveMs: 60_000, hostKeepAliveMs: 600_000 };
  const registered = { name: 'm', bytes: GiB, ttftSloMs: null, gpuKeepAliveMs: 5_000, hostKeepAliveMs: null };
  t.match(swapModelOf(registered, null, 3 * GiB, defaults), {
    bytes: 3 * GiB,
    ttftSloMs: 10_000,
    maxBatch: 8,
    gpuKeepAliveS: 5,
    hostKeepAliveS: 600,
    profile: { layerBytes: [GiB], embeddingBytes: 0, headBytes: 0 },
  });
  t.match(swapModelOf({ ...registered, ttftSloMs: 300 }, null, null, defaults), { bytes: GiB, ttftSloMs: 300 });
});

t.test('a swap-in uses the HOST_ONLY copy first, never one the gateway is busy with', async (t) => {
  const w = readyWorker('w1', GiB, {
    instances: [instance('m@w1#0'), instance('m@w1#1', { residency: 'HOST_ONLY', deviceBytes: 0 }), instance('x@w1#0', { residency: 'HOST_ONLY' })],
  });
  t.equal(hostInstanceOf(w, 'm', new Set())?.instanceId, 'm@w1#1');
  t.equal(hostInstanceOf(w, 'm', new Set(['m@w1#1']))?.instanceId, 'm@w1#0');
  t.equal(hostInstanceOf(w, 'n', new Set()), null);
});

t.test('a pipeline keeps a model out of the swap policy while it serves or loads, not once only kept stages remain', async (t) => {
  const stage = (residency: InstanceView['residency']): InstanceView => instance('m@w1#0', { stage: stageView(1, 2), residency });
  const on = (...instances: InstanceView[]) => [readyWorker('w1', GiB, { instances })];
  t.equal(pipelineActive('m', on(instance('m@w1#1')), []), false, 'a whole-model instance');
  t.equal(pipelineActive('m', on(stage('ON_DEVICE')), []), true, 'a stage on a device');
  t.equal(pipelineActive('m', on(stage('LOADING')), []), true, 'a stage loading');
  t.equal(pipelineActive('m', on(stage('HOST_ONLY'), instance('m@w1#1')), []), false, 'a stage kept in host memory after its pipeline dissolved');
  t.equal(pipelineActive('x', on(stage('ON_DEVICE')), []), false, 'another model');
  t.equal(pipelineActive('m', [], [{ model: 'm', pipelineStage: { index: 0, count: 2 } }]), true, 'a pipeline load the gateway started');
  t.equal(pipelineActive('m', [], [{ model: 'm', pipelineStage: null }]), false, 'a whole-model load');
});
