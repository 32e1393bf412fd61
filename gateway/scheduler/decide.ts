// Where a request runs: a pure function of the cluster state, so it is tested with tables and
// reused by the simulator. Order of preference, each step explained in `reason`:
//   1. an instance of the model already ON_DEVICE on a READY worker: whole-model instances
//      before pipelines (a consolidated model takes new requests from its pipeline), then least
//      active requests first (a pipeline counts once every stage is ON_DEVICE on a READY
//      worker; it runs on stage 0's);
//   2. a load of the model the gateway already started: wait for it (concurrent requests for a
//      cold model share one load);
//   3. a cold start as chooseColdStartPlan says: a degree forced by configuration wins; else a
//      model with a TTFT SLO gets the smallest degree whose predicted TTFT meets it, stages on
//      distinct workers with the least contended links (coldstart.ts chooseDegree); else one
//      whole-model instance on the READY worker device with the most free memory that fits;
//   4. otherwise 503 with what was missing.
// No instance is runnable while a load of it the gateway started has not answered READY, even
// if a worker's snapshot already lists it ON_DEVICE (a pipeline whose other stage is still
// loading, or failing). withoutWorkers() is how the loop re-places a request whose load died
// with its worker: the same decision over a state where that worker counts as DOWN;
// withoutInstances() hides a failed pipeline's stages while they are being unloaded (and a
// consolidated pipeline's while it dissolves). chooseConsolidationTarget() picks the worker
// that loads a serving pipeline's model whole in the background (issue 4, consolidation).
import type { InstanceView, WorkerView } from '../cluster/worker-view.js';
import { chooseDegree, COLD_START_DEFAULTS, heldStagesOf, serverFigures, type DegreeDecision } from './coldstart.js';
import { formatBytes } from './format.js';
import type {
  ColdStartExplanation,
  ConsolidationDecision,
  ConsolidationRequest,
  InFlightLoad,
  PlacedStage,
  ScheduleRequest,
  SchedulerAction,
  SchedulerState,
} from './types.js';

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
  /** A whole-model instance (not a pipeline). */
  whole: boolean;
}

/**
 * The state with the named workers counted DOWN (their streams may not have ended yet): what
 * a request decides over after a load of it died with one of them.
 */
export function withoutWorkers(state: SchedulerState, excluded: ReadonlySet<string>): SchedulerState {
  if (excluded.size === 0) return state;
  return { ...state, workers: state.workers.map((w) => (excluded.has(w.id) ? { ...w, state: 'DOWN' } : w)) };
}

/**
 * The state with the named instances counted FAILED in every worker's list: a failed
 * pipeline's stages the gateway is unloading (whatever a worker's snapshot still says, they are
 * never run on, and their ids stay taken).
 */
export function withoutInstances(state: SchedulerState, retired: ReadonlySet<string>): SchedulerState {
  if (retired.size === 0) return state;
  return {
    ...state,
    workers: state.workers.map((w) =>
      w.instances.some((i) => retired.has(i.instanceId))
        ? { ...w, instances: w.instances.map((i) => (retired.has(i.instanceId) ? { ...i, residency: 'FAILED' } : i)) }
        : w,
    ),
  };
}

/** Instance ids with a load the gateway started that has not answered READY. */
function stillLoading(state: SchedulerState): Set<string> {
  return new Set(state.loads.filter((l) => l.status === 'loading').map((l) => l.instanceId));
}

