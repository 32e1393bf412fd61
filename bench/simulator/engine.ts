// The discrete-event simulator: replays a trace over N servers × G GPUs, taking every decision
// with the gateway's own pure policy (gateway/scheduler/swap-policy.ts: admit, nextRequest,
// routeRequest, expireIdle; coldstart.ts for cold-start times) and modelling only what
// hardware would do (calibration.ts): copies over each GPU's host link and the NVLink, fetches
// sharing a server's storage link, runtime init, prefill and memory-bound decode sharing a
// GPU's HBM. It keeps the SwapView the policy reads up to date incrementally (residents and
// host copies indexed by model), so a decision costs what it costs in the gateway, and events
// run from a heap in O(log n). Approximations, stated once: a request's decode speed is fixed
// when it starts (by the instances then decoding on its GPU); a pipelined cold start places
// the whole model on stage 0's GPU and is consolidated the moment it is ready (the other
// stages share their storage links, and the room the policy made on their GPUs is made, but
// their stage is not held there); a fetch's link share is fixed when it starts.
import { predictTtft, prefillShares, type ServerFigures } from '../../gateway/scheduler/coldstart.js';
import {
  admit,
  buildSwapView,
  chooseEvictions,
  emptyQueue,
  expireIdle,
  nextRequest,
  pipelinedSwapTtftMs,
  routeRequest,
  SWAP_DEFAULTS,
  transferMs,
  type Eviction,
  type HostCopy,
  type ModelQueue,
  type ResidentRef,
  type RouteDecision,
  type SwapFigures,
  type SwapGpu,
  type SwapModel,
  type SwapResident,
  type SwapServer,
} from '../../gateway/scheduler/swap-policy.js';
import type { Calibration, ModelClass } from './calibration.js';
import { EventHeap } from './heap.js';
import { Draws } from './random.js';
import type { Trace } from './trace.js';

/** The simulator found its own state, or a policy decision, inconsistent: a bug, never an outcome. */
export class SimulationError extends Error {
  override name = 'SimulationError';
}

/** A system under test: the policy's switches and the platform's keep-alives. */
export interface Variant {
  name: string;
  /** Keep models in host caches and swap them in (paraserve); false: evicted means gone. */
  hostCache: boolean;
  /** Registration fetches each model into one server's host cache (FaaSwap keeps every model in host memory). */
  hostPrefetch: boolean;
  /** Cold start overlaps fetch, init and copy and may pipeline (ParaServe); false: fetch, then init, then copy, on one server. */
  pipelinedColdStart: boolean;
  maxColdStartDegree: number;
  gpuKeepAliveS: number;
  hostKeepAliveS: number;
}

export const VARIANTS: Readonly<Record<'paraserve' | 'keepAlive' | 'coldSerial', Variant>> = {
  paraserve: { name: 'paraserve', hostCache: true, hostPrefetch: true, pipelinedColdStart: true, maxColdStartDegree: 8, gpuKeepAliveS: 60, hostKeepAliveS: 6 * 3600 },
  // (a) A platform that keeps an instance on its GPU for a fixed time after use (10 min, as
  // serverless platforms do) and otherwise starts it cold from storage; cold starts pipelined.
  // Under memory pressure it too evicts idle instances, least recently used first.
  keepAlive: { name: 'keep-alive, no swap', hostCache: false, hostPrefetch: false, pipelinedColdStart: true, maxColdStartDegree: 8, gpuKeepAliveS: 600, hostKeepAliveS: 0 },
  // (b) The same without ParaServe's cold start: one server fetches, then initialises, then copies.
  coldSerial: { name: 'keep-alive, serial cold start', hostCache: false, hostPrefetch: false, pipelinedColdStart: false, maxColdStartDegree: 1, gpuKeepAliveS: 600, hostKeepAliveS: 0 },
};

export interface SimOptions {
  servers: number;
  gpusPerServer: number;
  calibration: Readonly<Calibration>;
  classes: readonly ModelClass[];
  variant: Variant;
  /** Requests one model's queue holds; more are rejected (429). */
  queueCapacity: number;
  /** Requests arriving before this are simulated but not counted (the caches warm up). */
  warmupS: number;
  /** Seeds the model catalogue (class of each model). */
  seed: number;
  /** Multiplies every class's TTFT SLO (sensitivity runs); 1: as calibrated. */
  sloScale: number;
  /** After every event, check the incrementally kept view against one built from scratch (tests; slow). */
  audit: boolean;
}

