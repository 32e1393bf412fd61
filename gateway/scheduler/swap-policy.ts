// GPU sharing by model swapping (FaaSwap; ARCHITECTURE.md "GPU sharing"), decided as pure
// functions over plain data: where a request runs (routeRequest), which queued request goes
// next and whether a new one is admitted (admit, nextRequest), and which idle copies are
// dropped after their keep-alive (expireIdle). No clocks, timers or IO: every function takes
// `now` and a view, and returns a decision with the reason the request's trace shows. The
// gateway's loop builds the view from worker snapshots and performs the decisions (SwapIn,
// SwapOut, LoadStage, UnloadStage); bench/simulator runs the very same functions against
// modelled latencies. All times are ms on one clock (the gateway's, or the simulator's).
import { profileStageBytes, type StageByteProfile } from '../../worker/models/stage-plan.js';
import { chooseDegree, COLD_START_DEFAULTS, type ColdStartDefaults, type PlacedStage as ColdStage, type ServerFigures, type TtftPrediction } from './coldstart.js';
import { formatBytes } from './format.js';

// ─── What the policy decides over ───────────────────────────────────────────────────────────

/** One model instance on a GPU (whole model), as the swap policy sees it. */
export interface SwapResident {
  instanceId: string;
  model: string;
  /** Device bytes it holds (weights and KV cache). */
  bytes: number;
  /** Requests in its continuous batch now; the model's maxBatch is its capacity. */
  activeRequests: number;
  /** When it last started or finished a request (or landed, if never used), ms. */
  lastUsedMs: number;
  /** null: on the device and runnable; else when its swap-in / move / load is predicted to end, ms. */
  readyAtMs: number | null;
  /**
   * When a batch slot is predicted to free (its earliest running request's predicted end), ms;
   * only read while activeRequests >= the model's maxBatch.
   */
  slotFreeAtMs: number;
}

/** One GPU of a server. */
export interface SwapGpu {
  /** Device index on its worker (what SwapIn / LoadStage take). */
  index: number;
  totalBytes: number;
  /** Bytes not held by any resident or by a transfer already started. */
  freeBytes: number;
  /** When the host→device link finishes the swaps already started on it, ms (≤ now: idle). */
  linkFreeAtMs: number;
  residents: readonly SwapResident[];
}

/** A model's copy in a server's host cache (pinned memory). */
export interface HostCopy {
  model: string;
  bytes: number;
  /** When it last served a swap-in or a GPU instance of it last ran, ms. */
  lastUsedMs: number;
}

/**
 * A pipeline stage's host copy a member kept when its pipeline dissolved: not something to
 * swap in on its own, but bytes a later load of the model on that server copies instead of
 * fetching. It is dropped once the model's host keep-alive runs out.
 */
export interface StageCopy {
  instanceId: string;
  model: string;
  lastUsedMs: number;
}

/** One server (worker daemon) as the swap policy sees it. */
export interface SwapServer {
  /** Worker id. */
  id: string;
  gpus: readonly SwapGpu[];
  /** Every model copy in its host cache, GPU-resident models' copies included. */
  hostCopies: readonly HostCopy[];
  /** Host copies of single pipeline stages. */
  stageCopies: readonly StageCopy[];
  /** Measured fetch bandwidth from storage, bytes/s; null → figures.coldStart default. */
  fetchBytesPerS: number | null;
  /** Fetches its storage link carries now (a cold start shares it). */
  fetchesInFlight: number;
  /** Measured pinned host→device bandwidth, bytes/s; null → figures.hostToGpuBytesPerS. */
  hostToGpuBytesPerS: number | null;
  /** Measured device→device bandwidth between its GPUs, bytes/s; null → figures.peerBytesPerS. */
  peerBytesPerS: number | null;
}

/** Where a resident is: positions in SwapView.servers and that server's gpus. */
export interface ResidentRef {
  server: number;
  gpu: number;
  resident: SwapResident;
}

/**
 * The cluster for swapping, with per-model indexes so a decision never scans every GPU.
 * Build it with buildSwapView (the gateway, tests); a simulator may keep the same indexes up to
 * date itself, as long as they say what buildSwapView would.
 */
export interface SwapView {
  servers: readonly SwapServer[];
  /** Every GPU resident (runnable or on its way) of each model. */
  residentsByModel: ReadonlyMap<string, readonly ResidentRef[]>;
  /** Positions in `servers` of the servers whose host cache holds each model. */
  hostByModel: ReadonlyMap<string, readonly number[]>;
  /** Requests waiting in each model's queue (a model with work keeps its only GPU copy). */
  queuedByModel: ReadonlyMap<string, number>;
  /**
   * Mean time a request of each model holds a batch slot, ms (measured). With it, a queue
   * longer than the model's copies can drain within its SLO adds a copy; a model missing here
   * is judged by its head request alone.
   */
  serviceMsByModel: ReadonlyMap<string, number>;
}