function runnableInstances(state: SchedulerState, ready: readonly WorkerView[], model: string): Runnable[] {
  const loading = stillLoading(state);
  const active = (id: string, reported: number): number => Math.max(reported, state.gatewayActive.get(id) ?? 0);
  const out: Runnable[] = [];
  for (const w of ready) {
    for (const i of w.instances) {
      if (i.model === model && i.residency === 'ON_DEVICE' && servesWholeModel(i) && !loading.has(i.instanceId)) {
        out.push({ workerId: w.id, instanceId: i.instanceId, active: active(i.instanceId, i.activeRequests), whole: true });
      }
    }
    for (const l of state.loads) {
      if (l.workerId !== w.id || l.model !== model || l.status !== 'ready') continue;
      // The worker answered READY; a snapshot that does not list it yet, or still says
      // LOADING, is older than that answer.
      const listed = w.instances.find((i) => i.instanceId === l.instanceId);
      if (!listed || listed.residency === 'LOADING') {
        if (l.pipelineStage === null) {
          out.push({ workerId: w.id, instanceId: l.instanceId, active: active(l.instanceId, listed?.activeRequests ?? 0), whole: true });
        }
      }
    }
  }
  return [...out, ...runnablePipelines(state, ready, model, active).filter((r) => !loading.has(r.instanceId))];
}

/** Pipelines of the model whose every stage is ON_DEVICE (or answered READY) on a READY worker. */
function runnablePipelines(
  state: SchedulerState,
  ready: readonly WorkerView[],
  model: string,
  active: (id: string, reported: number) => number,
): Runnable[] {
  const pipelines = new Map<string, { count: number; stages: Set<number>; first: string | null; reported: number }>();
  const note = (instanceId: string, index: number, count: number, workerId: string, reported: number): void => {
    const p = pipelines.get(instanceId) ?? { count, stages: new Set<number>(), first: null, reported: 0 };
    p.stages.add(index);
    if (index === 0) {
      p.first = workerId;
      p.reported = reported;
    }
    pipelines.set(instanceId, p);
  };
  for (const w of ready) {
    for (const i of w.instances) {
      if (i.model === model && i.residency === 'ON_DEVICE' && i.stage !== null && !servesWholeModel(i) && i.stage.stageCount > 1) {
        note(i.instanceId, i.stage.stageIndex, i.stage.stageCount, w.id, i.activeRequests);
      }
    }
    for (const l of state.loads) {
      if (l.workerId !== w.id || l.model !== model || l.status !== 'ready' || l.pipelineStage === null) continue;
      const listed = w.instances.find((i) => i.instanceId === l.instanceId);
      if (!listed || listed.residency === 'LOADING') note(l.instanceId, l.pipelineStage.index, l.pipelineStage.count, w.id, 0);
    }
  }
  const out: Runnable[] = [];
  for (const [instanceId, p] of pipelines) {
    if (p.first !== null && p.stages.size === p.count) out.push({ workerId: p.first, instanceId, active: active(instanceId, p.reported), whole: false });
  }
  return out;
}

/** The policy's choice of a cold start (chooseDegree's 'cold-start' decision). */
export type DegreeChoice = Extract<DegreeDecision, { kind: 'cold-start' }>;

/** How a cold start is shaped, before instance ids and actions. */
export type ColdStartPlan =
  /** Degree forced by configuration (the request's pipeline), or 1 for a model without an SLO. */
  | {
      kind: 'configured';
      degree: number;
      /** Distinct READY workers, most free device memory first (ties: fewer active requests, id). */
      workers: WorkerView[];
    }
  /** Degree and placement chosen against the model's TTFT SLO. */
  | { kind: 'chosen'; choice: DegreeChoice }
  /** The policy found no placement; `reason` goes to the client. */
  | { kind: 'unplaceable'; reason: string };

/**
 * The cold-start policy's seam: a forced degree (req.pipeline) wins; a model with a TTFT SLO
 * (req.coldStart) gets chooseDegree over the READY workers' figures; otherwise one worker.
 */
export function chooseColdStartPlan(state: SchedulerState, req: ScheduleRequest): ColdStartPlan {
  const candidates = state.workers.filter((w) => w.state === 'READY' && w.devices.length > 0);
  if (req.pipeline === null && req.coldStart !== null) {
    const decision = chooseDegree({
      model: { name: req.model, profile: req.coldStart.profile, ttftSloMs: req.coldStart.ttftSloMs, prefillMs: null },
      servers: candidates.map((w) => serverFigures(w, req.model, state.loads)),
      maxK: Math.max(1, req.coldStart.maxDegree),
      hopMs: null,
      defaults: COLD_START_DEFAULTS,
    });
    return decision.kind === 'cold-start' ? { kind: 'chosen', choice: decision } : { kind: 'unplaceable', reason: decision.reason };
  }
  const best = (w: WorkerView): number => Math.max(-Infinity, ...w.devices.map((d) => d.freeBytes - pendingBytes(w, d.index, state.loads)));
  const workers = candidates.sort((a, b) => best(b) - best(a) || a.activeRequests - b.activeRequests || a.id.localeCompare(b.id));
  return { kind: 'configured', degree: req.pipeline?.length ?? 1, workers };
}