export interface SimResult {
  variant: string;
  requests: number;
  /** Counted requests (after warm-up) by how they were served. */
  paths: Record<'warm' | 'waited' | 'moved' | 'swapped' | 'cold' | 'rejected', number>;
  /** Counted requests that missed their SLO, by path (rejected ones all miss). */
  missed: Record<'warm' | 'waited' | 'moved' | 'swapped' | 'cold' | 'rejected', number>;
  sloMet: number;
  attainment: number;
  ttftP50Ms: number;
  ttftP99Ms: number;
  /** Host→GPU and peer copy times of swap-ins and moves (link wait included), ms. */
  swapP50Ms: number;
  swapP99Ms: number;
  /** GPU memory held over the trace, in GPU-seconds (bytes held × time / GPU bytes). */
  gpuSeconds: number;
  /** Time GPUs had at least one request decoding, GPU-seconds. */
  busyGpuSeconds: number;
  evictions: number;
  expiries: number;
  /** Stalls for room (no GPU could take the model at that moment). */
  stalls: number;
  events: number;
  /** Models in some host cache when the trace starts (registration's prefetch). */
  prefetchedModels: number;
  wallMs: number;
  /** CPU time of the replay (user + system), ms: steadier than wall time on a shared machine. */
  cpuMs: number;
}

interface SimInstance extends SwapResident {
  server: number;
  gpu: number;
  model: string;
  modelIndex: number;
  /** Predicted ends of its running requests. */
  ends: number[];
}

interface SimGpu extends SwapGpu {
  residents: SimInstance[];
  /** Bytes of instances with a request decoding (their weights share the HBM). */
  activeBytes: number;
  accountedMs: number;
}

interface SimServer extends SwapServer {
  gpus: SimGpu[];
  hostCopies: HostCopy[];
  /** hostCopies by model. */
  hostIndex: Map<string, HostCopy>;
  hostUsed: number;
  fetchesInFlight: number;
}

type SimEvent =
  | { kind: 'done'; inst: SimInstance; request: number; startedMs: number }
  | { kind: 'landed'; inst: SimInstance }
  | { kind: 'fetch-done'; server: number }
  | { kind: 'expire' };

/** Keep-alives are swept at most this often: a few seconds late against keep-alives of a minute or more. */
const EXPIRY_GRANULARITY_MS = 5_000;

/** Policy figures the variant decides with: the calibration's figures as if workers had measured them. */
export function variantFigures(variant: Variant, c: Readonly<Calibration>): SwapFigures {
  return {
    ...SWAP_DEFAULTS,
    hostToGpuBytesPerS: c.hostToGpuBytesPerS,
    peerBytesPerS: c.peerBytesPerS,
    swapFixedMs: c.swapFixedMs,
    coldStart: { ...SWAP_DEFAULTS.coldStart, fetchBytesPerS: c.fetchBytesPerS, copyBytesPerS: c.hostToGpuBytesPerS, initMs: c.initMs },
    maxColdStartDegree: variant.maxColdStartDegree,
    swapping: variant.hostCache,
  };
}

/** Runs `trace` through the variant; every request ends served or rejected. */
export function simulate(trace: Trace, o: SimOptions): SimResult {
  return new Simulation(trace, o).run();
}

function percentile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] as number;
}

class Simulation {
  private readonly figures: SwapFigures;
  private readonly models: SwapModel[];
  private readonly modelClass: ModelClass[];
  private readonly modelByName = new Map<string, SwapModel>();
  private readonly indexByName = new Map<string, number>();
  private readonly servers: SimServer[] = [];
  private readonly view: {
    servers: SimServer[];
    residentsByModel: Map<string, ResidentRef[]>;
    hostByModel: Map<string, number[]>;
    queuedByModel: Map<string, number>;
    serviceMsByModel: Map<string, number>;
  };
  private readonly queues = new Map<number, ModelQueue>();
  private readonly stalled = new Set<number>();
  private readonly heap = new EventHeap<SimEvent>();
  private now = 0;
  private expireArmedAt = Infinity;
  private nextInstance = 0;
  private readonly warmupMs: number;
  private readonly ttft: number[] = [];
  private readonly swaps: number[] = [];
  private readonly result: SimResult;