/** What the policy knows of one registered model. */
export interface SwapModel {
  name: string;
  /** Device bytes of one whole-model instance. */
  bytes: number;
  /** Bytes per layer and per end, for a pipelined cold start. */
  profile: StageByteProfile;
  /** Time-to-first-token SLO, ms. */
  ttftSloMs: number;
  /** Prefill of a typical prompt through the whole model on one GPU, ms; null → estimated from bytes. */
  prefillMs: number | null;
  /** Requests one instance serves at once (continuous batch); ≥ 1. */
  maxBatch: number;
  /** Idle seconds before a GPU copy is swapped out (its host copy stays). */
  gpuKeepAliveS: number;
  /** Idle seconds, with no GPU copy on that server, before a host copy is dropped (scale to zero). */
  hostKeepAliveS: number;
}

/** Bandwidths and costs the predictions use where a server has measured none. */
export interface SwapFigures {
  /** Pinned host→device copy, bytes/s. */
  hostToGpuBytesPerS: number;
  /** Device→device copy between GPUs of one server, bytes/s. */
  peerBytesPerS: number;
  /** Fixed cost of a swap-in or move (allocation, first layer's launch), ms. */
  swapFixedMs: number;
  /** Cold-start figures (coldstart.ts). */
  coldStart: Readonly<ColdStartDefaults>;
  /** Largest pipeline degree a cold start may use (1: no pipelining). */
  maxColdStartDegree: number;
  /**
   * Host-cached copies may be swapped in and copies moved between GPUs; false: a model runs
   * where it is resident or starts cold (a no-swapping baseline).
   */
  swapping: boolean;
}

export const SWAP_DEFAULTS: Readonly<SwapFigures> = {
  // H100 SXM, pinned memory over PCIe 5.0 x16: ~55 GB/s measured by cudaMemcpyAsync benchmarks.
  hostToGpuBytesPerS: 55e9,
  // NVLink 4 between H100s moves well over 100 GB/s; PCIe peer-to-peer about the host path.
  peerBytesPerS: 150e9,
  swapFixedMs: 5,
  coldStart: COLD_START_DEFAULTS,
  maxColdStartDegree: 8,
  swapping: true,
};

// ─── Decisions ─────────────────────────────────────────────────────────────────────────────

/** A GPU copy to drop (SwapOut: the host copy stays) to make room. */
export interface Eviction {
  serverId: string;
  gpu: number;
  instanceId: string;
  model: string;
  bytes: number;
}

/** Where a new copy lands. */
export interface GpuTarget {
  serverId: string;
  /** Device index. */
  gpu: number;
}

export type RouteDecision =
  /** Run on a runnable instance with a free batch slot. */
  | { kind: 'run'; serverId: string; gpu: number; instanceId: string; predictedTtftMs: number; reason: string }
  /**
   * Wait for this instance (a batch slot to free, or its swap-in / load to land) and decide
   * again then; the request stays queued.
   */
  | { kind: 'wait'; serverId: string; gpu: number; instanceId: string; waitMs: number; predictedTtftMs: number; reason: string }
  /**
   * Copy a busy instance's model to another GPU of the same server (from the source GPU over the
   * peer link, or from the server's host copy, whichever is predicted faster), after the
   * evictions; then run there.
   */
  | {
      kind: 'move';
      from: { serverId: string; gpu: number; instanceId: string };
      to: GpuTarget;
      source: 'peer' | 'host';
      evictions: Eviction[];
      predictedTtftMs: number;
      reason: string;
    }
  /** SwapIn from the server's host cache to this GPU after the evictions; then run there. */
  | { kind: 'swap-in'; to: GpuTarget; evictions: Eviction[]; predictedTtftMs: number; reason: string }
  /**
   * Cold start from storage: stage i on stages[i] (distinct servers; one stage: a whole-model
   * load), after the evictions on their GPUs; then run there.
   */
  | {
      kind: 'cold-start';
      stages: { serverId: string; gpu: number; bytes: number; range: ColdStage['range'] }[];
      evictions: Eviction[];
      prediction: TtftPrediction;
      predictedTtftMs: number;
      reason: string;
    }
  /**
   * Nothing can take the model now (every GPU's memory held by busy or protected copies, or no
   * server): keep the request queued and decide again when an instance finishes a request.
   */
  | { kind: 'no-room'; reason: string };