/** What the trace says of a policy's choice. */
export function explainChoice(choice: DegreeChoice): ColdStartExplanation {
  const note = choice.sloMet
    ? null
    : `no degree meets the TTFT SLO of ${choice.sloMs ?? 0} ms; degree ${choice.k} predicts the least, ${Math.round(choice.prediction.totalMs)} ms`;
  return {
    source: 'policy',
    degree: choice.k,
    workers: choice.stages.map((s) => s.serverId),
    reason: choice.reason,
    note,
    sloMs: choice.sloMs,
    prediction: choice.prediction,
    considered: choice.considered,
  };
}

function configuredExplanation(source: 'forced' | 'default', workers: string[], reason: string): ColdStartExplanation {
  return { source, degree: workers.length, workers, reason, note: null, sloMs: null, prediction: null, considered: [] };
}

/** A policy's choice as an action: k = 1 loads a whole-model instance, k > 1 a pipeline. */
function performChoice(state: SchedulerState, req: ScheduleRequest, choice: DegreeChoice, now: number): SchedulerAction {
  const explanation = explainChoice(choice);
  const views = choice.stages.map((s) => state.workers.find((w) => w.id === s.serverId));
  if (views.some((w) => w === undefined)) return reject(`the cold-start policy chose a worker the gateway does not know (${explanation.workers.join(', ')})`);
  const workers = views as WorkerView[];
  if (choice.k === 1) {
    const stage = choice.stages[0]!;
    const instanceId = nextInstanceId(req.model, workers[0]!, state.loads);
    return {
      kind: 'load-then-run',
      workerId: stage.serverId,
      instanceId,
      device: stage.device,
      range: req.range,
      bytes: req.modelBytes,
      startedMs: now,
      reason: `${choice.reason}; loading ${instanceId} on device ${stage.device} of ${stage.serverId}`,
      coldStart: explanation,
    };
  }
  const instanceId = nextPipelineInstanceId(req.model, workers, state.loads);
  return {
    kind: 'load-pipeline-then-run',
    instanceId,
    stages: choice.stages.map((s) => ({ range: s.range, bytes: s.bytes, workerId: s.serverId, device: s.device })),
    startedMs: now,
    reason: `${choice.reason}; loading ${instanceId} as ${choice.k} stages`,
    coldStart: explanation,
  };
}

/** Instance id of a pipeline: `${model}@${first worker}#n`, n free on every stage's worker. */
export function nextPipelineInstanceId(model: string, workers: readonly WorkerView[], loads: readonly InFlightLoad[]): string {
  const taken = new Set([...workers.flatMap((w) => w.instances.map((i) => i.instanceId)), ...loads.map((l) => l.instanceId)]);
  const first = workers[0]?.id ?? 'pipeline';
  let n = 0;
  while (taken.has(`${model}@${first}#${n}`)) n += 1;
  return `${model}@${first}#${n}`;
}