  constructor(
    private readonly trace: Trace,
    private readonly o: SimOptions,
  ) {
    if (o.classes.length === 0) throw new RangeError('no model classes');
    if (!Number.isSafeInteger(o.servers) || o.servers < 1 || !Number.isSafeInteger(o.gpusPerServer) || o.gpusPerServer < 1) {
      throw new RangeError(`servers and GPUs per server must be positive integers (got ${o.servers} × ${o.gpusPerServer})`);
    }
    this.figures = variantFigures(o.variant, o.calibration);
    this.warmupMs = o.warmupS * 1000;
    const c = o.calibration;
    const cumulative = new Float64Array(o.classes.length);
    o.classes.reduce((sum, k, i) => (cumulative[i] = sum + k.weight), 0);
    const draws = new Draws(o.seed, 4);
    this.models = [];
    this.modelClass = [];
    for (let i = 0; i < trace.models; i++) {
      const k = o.classes[draws.pick(cumulative)] as ModelClass;
      const model: SwapModel = {
        name: `m${i}`,
        bytes: k.bytes + k.kvBytes,
        profile: k.profile,
        ttftSloMs: k.ttftSloMs * o.sloScale,
        prefillMs: this.prefillMs(k, 1020),
        maxBatch: k.maxBatch,
        gpuKeepAliveS: o.variant.gpuKeepAliveS,
        hostKeepAliveS: o.variant.hostKeepAliveS,
      };
      this.models.push(model);
      this.modelClass.push(k);
      this.modelByName.set(model.name, model);
      this.indexByName.set(model.name, i);
    }
    for (let s = 0; s < o.servers; s++) {
      const gpus: SimGpu[] = [];
      for (let g = 0; g < o.gpusPerServer; g++) {
        gpus.push({ index: g, totalBytes: c.gpuBytes, freeBytes: c.gpuBytes, linkFreeAtMs: 0, residents: [], activeBytes: 0, accountedMs: 0 });
      }
      this.servers.push({
        id: `s${s}`,
        gpus,
        hostCopies: [],
        stageCopies: [],
        hostIndex: new Map(),
        hostUsed: 0,
        fetchBytesPerS: c.fetchBytesPerS,
        fetchesInFlight: 0,
        hostToGpuBytesPerS: c.hostToGpuBytesPerS,
        peerBytesPerS: c.peerBytesPerS,
      });
    }
    this.view = { servers: this.servers, residentsByModel: new Map(), hostByModel: new Map(), queuedByModel: new Map(), serviceMsByModel: new Map() };
    if (o.variant.hostCache && o.variant.hostPrefetch) {
      // Registration spreads the catalogue over the servers' caches; neighbouring ranks land on
      // different servers, so the popular models do too.
      this.models.forEach((_, i) => this.addHostCopy(i % o.servers, i, 0));
    }
    this.result = {
      variant: o.variant.name,
      requests: 0,
      paths: { warm: 0, waited: 0, moved: 0, swapped: 0, cold: 0, rejected: 0 },
      missed: { warm: 0, waited: 0, moved: 0, swapped: 0, cold: 0, rejected: 0 },
      sloMet: 0,
      attainment: 0,
      ttftP50Ms: 0,
      ttftP99Ms: 0,
      swapP50Ms: 0,
      swapP99Ms: 0,
      gpuSeconds: 0,
      busyGpuSeconds: 0,
      evictions: 0,
      expiries: 0,
      stalls: 0,
      events: 0,
      prefetchedModels: this.view.hostByModel.size,
      wallMs: 0,
      cpuMs: 0,
    };
  }