/** A keep-alive that ran out. */
export type ExpiryAction =
  /** SwapOut: drop the idle GPU copy; the server's host copy stays. */
  | { kind: 'swap-out'; serverId: string; gpu: number; instanceId: string; model: string; idleS: number; reason: string }
  /** Drop the host copy (no GPU copy of it on that server): the model scales to zero there. */
  | { kind: 'drop-host'; serverId: string; model: string; idleS: number; reason: string }
  /** Drop a kept pipeline stage's host copy. */
  | { kind: 'drop-stage'; serverId: string; instanceId: string; model: string; idleS: number; reason: string };

export interface ExpiryResult {
  actions: ExpiryAction[];
  /** The earliest later time a keep-alive of the servers looked at runs out, ms; null: none pending (arm no timer). */
  nextExpiryMs: number | null;
}

// ─── Queues ────────────────────────────────────────────────────────────────────────────────

export interface QueuedRequest {
  id: string;
  model: string;
  arrivalMs: number;
  /** arrivalMs + the model's TTFT SLO. */
  deadlineMs: number;
}

/** One model's bounded queue, earliest deadline first (one model's requests share an SLO, so that is least slack first). */
export interface ModelQueue {
  model: string;
  /** Sorted by deadlineMs, then arrival. */
  requests: readonly QueuedRequest[];
  /** Most requests it holds; admit rejects past it. */
  capacity: number;
  /**
   * Predicted ms from dispatch to first token for this model now (0-ish when warm, a swap when
   * host-cached, a cold start otherwise): what slack is net of.
   */
  predictedServiceMs: number;
}

export type AdmitResult =
  | { kind: 'admitted'; queue: ModelQueue }
  /** The queue is full: answer 429 with Retry-After retryAfterS (whole seconds, ≥ 1). */
  | { kind: 'rejected'; retryAfterS: number; reason: string };

export interface NextPick {
  /** The queue it came from, with it taken off. */
  queue: ModelQueue;
  request: QueuedRequest;
  /** deadline − now − the queue's predictedServiceMs, ms (negative: predicted to miss). */
  slackMs: number;
}

// ─── Functions ─────────────────────────────────────────────────────────────────────────────

/** Indexes a list of servers into a SwapView (residents and host copies by model). */
export function buildSwapView(
  servers: readonly SwapServer[],
  queuedByModel: ReadonlyMap<string, number>,
  serviceMsByModel: ReadonlyMap<string, number> = new Map(),
): SwapView {
  const residentsByModel = new Map<string, ResidentRef[]>();
  const hostByModel = new Map<string, number[]>();
  servers.forEach((server, s) => {
    server.gpus.forEach((gpu, g) => {
      for (const resident of gpu.residents) {
        const refs = residentsByModel.get(resident.model) ?? [];
        refs.push({ server: s, gpu: g, resident });
        residentsByModel.set(resident.model, refs);
      }
    });
    for (const copy of server.hostCopies) {
      const holders = hostByModel.get(copy.model) ?? [];
      holders.push(s);
      hostByModel.set(copy.model, holders);
    }
  });
  return { servers, residentsByModel, hostByModel, queuedByModel, serviceMsByModel };
}

/** ms to copy `bytes` at `bytesPerS`, plus the fixed cost. */
export function transferMs(bytes: number, bytesPerS: number, fixedMs: number): number {
  if (!(bytesPerS > 0)) throw new RangeError(`bandwidth must be positive (got ${bytesPerS})`);
  return fixedMs + (bytes / bytesPerS) * 1000;
}

/**
 * Time to first token of a layer-pipelined swap: layer i computes as soon as it has landed, so
 * the slower of copy and prefill sets the pace and only one layer's share of the other is exposed.
 */
export function pipelinedSwapTtftMs(copyMs: number, prefillMs: number, layers: number): number {
  const l = Math.max(1, layers);
  return Math.max(copyMs + prefillMs / l, prefillMs + copyMs / l);
}

/** Prefill of a typical prompt through the whole model on one GPU, ms. */
export function prefillEstimateMs(model: SwapModel, figures: Readonly<SwapFigures>): number {
  return model.prefillMs ?? (model.bytes / figures.coldStart.prefillBytesPerS) * 1000;
}

function runnable(r: SwapResident, now: number): boolean {
  return r.readyAtMs === null || r.readyAtMs <= now;
}

function runnableCopies(view: SwapView, model: string, now: number): number {
  return (view.residentsByModel.get(model) ?? []).filter((ref) => runnable(ref.resident, now)).length;
}

function gpuActive(gpu: SwapGpu): number {
  return gpu.residents.reduce((n, r) => n + r.activeRequests, 0);
}