function placePipeline(
  state: SchedulerState,
  req: ScheduleRequest,
  plan: Extract<ColdStartPlan, { kind: 'configured' }>,
  now: number,
): SchedulerAction {
  const stages = req.pipeline ?? [];
  if (plan.workers.length < plan.degree) {
    return reject(
      `a ${plan.degree}-stage pipeline for model '${req.model}' needs ${plan.degree} READY workers with a device; ${plan.workers.length} are`,
    );
  }
  const chosen = stageWorkers(req.model, stages, plan.workers);
  const placed: PlacedStage[] = [];
  for (const [i, stage] of stages.entries()) {
    const w = chosen[i]!;
    const device = w.devices
      .map((d) => ({ index: d.index, free: d.freeBytes - pendingBytes(w, d.index, state.loads) }))
      .reduce((a, b) => (b.free > a.free ? b : a));
    if (device.free < stage.bytes) {
      return reject(
        `stage ${i} of model '${req.model}' needs ${formatBytes(stage.bytes)}; worker ${w.id} has ${formatBytes(Math.max(0, device.free))} free at most`,
      );
    }
    placed.push({ ...stage, workerId: w.id, device: device.index });
  }
  const instanceId = nextPipelineInstanceId(req.model, chosen, state.loads);
  const reason = `cold: loading ${instanceId} as ${plan.degree} stages on ${placed.map((p) => `${p.workerId}[${p.range.layerStart},${p.range.layerEnd})`).join(', ')}`;
  return {
    kind: 'load-pipeline-then-run',
    instanceId,
    stages: placed,
    startedMs: now,
    reason,
    coldStart: configuredExplanation('forced', placed.map((p) => p.workerId), `${reason} (degree forced by configuration)`),
  };
}

/**
 * A distinct worker for each stage: one that kept a host copy of exactly that stage of the
 * model (an earlier pipeline's member; its load copies the stage instead of fetching it)
 * where there is one, else the next of `workers` in their order.
 */
function stageWorkers(model: string, stages: readonly { range: PlacedStage['range'] }[], workers: readonly WorkerView[]): WorkerView[] {
  const holds = (w: WorkerView, range: PlacedStage['range']): boolean =>
    heldStagesOf(w, model).some(
      (h) => h.layerStart === range.layerStart && h.layerEnd === range.layerEnd && h.hasEmbeddings === range.hasEmbeddings && h.hasHead === range.hasHead,
    );
  const used = new Set<WorkerView>();
  const holders = stages.map((stage) => {
    const holder = workers.find((w) => !used.has(w) && holds(w, stage.range));
    if (holder !== undefined) used.add(holder);
    return holder;
  });
  const rest = workers.filter((w) => !used.has(w));
  return holders.map((holder) => holder ?? rest.shift()!);
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
    (a, b) => Number(b.whole) - Number(a.whole) || a.active - b.active || a.instanceId.localeCompare(b.instanceId),
  );
  const best = runnable[0];
  if (best) {
    return {
      kind: 'run-on',
      workerId: best.workerId,
      instanceId: best.instanceId,
      reason: `warm: ${best.instanceId} is on a device with ${best.active} active request(s)${best.whole ? '' : ' (a pipeline)'}`,
    };
  }

  const readyIds = new Set(ready.map((w) => w.id));
  const onReadyWorkers = (instanceId: string): boolean =>
    state.loads.every((l) => l.instanceId !== instanceId || readyIds.has(l.workerId));
  const loading = state.loads
    .filter((l) => l.model === req.model && l.status === 'loading' && onReadyWorkers(l.instanceId))
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

  const plan = chooseColdStartPlan(state, req);
  if (plan.kind === 'unplaceable') return reject(plan.reason);
  if (plan.kind === 'chosen') return performChoice(state, req, plan.choice, now);
  if (plan.degree > 1) return placePipeline(state, req, plan, now);

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
    const reason = `cold: loading ${instanceId} on device ${choice.device} of ${choice.worker.id} (${formatBytes(choice.free)} free)`;
    return {
      kind: 'load-then-run',
      workerId: choice.worker.id,
      instanceId,
      device: choice.device,
      range: req.range,
      bytes: req.modelBytes,
      startedMs: now,
      reason,
      coldStart: configuredExplanation(
        req.pipeline === null ? 'default' : 'forced',
        [choice.worker.id],
        `${reason} (${req.pipeline === null ? 'one whole-model worker: no TTFT SLO to plan for, or degree 1 forced' : 'degree forced by configuration'})`,
      ),
    };
  }
  if (!mostFree) return reject(`no READY worker reports any device for model '${req.model}'`);
  return reject(
    `no device has ${formatBytes(req.modelBytes)} free for model '${req.model}'; the most free is ` +
      `${formatBytes(Math.max(0, mostFree.free))} on device ${mostFree.device} of worker ${mostFree.worker.id}`,
  );
}

