// Where a request runs: a pure function of the cluster state, so it is tested with tables and
// reused by the simulator. Order of preference, each step explained in `reason`:
//   1. an instance of the model already ON_DEVICE on a READY worker, least active requests first;
//   2. a load of the model the gateway already started: wait for it (concurrent requests for a
//      cold model share one load);
//   3. a new whole-model instance on the READY worker device with the most free memory that fits;
//   4. otherwise 503 with what was missing.
import type { InstanceView, WorkerView } from '../cluster/worker-view.js';
import type { InFlightLoad, ScheduleRequest, SchedulerAction, SchedulerState } from './types.js';

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u += 1;
  }
  return `${u === 0 ? v : v.toFixed(1)} ${units[u]}`;
}

/** Instance ids are `${model}@${workerId}#n`, n the smallest number free on that worker. */
export function nextInstanceId(model: string, worker: WorkerView, loads: readonly InFlightLoad[]): string {
  const taken = new Set([...worker.instances.map((i) => i.instanceId), ...loads.map((l) => l.instanceId)]);
  let n = 0;
  while (taken.has(`${model}@${worker.id}#${n}`)) n += 1;
  return `${model}@${worker.id}#${n}`;
}

function servesWholeModel(i: InstanceView): boolean {
  return i.stage === null || (i.stage.hasEmbeddings && i.stage.hasHead);
}

interface Runnable {
  workerId: string;
  instanceId: string;
  active: number;
}

function runnableInstances(state: SchedulerState, ready: readonly WorkerView[], model: string): Runnable[] {
  const active = (id: string, reported: number): number => Math.max(reported, state.gatewayActive.get(id) ?? 0);
  const out: Runnable[] = [];
  for (const w of ready) {
    for (const i of w.instances) {
      if (i.model === model && i.residency === 'ON_DEVICE' && servesWholeModel(i)) {
        out.push({ workerId: w.id, instanceId: i.instanceId, active: active(i.instanceId, i.activeRequests) });
      }
    }
    for (const l of state.loads) {
      if (l.workerId !== w.id || l.model !== model || l.status !== 'ready') continue;
      // The worker answered READY; a snapshot that does not list it yet, or still says
      // LOADING, is older than that answer.
      const listed = w.instances.find((i) => i.instanceId === l.instanceId);
      if (!listed || listed.residency === 'LOADING') {
        out.push({ workerId: w.id, instanceId: l.instanceId, active: active(l.instanceId, listed?.activeRequests ?? 0) });
      }
    }
  }
  return out;
}

/** Bytes of loads headed to a device that its worker's snapshot does not account for yet. */
function pendingBytes(w: WorkerView, device: number, loads: readonly InFlightLoad[]): number {
  let sum = 0;
  for (const l of loads) {
    if (l.workerId === w.id && l.device === device && !w.instances.some((i) => i.instanceId === l.instanceId)) {
      sum += l.bytes;
    }
  }
  return sum;
}

function reject(reason: string): SchedulerAction {
  return { kind: 'reject', status: 503, reason };
}

export function decide(state: SchedulerState, req: ScheduleRequest, now: number): SchedulerAction {
  const ready = state.workers.filter((w) => w.state === 'READY');
  if (ready.length === 0) {
    if (state.workers.length === 0) return reject('no worker is registered with the gateway');
    const states = state.workers.map((w) => `${w.id}: ${w.state}`).join(', ');
    return reject(`no worker is READY (${states})`);
  }

  const runnable = runnableInstances(state, ready, req.model).sort(
    (a, b) => a.active - b.active || a.instanceId.localeCompare(b.instanceId),
  );
  const best = runnable[0];
  if (best) {
    return {
      kind: 'run-on',
      workerId: best.workerId,
      instanceId: best.instanceId,
      reason: `warm: ${best.instanceId} is on a device with ${best.active} active request(s)`,
    };
  }

  const readyIds = new Set(ready.map((w) => w.id));
  const loading = state.loads
    .filter((l) => l.model === req.model && l.status === 'loading' && readyIds.has(l.workerId))
    .sort((a, b) => a.startedMs - b.startedMs);
  const joined = loading[0];
  if (joined) {
    return {
      kind: 'await-load',
      workerId: joined.workerId,
      instanceId: joined.instanceId,
      reason: `joining the load of ${joined.instanceId} started ${now - joined.startedMs} ms ago`,
    };
  }

  let choice: { worker: WorkerView; device: number; free: number } | null = null;
  let mostFree: { worker: WorkerView; device: number; free: number } | null = null;
  for (const w of ready) {
    for (const d of w.devices) {
      const free = d.freeBytes - pendingBytes(w, d.index, state.loads);
      const candidate = { worker: w, device: d.index, free };
      if (!mostFree || free > mostFree.free) mostFree = candidate;
      if (free < req.modelBytes) continue;
      const better =
        !choice ||
        free > choice.free ||
        (free === choice.free &&
          (w.activeRequests < choice.worker.activeRequests ||
            (w.activeRequests === choice.worker.activeRequests && w.id.localeCompare(choice.worker.id) < 0)));
      if (better) choice = candidate;
    }
  }
  if (choice) {
    const instanceId = nextInstanceId(req.model, choice.worker, state.loads);
    return {
      kind: 'load-then-run',
      workerId: choice.worker.id,
      instanceId,
      device: choice.device,
      range: req.range,
      bytes: req.modelBytes,
      startedMs: now,
      reason: `cold: loading ${instanceId} on device ${choice.device} of ${choice.worker.id} (${formatBytes(choice.free)} free)`,
    };
  }
  if (!mostFree) return reject(`no READY worker reports any device for model '${req.model}'`);
  return reject(
    `no device has ${formatBytes(req.modelBytes)} free for model '${req.model}'; the most free is ` +
      `${formatBytes(Math.max(0, mostFree.free))} on device ${mostFree.device} of worker ${mostFree.worker.id}`,
  );
}