/**
 * An idle copy the policy may evict: runnable, no request running, not `keepModel`, and not the
 * only runnable GPU copy of a model with queued requests.
 */
function evictable(view: SwapView, r: SwapResident, keepModel: string, now: number): boolean {
  if (r.model === keepModel || r.activeRequests > 0 || !runnable(r, now)) return false;
  return (view.queuedByModel.get(r.model) ?? 0) === 0 || runnableCopies(view, r.model, now) > 1;
}

/**
 * The idle GPU copies to evict from `gpu` (LRU first) so that `needBytes` fit; null when even
 * evicting every evictable copy leaves too little room. Never evicts `keepModel`.
 */
export function chooseEvictions(view: SwapView, serverIndex: number, gpuIndex: number, needBytes: number, keepModel: string, now: number): Eviction[] | null {
  const server = view.servers[serverIndex];
  const gpu = server?.gpus[gpuIndex];
  if (!server || !gpu) throw new RangeError(`no GPU ${gpuIndex} on server ${serverIndex}`);
  let free = gpu.freeBytes;
  if (free >= needBytes) return [];
  const idle = gpu.residents.filter((r) => evictable(view, r, keepModel, now)).sort((a, b) => a.lastUsedMs - b.lastUsedMs || a.instanceId.localeCompare(b.instanceId));
  const out: Eviction[] = [];
  const taken = new Map<string, number>();
  for (const r of idle) {
    // Two copies of a queued model on this GPU: evicting one leaves it the other to protect.
    const gone = taken.get(r.model) ?? 0;
    if (gone > 0 && (view.queuedByModel.get(r.model) ?? 0) > 0 && runnableCopies(view, r.model, now) - gone <= 1) continue;
    taken.set(r.model, gone + 1);
    out.push({ serverId: server.id, gpu: gpu.index, instanceId: r.instanceId, model: r.model, bytes: r.bytes });
    free += r.bytes;
    if (free >= needBytes) return out;
  }
  return null;
}

/** Bytes `gpu` could offer `keepModel`: free plus every evictable copy. */
function reclaimableBytes(view: SwapView, gpu: SwapGpu, keepModel: string, now: number): number {
  return gpu.residents.reduce((sum, r) => sum + (evictable(view, r, keepModel, now) ? r.bytes : 0), gpu.freeBytes);
}

function fmtMs(ms: number): string {
  return `${Math.round(ms)} ms`;
}

function evictionNote(evictions: readonly Eviction[]): string {
  if (evictions.length === 0) return '';
  const bytes = evictions.reduce((s, e) => s + e.bytes, 0);
  return `, evicting ${evictions.length} idle LRU cop${evictions.length === 1 ? 'y' : 'ies'} (${formatBytes(bytes)}: ${evictions.map((e) => e.model).join(', ')})`;
}

type Candidate = Exclude<RouteDecision, { kind: 'no-room' | 'cold-start' }>;

/** The best place to swap `model` in from a host copy on one of `holders`, or null when no GPU there has room. */
function bestSwapIn(view: SwapView, model: SwapModel, figures: Readonly<SwapFigures>, holders: readonly number[], now: number): Candidate | null {
  const prefill = prefillEstimateMs(model, figures);
  const layers = model.profile.layerBytes.length;
  let best: Candidate | null = null;
  let bestActive = 0;
  for (const s of holders) {
    const server = view.servers[s] as SwapServer;
    const copyMs = transferMs(model.bytes, server.hostToGpuBytesPerS ?? figures.hostToGpuBytesPerS, figures.swapFixedMs);
    for (let g = 0; g < server.gpus.length; g++) {
      const gpu = server.gpus[g] as SwapGpu;
      if (gpu.residents.some((r) => r.model === model.name)) continue;
      const evictions = chooseEvictions(view, s, g, model.bytes, model.name, now);
      if (evictions === null) continue;
      const linkWait = Math.max(0, gpu.linkFreeAtMs - now);
      const ttft = linkWait + pipelinedSwapTtftMs(copyMs, prefill, layers);
      const active = gpuActive(gpu);
      // Equal predictions: the GPU running fewer requests (an idle one first).
      if (best && (best.predictedTtftMs < ttft || (best.predictedTtftMs === ttft && bestActive <= active))) continue;
      const wait = linkWait > 0 ? ` after ${fmtMs(linkWait)} for its link` : '';
      bestActive = active;
      best = {
        kind: 'swap-in',
        to: { serverId: server.id, gpu: gpu.index },
        evictions,
        predictedTtftMs: ttft,
        reason: `swap-in: ${formatBytes(model.bytes)} from ${server.id}'s host cache to GPU ${gpu.index}${wait} (copy ${fmtMs(copyMs)}, layer-pipelined first token ${fmtMs(ttft)})${evictionNote(evictions)}`,
      };
    }
  }
  return best;
}