  run(): SimResult {
    const started = performance.now();
    const cpu = process.cpuUsage();
    const t = this.trace;
    let cursor = 0;
    const n = t.arrivalMs.length;
    for (;;) {
      const nextArrival = cursor < n ? (t.arrivalMs[cursor] as number) : Infinity;
      if (this.heap.peekTime() <= nextArrival) {
        const e = this.heap.pop();
        if (!e) break;
        if (e.item.kind === 'expire' && cursor >= n && this.idle()) break;
        this.advance(e.time);
        this.result.events++;
        this.handle(e.item, e.time);
      } else if (cursor < n) {
        this.advance(nextArrival);
        this.result.events++;
        this.arrive(cursor++);
      } else {
        break;
      }
      if (this.o.audit) this.audit();
    }
    // Whatever is still queued found no room before the events ran out: it was never served.
    for (const q of this.queues.values()) for (const r of q.requests) this.finish(Number(r.id), null, 'rejected');
    for (const s of this.servers) for (const g of s.gpus) this.account(g, Math.max(this.now, t.durationMs));
    const ttft = Float64Array.from(this.ttft).sort();
    const swaps = Float64Array.from(this.swaps).sort();
    const r = this.result;
    r.attainment = r.requests > 0 ? r.sloMet / r.requests : 1;
    r.ttftP50Ms = percentile(ttft, 0.5);
    r.ttftP99Ms = percentile(ttft, 0.99);
    r.swapP50Ms = percentile(swaps, 0.5);
    r.swapP99Ms = percentile(swaps, 0.99);
    r.gpuSeconds /= this.o.calibration.gpuBytes;
    r.wallMs = performance.now() - started;
    const used = process.cpuUsage(cpu);
    r.cpuMs = (used.user + used.system) / 1000;
    return r;
  }

  /** The view's indexes say what buildSwapView would, and GPU free bytes what the residents leave. */
  private audit(): void {
    const fresh = buildSwapView(this.servers, this.view.queuedByModel);
    const ids = (m: ReadonlyMap<string, readonly ResidentRef[]>): string =>
      JSON.stringify([...m].map(([k, v]) => [k, v.map((r) => `${r.server}/${r.gpu}/${r.resident.instanceId}`).sort()]).sort());
    const hosts = (m: ReadonlyMap<string, readonly number[]>): string => JSON.stringify([...m].map(([k, v]) => [k, [...v].sort()]).sort());
    if (ids(fresh.residentsByModel) !== ids(this.view.residentsByModel)) throw new SimulationError(`at ${this.now}: residentsByModel drifted from the servers`);
    if (hosts(fresh.hostByModel) !== hosts(this.view.hostByModel)) throw new SimulationError(`at ${this.now}: hostByModel drifted from the servers`);
    for (const s of this.servers) {
      if (s.hostUsed > this.o.calibration.hostCacheBytes) throw new SimulationError(`at ${this.now}: ${s.id} host cache over its limit`);
      for (const g of s.gpus) {
        const held = g.residents.reduce((sum, r) => sum + r.bytes, 0);
        if (g.freeBytes !== g.totalBytes - held || g.freeBytes < 0) throw new SimulationError(`at ${this.now}: ${s.id} GPU ${g.index} free bytes ${g.freeBytes} ≠ total − residents`);
        const decoding = g.residents.reduce((sum, r) => sum + (r.activeRequests > 0 ? r.bytes : 0), 0);
        if (g.activeBytes !== decoding) throw new SimulationError(`at ${this.now}: ${s.id} GPU ${g.index} counts ${g.activeBytes} B decoding, its residents ${decoding} B`);
      }
    }
  }

  private idle(): boolean {
    if (this.stalled.size > 0) return false;
    for (const q of this.queues.values()) if (q.requests.length > 0) return false;
    return this.servers.every((s) => s.gpus.every((g) => g.residents.every((i) => i.activeRequests === 0 && (i.readyAtMs ?? 0) <= this.now)));
  }

  private advance(time: number): void {
    if (time < this.now) throw new SimulationError(`event at ${time} before now ${this.now}`);
    this.now = time;
  }

  // ─── Requests ───

  private arrive(i: number): void {
    const mi = this.trace.model[i] as number;
    const model = this.models[mi] as SwapModel;
    const arrivalMs = this.trace.arrivalMs[i] as number;
    const queue = this.queues.get(mi) ?? emptyQueue(model.name, this.o.queueCapacity);
    const a = admit(queue, { id: String(i), model: model.name, arrivalMs, deadlineMs: arrivalMs + model.ttftSloMs }, this.now);
    if (a.kind === 'rejected') {
      this.finish(i, null, 'rejected');
      return;
    }
    this.setQueue(mi, a.queue);
    if (!this.stalled.has(mi)) this.pump(mi);
  }