/**
 * Where a serving pipeline's model is loaded whole, in the background: the pipeline's stage-0
 * worker when one of its devices has room for the whole model (every request of the pipeline
 * already runs there, so routing does not move and the worker already holds the embeddings'
 * stage); else the next member in stage order with room; else the READY non-member device
 * with the most free memory that fits. Skipped while the model already has a whole-model
 * instance (runnable or loading), or when no device fits: the pipeline keeps serving.
 * Consolidation loads from storage; reading peers' host copies instead is a later refinement.
 */
export function chooseConsolidationTarget(state: SchedulerState, pipeline: ConsolidationRequest, now: number): ConsolidationDecision {
  const loading = stillLoading(state);
  const whole = state.workers.flatMap((w) =>
    w.state === 'READY'
      ? w.instances.filter((i) => i.model === pipeline.model && servesWholeModel(i) && (i.residency === 'ON_DEVICE' || i.residency === 'LOADING'))
      : [],
  );
  const wholeLoad = state.loads.find((l) => l.model === pipeline.model && l.pipelineStage === null);
  const existing = whole[0]?.instanceId ?? wholeLoad?.instanceId ?? null;
  if (existing !== null) {
    return { kind: 'skip', reason: `model '${pipeline.model}' already has a whole-model instance (${existing}${loading.has(existing) ? ', loading' : ''})` };
  }
  const roomOn = (w: WorkerView): { device: number; free: number } | null =>
    w.devices
      .map((d) => ({ device: d.index, free: d.freeBytes - pendingBytes(w, d.index, state.loads) }))
      .reduce<{ device: number; free: number } | null>((a, b) => (a === null || b.free > a.free ? b : a), null);
  const ready = state.workers.filter((w) => w.state === 'READY' && w.devices.length > 0);
  const members = pipeline.workers.flatMap((id) => ready.filter((w) => w.id === id));
  const others = ready
    .filter((w) => !pipeline.workers.includes(w.id))
    .sort((a, b) => (roomOn(b)?.free ?? -Infinity) - (roomOn(a)?.free ?? -Infinity) || a.id.localeCompare(b.id));
  let mostFree: { worker: string; free: number } | null = null;
  for (const [rank, w] of [...members, ...others].entries()) {
    const room = roomOn(w);
    if (room === null) continue;
    if (mostFree === null || room.free > mostFree.free) mostFree = { worker: w.id, free: room.free };
    if (room.free < pipeline.bytes) continue;
    const instanceId = nextInstanceId(pipeline.model, w, state.loads);
    const why =
      w.id === pipeline.workers[0]
        ? `${w.id} runs stage 0 of ${pipeline.instanceId} and has room`
        : rank < members.length
          ? `${w.id} is stage ${pipeline.workers.indexOf(w.id)} of ${pipeline.instanceId} and has room (stage 0's worker ${pipeline.workers[0] ?? '?'} has not)`
          : `no member of ${pipeline.instanceId} has room; ${w.id} has the most free`;
    const reason = `consolidating ${pipeline.instanceId}: loading ${instanceId} on device ${room.device} of ${w.id} (${formatBytes(room.free)} free; ${why})`;
    return {
      kind: 'consolidate',
      load: {
        kind: 'load-then-run',
        workerId: w.id,
        instanceId,
        device: room.device,
        range: pipeline.range,
        bytes: pipeline.bytes,
        startedMs: now,
        reason,
        coldStart: configuredExplanation('default', [w.id], reason),
      },
    };
  }
  return {
    kind: 'skip',
    reason:
      mostFree === null
        ? `no READY worker reports a device to consolidate ${pipeline.instanceId} on`
        : `no device has ${formatBytes(pipeline.bytes)} free to consolidate ${pipeline.instanceId}; the most free is ${formatBytes(Math.max(0, mostFree.free))} on ${mostFree.worker}`,
  };
}