/** Moves of a busy model to an idle GPU (no request running) of a server where it is runnable. */
function bestMove(view: SwapView, model: SwapModel, figures: Readonly<SwapFigures>, refs: readonly ResidentRef[], now: number): Candidate | null {
  const prefill = prefillEstimateMs(model, figures);
  const layers = model.profile.layerBytes.length;
  let best: Candidate | null = null;
  const seen = new Set<number>();
  for (const ref of refs) {
    if (seen.has(ref.server) || !runnable(ref.resident, now)) continue;
    seen.add(ref.server);
    const server = view.servers[ref.server] as SwapServer;
    const peerMs = transferMs(model.bytes, server.peerBytesPerS ?? figures.peerBytesPerS, figures.swapFixedMs);
    const hosted = figures.swapping && (view.hostByModel.get(model.name) ?? []).includes(ref.server);
    const hostMs = hosted ? transferMs(model.bytes, server.hostToGpuBytesPerS ?? figures.hostToGpuBytesPerS, figures.swapFixedMs) : Infinity;
    const fromGpu = server.gpus[ref.gpu] as SwapGpu;
    for (let g = 0; g < server.gpus.length; g++) {
      const gpu = server.gpus[g] as SwapGpu;
      if (gpu.residents.some((r) => r.model === model.name) || gpuActive(gpu) > 0) continue;
      const evictions = chooseEvictions(view, ref.server, g, model.bytes, model.name, now);
      if (evictions === null) continue;
      // The peer path leaves the host link free; the host path waits for it.
      const hostTotal = Math.max(0, gpu.linkFreeAtMs - now) + hostMs;
      const source: 'peer' | 'host' = peerMs <= hostTotal ? 'peer' : 'host';
      const copyMs = Math.min(peerMs, hostTotal);
      const ttft = pipelinedSwapTtftMs(copyMs, prefill, layers);
      if (best && best.predictedTtftMs <= ttft) continue;
      best = {
        kind: 'move',
        from: { serverId: server.id, gpu: fromGpu.index, instanceId: ref.resident.instanceId },
        to: { serverId: server.id, gpu: gpu.index },
        source,
        evictions,
        predictedTtftMs: ttft,
        reason: `move: copy to idle GPU ${gpu.index} of ${server.id} ${source === 'peer' ? `from GPU ${fromGpu.index} over the peer link` : 'from the host cache'} (${fmtMs(copyMs)}, first token ${fmtMs(ttft)})${evictionNote(evictions)}`,
      };
    }
  }
  return best;
}

/** Waiting for the busy or landing copy that gives the first token soonest. */
function bestWait(view: SwapView, model: SwapModel, figures: Readonly<SwapFigures>, refs: readonly ResidentRef[], now: number): Candidate | null {
  const prefill = prefillEstimateMs(model, figures);
  let best: Candidate | null = null;
  for (const ref of refs) {
    const r = ref.resident;
    const landed = r.readyAtMs ?? now;
    const slot = r.activeRequests >= model.maxBatch ? r.slotFreeAtMs : now;
    const waitMs = Math.max(0, landed - now, slot - now);
    const ttft = waitMs + prefill;
    if (best && best.predictedTtftMs <= ttft) continue;
    const server = view.servers[ref.server] as SwapServer;
    const gpu = server.gpus[ref.gpu] as SwapGpu;
    const why = runnable(r, now) ? `its ${r.activeRequests} batch slot(s) are taken` : 'it is still landing';
    best = {
      kind: 'wait',
      serverId: server.id,
      gpu: gpu.index,
      instanceId: r.instanceId,
      waitMs,
      predictedTtftMs: ttft,
      reason: `wait: ${fmtMs(waitMs)} for ${r.instanceId} on ${server.id} GPU ${gpu.index} (${why}; first token ${fmtMs(ttft)})`,
    };
  }
  return best;
}

/**
 * The servers a cold start is planned over: with many servers, the 4·maxK whose storage links
 * are least busy among those with a device that can take a stage of the largest degree (the
 * planner prefers exactly these; offering it hundreds only costs time).
 */
function coldStartCandidates(servers: ServerFigures[], weightBytes: number, maxK: number): ServerFigures[] {
  const cap = 4 * Math.max(1, maxK);
  if (servers.length <= cap) return servers;
  const smallest = weightBytes / Math.max(1, maxK);
  return servers
    .filter((s) => s.devices.some((d) => d.freeBytes >= smallest))
    .sort((a, b) => a.fetchesInFlight - b.fetchesInFlight || b.hostCachedBytes - a.hostCachedBytes || a.id.localeCompare(b.id))
    .slice(0, cap);
}