  private setQueue(mi: number, q: ModelQueue): void {
    this.queues.set(mi, q);
    const name = (this.models[mi] as SwapModel).name;
    if (q.requests.length > 0) this.view.queuedByModel.set(name, q.requests.length);
    else this.view.queuedByModel.delete(name);
  }

  private finish(i: number, ttftMs: number | null, path: keyof SimResult['paths']): void {
    if ((this.trace.arrivalMs[i] as number) < this.warmupMs) return;
    const r = this.result;
    r.requests++;
    r.paths[path]++;
    if (ttftMs !== null) this.ttft.push(ttftMs);
    if (ttftMs !== null && ttftMs <= (this.models[this.trace.model[i] as number] as SwapModel).ttftSloMs) r.sloMet++;
    else r.missed[path]++;
  }

  /** Routes model `mi`'s queued requests until one has to wait or finds no room. */
  private pump(mi: number): void {
    const model = this.models[mi] as SwapModel;
    for (;;) {
      const q = this.queues.get(mi);
      const head = q?.requests[0];
      if (!q || !head) {
        this.stalled.delete(mi);
        return;
      }
      const d = routeRequest(this.view, model, this.figures, this.now);
      if (d.kind === 'wait' || d.kind === 'no-room') {
        this.setQueue(mi, { ...q, predictedServiceMs: d.kind === 'wait' ? d.predictedTtftMs : q.predictedServiceMs });
        if (d.kind === 'no-room') {
          if (!this.stalled.has(mi)) this.result.stalls++;
          this.stalled.add(mi);
        }
        return;
      }
      if (!this.perform(mi, d, Number(head.id))) {
        if (!this.stalled.has(mi)) this.result.stalls++;
        this.stalled.add(mi);
        return;
      }
      this.stalled.delete(mi);
      this.setQueue(mi, { ...q, requests: q.requests.slice(1), predictedServiceMs: d.predictedTtftMs });
    }
  }

  /** Carries out a decision for request `req`; false when it could not be (no room to consolidate). */
  private perform(mi: number, d: Exclude<RouteDecision, { kind: 'wait' | 'no-room' }>, req: number): boolean {
    const model = this.models[mi] as SwapModel;
    const k = this.modelClass[mi] as ModelClass;
    const c = this.o.calibration;
    const prefill = this.prefillMs(k, this.trace.promptTokens[req] as number);
    switch (d.kind) {
      case 'run': {
        const inst = this.findInstance(d.serverId, d.gpu, d.instanceId);
        this.start(inst, req, this.now + prefill, this.now > (this.trace.arrivalMs[req] as number) ? 'waited' : 'warm');
        return true;
      }
      case 'swap-in':
      case 'move': {
        this.evict(d.evictions);
        const s = this.serverIndex(d.to.serverId);
        const gpu = (this.servers[s] as SimServer).gpus[d.to.gpu] as SimGpu;
        const peer = d.kind === 'move' && d.source === 'peer';
        const copyMs = transferMs(model.bytes, peer ? c.peerBytesPerS : c.hostToGpuBytesPerS, c.swapFixedMs);
        const begin = peer ? this.now : Math.max(this.now, gpu.linkFreeAtMs);
        if (!peer) gpu.linkFreeAtMs = begin + copyMs;
        this.swaps.push(begin + copyMs - this.now);
        const inst = this.place(s, d.to.gpu, mi, begin + copyMs);
        this.start(inst, req, begin + pipelinedSwapTtftMs(copyMs, prefill, k.layers), d.kind === 'move' ? 'moved' : 'swapped');
        return true;
      }
      case 'cold-start': {
        this.evict(d.evictions);
        const first = d.stages[0];
        if (!first) throw new SimulationError('cold start without stages');
        const s0 = this.serverIndex(first.serverId);
        const g0 = (this.servers[s0] as SimServer).gpus.findIndex((g) => g.index === first.gpu);
        if (d.stages.length > 1) {
          const more = chooseEvictions(this.view, s0, g0, model.bytes, model.name, this.now);
          if (more === null) return false;
          this.evict(more);
        }
        const timing = this.coldStartTiming(mi, d, prefill);
        const inst = this.place(s0, g0, mi, this.now + timing.readyMs);
        this.start(inst, req, this.now + timing.ttftMs, 'cold');
        return true;
      }
    }
  }

