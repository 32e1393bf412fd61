// The gateway's side of GPU sharing as pure functions: what the swap policy (swap-policy.ts)
// decides over, built from the workers' snapshots plus what the loop has under way and the
// snapshots do not show yet (loads it started, swap-ins it asked for, copies it is swapping out
// or unloading); and each registered model as the policy sees it (its SLO, batch capacity and
// keep-alives, registry values over the gateway's defaults). The loop (loop.ts) performs what
// the policy decides; nothing here reads a clock.
import type { InstanceView, WorkerView } from '../cluster/worker-view.js';
import type { StageByteProfile } from '../../worker/models/stage-plan.js';
import type { HostCopy, SwapGpu, SwapModel, SwapResident, SwapServer } from './swap-policy.js';
import type { InFlightLoad } from './types.js';

/** A SwapIn (from the host cache, or a move between GPUs) the gateway asked for. */
export interface InFlightSwap {
  instanceId: string;
  model: string;
  workerId: string;
  /** Device it is headed to. */
  device: number;
  /** Device bytes it will hold there. */
  bytes: number;
  /** Predicted landing (gateway clock, ms). */
  readyAtMs: number;
  /** 'landed': the worker answered, its snapshot may not show the instance there yet. */
  status: 'swapping' | 'landed';
}

/** Everything swapServers reads; plain data the loop assembles. */
export interface SharingInputs {
  workers: readonly WorkerView[];
  /** Loads the gateway started (whole models count as residents on their device). */
  loads: readonly InFlightLoad[];
  swaps: readonly InFlightSwap[];
  /** Instances the gateway is swapping out, unloading or has retired: neither residents nor host copies. */
  leaving: ReadonlySet<string>;
  /** Requests the gateway runs (or has reserved a slot for) per instance id. */
  gatewayActive: ReadonlyMap<string, number>;
  /** When the gateway last started or ended a request on, or landed, each instance (gateway clock, ms). */
  lastUsed: ReadonlyMap<string, number>;
  /** Predicted ms until a batch slot of one of the model's busy instances frees. */
  slotFreeInMs: (model: string) => number;
  /** Predicted end of a load still under way (gateway clock, ms). */
  loadReadyAtMs: (load: InFlightLoad) => number;
}

/** Gateway-wide defaults a registered model's own values override. */
export interface SharingDefaults {
  /** Requests one instance serves at once (the worker batches them). */
  maxBatch: number;
  /** Slack of requests to a model without a TTFT SLO is counted against this, ms. */
  ttftSloMs: number;
  gpuKeepAliveMs: number;
  hostKeepAliveMs: number;
}

/**
 * A batch of 16 per instance; 10 s TTFT for models without an SLO; idle 5 min on a GPU before a
 * swap-out, and 30 min since the last use before the host copy goes too (the host keep-alive
 * counts from the last use, like the GPU's, so it should be the longer one).
 */
export const DEFAULT_SHARING: Readonly<SharingDefaults> = { maxBatch: 16, ttftSloMs: 10_000, gpuKeepAliveMs: 300_000, hostKeepAliveMs: 1_800_000 };

/** Requests each model's queue holds before the gateway answers 429. */
export const DEFAULT_QUEUE_CAPACITY = 64;

/** What swapModelOf needs of a registered model. */
export interface SharedModel {
  name: string;
  /** Weight bytes. */
  bytes: number;
  ttftSloMs: number | null;
  gpuKeepAliveMs: number | null;
  hostKeepAliveMs: number | null;
}

/** Whether the instance holds the whole model (not one stage of a pipeline). */
export function wholeModel(i: Pick<InstanceView, 'stage'>): boolean {
  return i.stage === null || (i.stage.hasEmbeddings && i.stage.hasHead);
}

/**
 * Whether a pipeline of `model` is serving or loading: a stage of it on a device or on its way
 * there, or a pipeline load the gateway started. Stages kept in host memory after their
 * pipeline dissolved do not count. While one is, the model's requests are routed by decide()
 * (which runs pipelines), not by the swap policy.
 */
export function pipelineActive(model: string, workers: readonly WorkerView[], loads: readonly Pick<InFlightLoad, 'model' | 'pipelineStage'>[]): boolean {
  const servingStage = (i: InstanceView): boolean => i.model === model && !wholeModel(i) && i.residency !== 'HOST_ONLY';
  return workers.some((w) => w.instances.some(servingStage)) || loads.some((l) => l.model === model && l.pipelineStage !== null);
}

/**
 * The model as the policy sees it. `profile` is its per-layer bytes when known (a model with an
 * SLO has them read for the cold-start policy); otherwise one layer of all its bytes.
 * `footprint`: what one instance of it holds on a device (weights in the worker's compute
 * dtype and KV cache), as seen or estimated; null when unknown. The policy makes room for the
 * larger of that and the registered weight bytes.
 */
export function swapModelOf(m: SharedModel, profile: StageByteProfile | null, footprint: number | null, d: SharingDefaults): SwapModel {
  return {
    name: m.name,
    bytes: Math.max(m.bytes, footprint ?? 0),
    profile: profile ?? { layerBytes: [m.bytes], embeddingBytes: 0, headBytes: 0, tiedEmbeddings: false },
    ttftSloMs: m.ttftSloMs ?? d.ttftSloMs,
    prefillMs: null,
    maxBatch: Math.max(1, d.maxBatch),
    gpuKeepAliveS: (m.gpuKeepAliveMs ?? d.gpuKeepAliveMs) / 1000,
    hostKeepAliveS: (m.hostKeepAliveMs ?? d.hostKeepAliveMs) / 1000,
  };
}