/**
 * How much longer than the head the last queued request of `model` waits for a slot, ms: one
 * mean service per full round of the copies' slots ahead of it; null when the model's service
 * time is unknown or nothing queues behind the head.
 */
function queueBacklogMs(view: SwapView, model: SwapModel, copies: number): number | null {
  const serviceMs = view.serviceMsByModel.get(model.name);
  const queued = view.queuedByModel.get(model.name) ?? 0;
  if (serviceMs === undefined || queued <= 1) return null;
  return ((queued - 1) / (Math.max(1, copies) * model.maxBatch)) * serviceMs;
}

/** A cold start from storage on GPUs with room (after evicting idle copies), by coldstart.ts chooseDegree. */
function coldStart(view: SwapView, model: SwapModel, figures: Readonly<SwapFigures>, now: number): RouteDecision {
  // Stages are planned in weight bytes; an instance also holds its KV cache, in proportion, so
  // device room is offered to the planner in weight bytes too.
  const weights = profileStageBytes(model.profile, { layerStart: 0, layerEnd: model.profile.layerBytes.length, hasEmbeddings: true, hasHead: true });
  const perWeightByte = weights > 0 ? Math.max(1, model.bytes / weights) : 1;
  const hosted = new Set(view.hostByModel.get(model.name) ?? []);
  const servers: ServerFigures[] = view.servers.map((server, s) => ({
    id: server.id,
    fetchBytesPerS: server.fetchBytesPerS,
    fetchesInFlight: server.fetchesInFlight,
    copyBytesPerS: server.hostToGpuBytesPerS,
    initMs: null,
    devices: server.gpus.map((gpu) => ({ index: gpu.index, freeBytes: Math.floor(reclaimableBytes(view, gpu, model.name, now) / perWeightByte) })),
    hostCachedBytes: hosted.has(s) ? model.bytes : 0,
    heldStages: hosted.has(s) ? [{ layerStart: 0, layerEnd: model.profile.layerBytes.length, hasEmbeddings: true, hasHead: true }] : [],
  }));
  const decision = chooseDegree({
    model: { name: model.name, profile: model.profile, ttftSloMs: model.ttftSloMs, prefillMs: model.prefillMs },
    servers: coldStartCandidates(servers, weights, figures.maxColdStartDegree),
    maxK: Math.max(1, figures.maxColdStartDegree),
    hopMs: null,
    defaults: figures.coldStart,
  });
  if (decision.kind === 'unplaceable') return { kind: 'no-room', reason: `no room for '${model.name}': ${decision.reason}` };
  const byId = new Map(view.servers.map((server, s) => [server.id, s]));
  const evictions: Eviction[] = [];
  for (const stage of decision.stages) {
    const s = byId.get(stage.serverId) as number;
    const g = (view.servers[s] as SwapServer).gpus.findIndex((gpu) => gpu.index === stage.device);
    const made = chooseEvictions(view, s, g, Math.min(model.bytes, Math.ceil(stage.bytes * perWeightByte)), model.name, now);
    if (made === null) return { kind: 'no-room', reason: `no room for stage ${stage.stageIndex} of '${model.name}' on ${stage.serverId}` };
    evictions.push(...made);
  }
  return {
    kind: 'cold-start',
    stages: decision.stages.map((st) => ({ serverId: st.serverId, gpu: st.device, bytes: st.bytes, range: st.range })),
    evictions,
    prediction: decision.prediction,
    predictedTtftMs: decision.prediction.totalMs,
    reason: `${decision.reason}${evictionNote(evictions)}`,
  };
}

/**
 * Where `model`'s next request runs, in this order: (1) a runnable instance with a free batch
 * slot (fewest running requests first); (2) an instance that is busy or still landing: wait for
 * it, or add a copy — move the model to an idle GPU of that server (peer or host path) or swap
 * it in on another server holding a host copy — whichever gives the first token sooner; waiting
 * is judged by the queue's last request (view.serviceMsByModel), so a queue the copies cannot
 * drain within the SLO adds one that can; if neither meets the SLO, a cold start when it is
 * predicted sooner still; (3) a host-cached copy: swap in to the
 * GPU predicted to start it soonest; (4) a cold start (coldstart.ts chooseDegree) on GPUs with
 * room; (5) no-room. Room is made by evicting idle GPU copies least recently used first; a busy,
 * landing or protected copy (the only runnable GPU copy of a model with queued requests) is
 * never evicted. With figures.swapping false, host copies are ignored and nothing moves (a
 * no-swapping baseline).
 */