  /** When a cold start's instance is ready and its first request's first token comes, from now; starts its fetches. */
  private coldStartTiming(mi: number, d: Extract<RouteDecision, { kind: 'cold-start' }>, prefill: number): { readyMs: number; ttftMs: number } {
    const model = this.models[mi] as SwapModel;
    const c = this.o.calibration;
    const servers: ServerFigures[] = d.stages.map((st) => {
      const s = this.servers[this.serverIndex(st.serverId)] as SimServer;
      return { id: s.id, fetchBytesPerS: c.fetchBytesPerS, fetchesInFlight: s.fetchesInFlight, copyBytesPerS: c.hostToGpuBytesPerS, initMs: c.initMs, devices: [], hostCachedBytes: 0, heldStages: [] };
    });
    const stageBytes = d.stages.map((st) => st.bytes);
    const p = predictTtft({
      modelBytes: model.bytes,
      stageBytes,
      servers,
      prefillMsPerStage: prefillShares(prefill, stageBytes, model.bytes, this.figures.coldStart),
      hopMs: null,
      defaults: this.figures.coldStart,
    });
    p.stages.forEach((st, i) => {
      const s = this.serverIndex((d.stages[i] as { serverId: string }).serverId);
      (this.servers[s] as SimServer).fetchesInFlight++;
      this.heap.push(this.now + st.fetchMs, { kind: 'fetch-done', server: s });
    });
    if (this.o.variant.pipelinedColdStart) return { readyMs: p.readyMs, ttftMs: p.totalMs };
    const weights = stageBytes.reduce((a, b) => a + b, 0);
    const serial = (p.stages[0]?.fetchMs ?? 0) + c.initMs + (weights / c.hostToGpuBytesPerS) * 1000;
    return { readyMs: serial, ttftMs: serial + prefill };
  }

  private prefillMs(k: ModelClass, promptTokens: number): number {
    const c = this.o.calibration;
    return k.layers * c.perLayerStepMs + ((2 * k.params * promptTokens) / c.prefillFlopsPerS) * 1000;
  }

  /** Starts request `req` on `inst`, its first token at `firstTokenAt`. */
  private start(inst: SimInstance, req: number, firstTokenAt: number, path: keyof SimResult['paths']): void {
    const server = this.servers[inst.server] as SimServer;
    const gpu = server.gpus[inst.gpu] as SimGpu;
    const k = this.modelClass[inst.modelIndex] as ModelClass;
    const c = this.o.calibration;
    if (inst.activeRequests === 0) {
      this.account(gpu, this.now);
      gpu.activeBytes += inst.bytes;
    }
    inst.activeRequests++;
    inst.lastUsedMs = this.now;
    this.touchHost(server, inst.model);
    // Decode is bound by streaming weights: every instance decoding on this GPU shares its HBM.
    const tokenMs = Math.max(k.layers * c.perLayerStepMs, (gpu.activeBytes / c.hbmBytesPerS) * 1000);
    const end = firstTokenAt + (this.trace.outputTokens[req] as number) * tokenMs;
    inst.ends.push(end);
    inst.slotFreeAtMs = Math.min(...inst.ends);
    this.heap.push(end, { kind: 'done', inst, request: req, startedMs: this.now });
    this.finish(req, firstTokenAt - (this.trace.arrivalMs[req] as number), path);
    this.armExpiry(this.now + (this.models[inst.modelIndex] as SwapModel).gpuKeepAliveS * 1000);
  }

  // ─── Events ───