/**
 * READY workers as swap servers: on each device, whole-model instances ON_DEVICE (runnable, or
 * landing while a load or swap-in of the gateway's is under way), loads and swap-ins the
 * snapshot does not list there yet; free bytes net of what those will take; host copies of
 * every instance that keeps one (HOST_ONLY, or ON_DEVICE with host bytes). Pipeline stages are
 * not residents (their memory is simply not free); stages kept in host memory after their
 * pipeline dissolved are stage copies.
 */
export function swapServers(inputs: SharingInputs, now: number): SwapServer[] {
  const swapsById = new Map(inputs.swaps.map((s) => [s.instanceId, s]));
  const lastUsed = (i: InstanceView | null, id: string): number => Math.max(i?.lastUsedMs ?? 0, inputs.lastUsed.get(id) ?? 0);
  const active = (id: string, reported: number): number => Math.max(reported, inputs.gatewayActive.get(id) ?? 0);
  const landing = (at: number): number => Math.max(now + 1, at);
  const servers: SwapServer[] = [];
  for (const w of inputs.workers) {
    if (w.state !== 'READY') continue;
    const listed = new Map(w.instances.map((i) => [i.instanceId, i]));
    const loadsHere = inputs.loads.filter((l) => l.workerId === w.id && l.pipelineStage === null);
    const swapsHere = inputs.swaps.filter((s) => s.workerId === w.id);
    const gpus: SwapGpu[] = w.devices.map((d) => {
      const residents: SwapResident[] = [];
      let pending = 0;
      const resident = (id: string, model: string, bytes: number, reported: number, i: InstanceView | null, readyAtMs: number | null): void => {
        residents.push({
          instanceId: id,
          model,
          bytes,
          activeRequests: active(id, reported),
          lastUsedMs: lastUsed(i, id),
          readyAtMs,
          slotFreeAtMs: now + inputs.slotFreeInMs(model),
        });
      };
      for (const i of w.instances) {
        if (i.device !== d.index || !wholeModel(i) || inputs.leaving.has(i.instanceId) || swapsById.has(i.instanceId)) continue;
        const load = loadsHere.find((l) => l.instanceId === i.instanceId);
        if (i.residency === 'ON_DEVICE' || (i.residency === 'LOADING' && load !== undefined)) {
          const readyAtMs = load?.status === 'loading' ? landing(inputs.loadReadyAtMs(load)) : null;
          resident(i.instanceId, i.model, Math.max(i.deviceBytes, load?.bytes ?? 0), i.activeRequests, i, readyAtMs);
        }
      }
      for (const l of loadsHere) {
        if (l.device !== d.index || listed.has(l.instanceId) || inputs.leaving.has(l.instanceId)) continue;
        pending += l.bytes;
        resident(l.instanceId, l.model, l.bytes, 0, null, l.status === 'loading' ? landing(inputs.loadReadyAtMs(l)) : null);
      }
      let linkFreeAtMs = 0;
      for (const s of swapsHere) {
        if (s.device !== d.index) continue;
        const i = listed.get(s.instanceId) ?? null;
        if (!(i?.residency === 'ON_DEVICE' && i.device === d.index)) pending += s.bytes;
        if (s.status === 'swapping') linkFreeAtMs = Math.max(linkFreeAtMs, s.readyAtMs);
        resident(s.instanceId, s.model, s.bytes, i?.activeRequests ?? 0, i, s.status === 'swapping' ? landing(s.readyAtMs) : null);
      }
      return { index: d.index, totalBytes: d.totalBytes, freeBytes: Math.max(0, d.freeBytes - pending), linkFreeAtMs, residents };
    });
    const copies = new Map<string, HostCopy>();
    for (const i of w.instances) {
      if (!wholeModel(i) || inputs.leaving.has(i.instanceId)) continue;
      if (i.residency !== 'HOST_ONLY' && !(i.residency === 'ON_DEVICE' && i.hostBytes > 0)) continue;
      const copy = { model: i.model, bytes: i.hostBytes > 0 ? i.hostBytes : i.deviceBytes, lastUsedMs: lastUsed(i, i.instanceId) };
      const seen = copies.get(i.model);
      if (!seen || seen.lastUsedMs < copy.lastUsedMs) copies.set(i.model, copy);
    }
    const stageCopies = w.instances
      .filter((i) => !wholeModel(i) && i.residency === 'HOST_ONLY' && !inputs.leaving.has(i.instanceId))
      .map((i) => ({ instanceId: i.instanceId, model: i.model, lastUsedMs: lastUsed(i, i.instanceId) }));
    servers.push({
      id: w.id,
      gpus,
      hostCopies: [...copies.values()],
      stageCopies,
      fetchBytesPerS: w.fetchBytesPerS > 0 ? w.fetchBytesPerS : null,
      fetchesInFlight: inputs.loads.filter((l) => l.workerId === w.id && l.status === 'loading').length,
      hostToGpuBytesPerS: null,
      peerBytesPerS: null,
    });
  }
  return servers;
}

/**
 * The instance on `workerId` whose host copy a swap-in of `model` uses: HOST_ONLY first, else
 * any whole-model instance of it the gateway is not already moving or dropping; null when none.
 */
export function hostInstanceOf(worker: WorkerView, model: string, busy: ReadonlySet<string>): InstanceView | null {
  const mine = worker.instances.filter((i) => i.model === model && wholeModel(i) && !busy.has(i.instanceId));
  return mine.find((i) => i.residency === 'HOST_ONLY') ?? mine.find((i) => i.residency === 'ON_DEVICE') ?? null;
}