export function routeRequest(view: SwapView, model: SwapModel, figures: Readonly<SwapFigures>, now: number): RouteDecision {
  const refs = view.residentsByModel.get(model.name) ?? [];
  let free: ResidentRef | null = null;
  for (const ref of refs) {
    const r = ref.resident;
    if (!runnable(r, now) || r.activeRequests >= model.maxBatch) continue;
    if (!free || r.activeRequests < free.resident.activeRequests) free = ref;
  }
  if (free) {
    const server = view.servers[free.server] as SwapServer;
    const gpu = server.gpus[free.gpu] as SwapGpu;
    const prefill = prefillEstimateMs(model, figures);
    return {
      kind: 'run',
      serverId: server.id,
      gpu: gpu.index,
      instanceId: free.resident.instanceId,
      predictedTtftMs: prefill,
      reason: `warm: ${free.resident.instanceId} on ${server.id} GPU ${gpu.index} has a free batch slot (${free.resident.activeRequests}/${model.maxBatch} running)`,
    };
  }
  const holders = figures.swapping ? (view.hostByModel.get(model.name) ?? []) : [];
  if (refs.length > 0) {
    const resident = new Set(refs.map((r) => r.server));
    const wait = bestWait(view, model, figures, refs, now);
    const added = [figures.swapping ? bestMove(view, model, figures, refs, now) : null, bestSwapIn(view, model, figures, holders.filter((s) => !resident.has(s)), now)].reduce<Candidate | null>(
      (b, c) => (c !== null && (b === null || c.predictedTtftMs < b.predictedTtftMs) ? c : b),
      null,
    );
    // Waiting is judged by the queue's last request: it waits for as many slot turnovers as
    // there are requests ahead of it.
    const waitTtft = wait ? wait.predictedTtftMs + (queueBacklogMs(view, model, refs.length) ?? 0) : Infinity;
    const addedTtft = added?.predictedTtftMs ?? Infinity;
    if (wait && waitTtft <= model.ttftSloMs && wait.predictedTtftMs <= addedTtft) return wait;
    if (added && addedTtft <= model.ttftSloMs) {
      return waitTtft > model.ttftSloMs ? { ...added, reason: `${added.reason}; adds a copy: waiting on the ${refs.length} there are, the queue's last request would see ${fmtMs(waitTtft)}` } : added;
    }
    const cold = coldStart(view, model, figures, now);
    if (cold.kind === 'cold-start' && cold.predictedTtftMs < Math.min(waitTtft, addedTtft)) {
      const other = (ms: number): string => (Number.isFinite(ms) ? fmtMs(ms) : 'none');
      return { ...cold, reason: `${cold.reason}; sooner than waiting (${other(waitTtft)}) or another warm copy (${other(addedTtft)})` };
    }
    const soonest = waitTtft <= addedTtft ? wait : added;
    if (soonest) return soonest;
    return cold;
  }
  const swap = bestSwapIn(view, model, figures, holders, now);
  if (swap) return swap;
  const cold = coldStart(view, model, figures, now);
  if (cold.kind === 'cold-start' && holders.length > 0) return { ...cold, reason: `${cold.reason}; no GPU of a server caching it has room` };
  return cold;
}

/** A new empty queue holding at most `capacity` requests. */
export function emptyQueue(model: string, capacity: number): ModelQueue {
  if (!Number.isSafeInteger(capacity) || capacity < 1) throw new RangeError(`queue capacity must be a positive integer (got ${capacity})`);
  return { model, requests: [], capacity, predictedServiceMs: 0 };
}

/** Adds `request` to its model's queue in deadline order, or rejects it with a Retry-After when the queue is full. */
export function admit(queue: ModelQueue, request: QueuedRequest, now: number): AdmitResult {
  if (request.model !== queue.model) throw new RangeError(`request for '${request.model}' offered to the queue of '${queue.model}'`);
  const n = queue.requests.length;
  if (n >= queue.capacity) {
    const head = queue.requests[0] as QueuedRequest;
    // By the head's deadline it has been served or has missed; retrying sooner finds the queue as full.
    const retryAfterS = Math.max(1, Math.ceil(Math.max(head.deadlineMs - now, queue.predictedServiceMs) / 1000));
    return { kind: 'rejected', retryAfterS, reason: `queue of '${queue.model}' is full (${n} waiting); retry in ${retryAfterS} s` };
  }
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if ((queue.requests[mid] as QueuedRequest).deadlineMs <= request.deadlineMs) lo = mid + 1;
    else hi = mid;
  }
  const requests = [...queue.requests.slice(0, lo), request, ...queue.requests.slice(lo)];
  return { kind: 'admitted', queue: { ...queue, requests } };
}