  private handle(e: SimEvent, at: number): void {
    switch (e.kind) {
      case 'done': {
        const inst = e.inst;
        const gpu = (this.servers[inst.server] as SimServer).gpus[inst.gpu] as SimGpu;
        const i = inst.ends.indexOf(at);
        inst.ends.splice(i >= 0 ? i : 0, 1);
        inst.slotFreeAtMs = inst.ends.length ? Math.min(...inst.ends) : 0;
        inst.activeRequests--;
        inst.lastUsedMs = at;
        // What the gateway would measure: an moving average of how long a request holds its slot.
        const seen = this.view.serviceMsByModel.get(inst.model);
        const held = at - e.startedMs;
        this.view.serviceMsByModel.set(inst.model, seen === undefined ? held : 0.9 * seen + 0.1 * held);
        this.touchHost(this.servers[inst.server] as SimServer, inst.model);
        if (inst.activeRequests === 0) {
          this.account(gpu, at);
          gpu.activeBytes -= inst.bytes;
        }
        this.pump(inst.modelIndex);
        if (inst.activeRequests === 0) this.retryStalled();
        return;
      }
      case 'landed': {
        const inst = e.inst;
        inst.readyAtMs = null;
        if (this.o.variant.hostCache) this.addHostCopy(inst.server, inst.modelIndex, at);
        this.pump(inst.modelIndex);
        this.retryStalled();
        return;
      }
      case 'fetch-done':
        (this.servers[e.server] as SimServer).fetchesInFlight--;
        return;
      case 'expire': {
        if (at !== this.expireArmedAt) return;
        this.expireArmedAt = Infinity;
        const r = expireIdle(this.servers, this.modelByName, this.view.queuedByModel, at);
        for (const a of r.actions) {
          this.result.expiries++;
          if (a.kind === 'swap-out') this.removeInstance(this.findInstance(a.serverId, a.gpu, a.instanceId));
          else this.dropHostCopy(this.serverIndex(a.serverId), a.model);
        }
        if (r.nextExpiryMs !== null) this.armExpiry(Math.max(r.nextExpiryMs, at + EXPIRY_GRANULARITY_MS));
        if (r.actions.length) this.retryStalled();
        return;
      }
    }
  }

  private armExpiry(at: number): void {
    if (at >= this.expireArmedAt) return;
    this.expireArmedAt = at;
    this.heap.push(at, { kind: 'expire' });
  }

  /**
   * Room may have appeared: models waiting for it get another try, least slack first
   * (nextRequest), until one still finds none — the most urgent is not overtaken.
   */
  private retryStalled(): void {
    if (this.stalled.size === 0) return;
    const tried = new Set<string>();
    const queues = [...this.stalled].map((mi) => this.queues.get(mi)).filter((q): q is ModelQueue => q !== undefined);
    for (;;) {
      const pick = nextRequest(queues, this.now, tried);
      if (!pick) return;
      tried.add(pick.request.model);
      const mi = this.indexByName.get(pick.request.model) as number;
      this.stalled.delete(mi);
      this.pump(mi);
      if (this.stalled.has(mi)) return;
    }
  }

  // ─── Cluster state (and the SwapView's indexes) ───

  private serverIndex(id: string): number {
    return Number(id.slice(1));
  }

  private findInstance(serverId: string, gpu: number, instanceId: string): SimInstance {
    const inst = (this.servers[this.serverIndex(serverId)] as SimServer).gpus[gpu]?.residents.find((r) => r.instanceId === instanceId);
    if (!inst) throw new SimulationError(`policy named ${instanceId} on ${serverId} GPU ${gpu}, which is not there`);
    return inst;
  }

  /** A new instance of model `mi` on a GPU, landing at `readyAt`. */
  private place(s: number, g: number, mi: number, readyAt: number): SimInstance {
    const model = this.models[mi] as SwapModel;
    const gpu = (this.servers[s] as SimServer).gpus[g] as SimGpu;
    if (gpu.freeBytes < model.bytes) throw new SimulationError(`policy placed ${model.name} (${model.bytes} B) on s${s} GPU ${g} with ${gpu.freeBytes} B free`);
    this.account(gpu, this.now);
    gpu.freeBytes -= model.bytes;
    const inst: SimInstance = {
      instanceId: `${model.name}@s${s}#${this.nextInstance++}`,
      model: model.name,
      bytes: model.bytes,
      activeRequests: 0,
      lastUsedMs: this.now,
      readyAtMs: readyAt,
      slotFreeAtMs: 0,
      server: s,
      gpu: g,
      modelIndex: mi,
      ends: [],
    };
    gpu.residents.push(inst);
    const refs = this.view.residentsByModel.get(model.name) ?? [];
    refs.push({ server: s, gpu: g, resident: inst });
    this.view.residentsByModel.set(model.name, refs);
    this.heap.push(readyAt, { kind: 'landed', inst });
    return inst;
  }