/**
 * The queued request with the least slack across `queues` (ties: earliest arrival, then model
 * name), skipping models in `blocked` (waiting for room or an instance); null when none is eligible.
 */
export function nextRequest(queues: readonly ModelQueue[], now: number, blocked: ReadonlySet<string>): NextPick | null {
  let best: { queue: ModelQueue; request: QueuedRequest; slackMs: number } | null = null;
  for (const queue of queues) {
    const request = queue.requests[0];
    if (!request || blocked.has(queue.model)) continue;
    const slackMs = request.deadlineMs - now - queue.predictedServiceMs;
    if (
      best &&
      (best.slackMs < slackMs ||
        (best.slackMs === slackMs && (best.request.arrivalMs < request.arrivalMs || (best.request.arrivalMs === request.arrivalMs && best.queue.model <= queue.model))))
    ) {
      continue;
    }
    best = { queue, request, slackMs };
  }
  if (!best) return null;
  return { queue: { ...best.queue, requests: best.queue.requests.slice(1) }, request: best.request, slackMs: best.slackMs };
}

/**
 * Keep-alives that ran out on `servers` (a whole view's, or the one server a timer fired for):
 * idle runnable GPU copies past the model's gpuKeepAliveS since last use are swapped out; host
 * copies with no GPU copy on their server, past hostKeepAliveS, are dropped, and so are kept
 * stage copies. A model with queued requests keeps every copy, and models missing from
 * `models` are left alone.
 */
export function expireIdle(
  servers: readonly SwapServer[],
  models: ReadonlyMap<string, SwapModel>,
  queuedByModel: ReadonlyMap<string, number>,
  now: number,
): ExpiryResult {
  const actions: ExpiryAction[] = [];
  let nextExpiryMs: number | null = null;
  /** Idle seconds once a keep-alive counted from `lastUsedMs` ran out; null while it runs (its end noted for the timer). */
  const ranOut = (lastUsedMs: number, keepAliveS: number): number | null => {
    const at = lastUsedMs + keepAliveS * 1000;
    if (at <= now) return (now - lastUsedMs) / 1000;
    if (nextExpiryMs === null || at < nextExpiryMs) nextExpiryMs = at;
    return null;
  };
  for (const server of servers) {
    const onGpu = new Set<string>();
    for (const gpu of server.gpus) {
      for (const r of gpu.residents) {
        onGpu.add(r.model);
        const m = models.get(r.model);
        if (!m || r.activeRequests > 0 || !runnable(r, now) || (queuedByModel.get(r.model) ?? 0) > 0) continue;
        const idleS = ranOut(r.lastUsedMs, m.gpuKeepAliveS);
        if (idleS === null) continue;
        actions.push({
          kind: 'swap-out',
          serverId: server.id,
          gpu: gpu.index,
          instanceId: r.instanceId,
          model: r.model,
          idleS,
          reason: `keep-alive: ${r.instanceId} idle ${idleS.toFixed(1)} s ≥ ${m.gpuKeepAliveS} s on GPU; swapped out, host copy kept`,
        });
      }
    }
    for (const copy of server.hostCopies) {
      const m = models.get(copy.model);
      if (!m || onGpu.has(copy.model) || (queuedByModel.get(copy.model) ?? 0) > 0) continue;
      const idleS = ranOut(copy.lastUsedMs, m.hostKeepAliveS);
      if (idleS === null) continue;
      actions.push({
        kind: 'drop-host',
        serverId: server.id,
        model: copy.model,
        idleS,
        reason: `keep-alive: host copy of '${copy.model}' idle ${idleS.toFixed(1)} s ≥ ${m.hostKeepAliveS} s; dropped (scale to zero on ${server.id})`,
      });
    }
    for (const copy of server.stageCopies) {
      const m = models.get(copy.model);
      if (!m || (queuedByModel.get(copy.model) ?? 0) > 0) continue;
      const idleS = ranOut(copy.lastUsedMs, m.hostKeepAliveS);
      if (idleS === null) continue;
      actions.push({
        kind: 'drop-stage',
        serverId: server.id,
        instanceId: copy.instanceId,
        model: copy.model,
        idleS,
        reason: `keep-alive: kept stage ${copy.instanceId} of '${copy.model}' idle ${idleS.toFixed(1)} s ≥ ${m.hostKeepAliveS} s; dropped`,
      });
    }
  }
  return { actions, nextExpiryMs };
}