  private evict(evictions: readonly Eviction[]): void {
    for (const e of evictions) {
      const inst = this.findInstance(e.serverId, e.gpu, e.instanceId);
      if (inst.activeRequests > 0 || inst.readyAtMs !== null) throw new SimulationError(`policy evicted ${inst.instanceId}, which is busy or landing`);
      this.result.evictions++;
      this.removeInstance(inst);
    }
  }

  private removeInstance(inst: SimInstance): void {
    const gpu = (this.servers[inst.server] as SimServer).gpus[inst.gpu] as SimGpu;
    this.account(gpu, this.now);
    gpu.freeBytes += inst.bytes;
    gpu.residents.splice(gpu.residents.indexOf(inst), 1);
    const refs = this.view.residentsByModel.get(inst.model) ?? [];
    const left = refs.filter((r) => r.resident !== inst);
    if (left.length) this.view.residentsByModel.set(inst.model, left);
    else this.view.residentsByModel.delete(inst.model);
  }

  /** GPU memory held and GPU busy time since the last change, inside the counted window. */
  private account(gpu: SimGpu, at: number): void {
    const from = Math.max(gpu.accountedMs, this.warmupMs);
    const to = Math.min(at, this.trace.durationMs);
    if (to > from) {
      this.result.gpuSeconds += ((gpu.totalBytes - gpu.freeBytes) * (to - from)) / 1000;
      if (gpu.activeBytes > 0) this.result.busyGpuSeconds += (to - from) / 1000;
    }
    gpu.accountedMs = Math.max(gpu.accountedMs, at);
  }

  private touchHost(server: SimServer, model: string): void {
    const copy = server.hostIndex.get(model);
    if (copy) copy.lastUsedMs = this.now;
  }

  /**
   * Puts model `mi`'s weights (a host copy holds no KV cache) in server `s`'s host cache,
   * evicting host-only copies LRU; none when they do not make room.
   */
  private addHostCopy(s: number, mi: number, at: number): void {
    const server = this.servers[s] as SimServer;
    const model = this.models[mi] as SwapModel;
    const bytes = (this.modelClass[mi] as ModelClass).bytes;
    if (server.hostIndex.has(model.name)) return;
    const limit = this.o.calibration.hostCacheBytes;
    if (server.hostUsed + bytes > limit) {
      const onGpu = new Set(server.gpus.flatMap((g) => g.residents.map((r) => r.model)));
      const lru = server.hostCopies.filter((h) => !onGpu.has(h.model)).sort((a, b) => a.lastUsedMs - b.lastUsedMs);
      let room = limit - server.hostUsed;
      const drop: string[] = [];
      for (const h of lru) {
        if (room >= bytes) break;
        drop.push(h.model);
        room += h.bytes;
      }
      if (room < bytes) return;
      for (const m of drop) this.dropHostCopy(s, m);
    }
    const copy: HostCopy = { model: model.name, bytes, lastUsedMs: at };
    server.hostCopies.push(copy);
    server.hostIndex.set(model.name, copy);
    server.hostUsed += bytes;
    const holders = this.view.hostByModel.get(model.name) ?? [];
    holders.push(s);
    this.view.hostByModel.set(model.name, holders);
    this.armExpiry(at + model.hostKeepAliveS * 1000);
  }

  private dropHostCopy(s: number, model: string): void {
    const server = this.servers[s] as SimServer;
    const i = server.hostCopies.findIndex((h) => h.model === model);
    if (i < 0) return;
    server.hostUsed -= (server.hostCopies[i] as HostCopy).bytes;
    server.hostCopies.splice(i, 1);
    server.hostIndex.delete(model);
    const holders = (this.view.hostByModel.get(model) ?? []).filter((x) => x !== s);
    if (holders.length) this.view.hostByModel.set(model, holders);
    else this.view.hostByModel.delete(model);
  }
}
