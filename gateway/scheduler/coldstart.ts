// Cold start by pipeline parallelism, decided as pure functions over measured figures
// (ARCHITECTURE.md "Cold start"): how long a k-stage cold start takes to its first token
// (predictTtft), which servers hold the stages (placeStages) and which degree k meets the
// model's TTFT SLO (chooseDegree). A cold start waits for its slowest stage, so every figure is
// per server: what its worker measured, or a documented default while it has measured nothing.
// A server that keeps a host copy of some of the model (a stage of an earlier pipeline) fetches
// only the rest of a stage placed on it, so placement gives kept stages back to their holders.
// Decisions are plain data carrying the reasons a request trace shows; the scheduler loop
// performs them and a simulator can replay them.
import type { WorkerView } from '../cluster/worker-view.js';
import { defaultFetchPlanOptions } from '../../worker/daemon/fetch-plan.js';
import { balanceStages, heldStageBytes, profileStageBytes, type StageByteProfile, type StageRangeSpec } from '../../worker/models/stage-plan.js';
import { formatBytes } from './format.js';
import type { InFlightLoad } from './types.js';

/** Figures used where a worker has not measured its own yet. */
export interface ColdStartDefaults {
  /** Fetch bandwidth from model storage, bytes/s. */
  fetchBytesPerS: number;
  /** Host→device copy bandwidth from pinned staging, bytes/s. */
  copyBytesPerS: number;
  /** Runtime init of a stage (device context, BLAS handles, KV cache, links to neighbours), ms. */
  initMs: number;
  /** Weight bytes one device streams through per second in a prefill: estimates an unmeasured prefill. */
  prefillBytesPerS: number;
  /** Moving one prompt's activations from a stage to the next, ms. */
  hopMs: number;
  /** One fetched chunk: the copy of the last one to the device is never hidden behind the fetch. */
  chunkBytes: number;
}

export const COLD_START_DEFAULTS: Readonly<ColdStartDefaults> = {
  // 10 Gbit/s: a common server NIC, and the per-worker cap of the issue's benchmark.
  fetchBytesPerS: 1.25e9,
  // Pinned host→device copies over PCIe 3.0 x16 reach about 12 GB/s (PCIe 4.0 about twice that).
  copyBytesPerS: 12e9,
  // CUDA context, cuBLAS handle, KV cache allocation and an NCCL link: about a second.
  initMs: 1000,
  // Well below GPU memory bandwidth, so short prompts are not underestimated: 7B in f16 → ~135 ms.
  prefillBytesPerS: 100e9,
  // A prompt's activations (tokens × hidden × 4 bytes, a few MB) over NVLink or a fast network.
  hopMs: 2,
  chunkBytes: defaultFetchPlanOptions.maxRangeBytes,
};

/** One server (one worker daemon) as the cold-start planner sees it. */
export interface ServerFigures {
  /** Worker id. */
  id: string;
  /** Fetch bandwidth the worker measured, bytes/s; null while it has measured none (the default applies). */
  fetchBytesPerS: number | null;
  /** Fetches its link carries now: one more gets 1 / (fetchesInFlight + 1) of the bandwidth. */
  fetchesInFlight: number;
  /** Host→device copy bandwidth the worker measured, bytes/s; null → default. */
  copyBytesPerS: number | null;
  /** Runtime init time the worker measured, ms; null → default. */
  initMs: number | null;
  /** Free memory of each device, net of loads the gateway started there. */
  devices: { index: number; freeBytes: number }[];
  /** Bytes of the model being placed that the server's host cache already holds. */
  hostCachedBytes: number;
  /** The parts of the model those host copies are (a pipeline stage's layers, or all of it). */
  heldStages: readonly StageRangeSpec[];
}

/** What serverFigures reads of the scheduler's in-flight loads. */
export type LoadOnLink = Pick<InFlightLoad, 'instanceId' | 'workerId' | 'device' | 'bytes' | 'status'>;

/**
 * A READY worker's figures for placing `model`. Loads the gateway started there and still sees
 * loading count as fetches on its link; their bytes are taken off a device's free memory until
 * the worker's snapshot lists the instance. Workers report no copy or init figures yet: null.
 */
export function serverFigures(view: WorkerView, model: string, loads: readonly LoadOnLink[]): ServerFigures {
  const mine = loads.filter((l) => l.workerId === view.id);
  const unlisted = mine.filter((l) => !view.instances.some((i) => i.instanceId === l.instanceId));
  return {
    id: view.id,
    fetchBytesPerS: view.fetchBytesPerS > 0 ? view.fetchBytesPerS : null,
    fetchesInFlight: mine.filter((l) => l.status === 'loading').length,
    copyBytesPerS: null,
    initMs: null,
    devices: view.devices.map((d) => ({
      index: d.index,
      freeBytes: d.freeBytes - unlisted.filter((l) => l.device === d.index).reduce((s, l) => s + l.bytes, 0),
    })),
    hostCachedBytes: view.instances.filter((i) => i.model === model).reduce((s, i) => s + i.hostBytes, 0),
    heldStages: heldStagesOf(view, model),
  };
}

/** The parts of `model` the worker's settled host copies hold: a stage's range, or (a whole-model copy) every layer. */
export function heldStagesOf(view: WorkerView, model: string): StageRangeSpec[] {
  return view.instances
    .filter((i) => i.model === model && i.hostBytes > 0 && i.residency !== 'LOADING')
    .map((i) => i.stage ?? { layerStart: 0, layerEnd: Number.MAX_SAFE_INTEGER, hasEmbeddings: true, hasHead: true });
}

export interface TtftInput {
  /** Bytes of the whole model: the fetch floor spreads them over every stage's link. */
  modelBytes: number;
  /** Bytes each stage places, in pipeline order. */
  stageBytes: number[];
  /** Bytes of each stage its server already holds in host memory (copied there, not fetched); absent: none. */
  heldBytes?: readonly number[];
  /** The server of each stage, same order. */
  servers: ServerFigures[];
  /** Prefill compute of the prompt in each stage, ms, same order (see prefillShares). */
  prefillMsPerStage: number[];
  /** Activation transfer between neighbouring stages, ms; null → default. */
  hopMs: number | null;
  defaults: Readonly<ColdStartDefaults>;
}

/** One stage's way to ready, each time measured from the cold start's t=0. */
export interface StagePrediction {
  /** Worker that runs the stage. */
  serverId: string;
  /** Bytes it fetches (what it places, less what its server holds in host memory). */
  bytes: number;
  /** Bandwidth its fetch gets: the server's (or the default) over 1 + fetches already in flight. */
  effectiveFetchBytesPerS: number;
  /** Its fetch done. */
  fetchMs: number;
  /** Its runtime init done (started at t=0, beside the fetch). */
  initMs: number;
  /** Weights on the device and runtime up: max(fetch, init) + last chunk's copy, or copy-bound. */
  readyMs: number;
}

/** A predicted cold-start time to first token and where it goes, for the request's explanation. */
export interface TtftPrediction {
  /** The slowest stage's fetch, ms. */
  fetchMs: number;
  /** The slowest stage's runtime init, ms (runs beside the fetch, so hidden up to fetchMs). */
  initMs: number;
  /** Host→device copy not hidden behind fetch and init: readyMs − max(fetchMs, initMs). */
  loadMs: number;
  /** Every stage ready, ms. */
  readyMs: number;
  /** Prefill through the stages one after another plus one activation hop between each pair, ms. */
  prefillMs: number;
  /** Predicted time to first token: readyMs + prefillMs. */
  totalMs: number;
  /** Fetch time if the model's bytes were spread evenly over these links (ParaServe's S/(k·B)), ms. */
  floorFetchMs: number;
  /** Index of the stage ready last. */
  slowestStage: number;
  /** Each stage, in pipeline order. */
  stages: StagePrediction[];
  /** Figures taken from defaults for want of measurements, e.g. 'w2 fetch bandwidth'. */
  defaultsUsed: string[];
}

function measured(value: number | null): number | null {
  return value !== null && Number.isFinite(value) && value > 0 ? value : null;
}

function checkNonNegative(what: string, values: readonly number[]): void {
  for (const v of values) {
    if (!Number.isFinite(v) || v < 0) throw new RangeError(`${what} must be finite and non-negative (got ${v})`);
  }
}

/**
 * One stage's prediction and the defaults it relied on: `held` of its `bytes` come from host
 * memory on the server (a memory copy, taken as free next to the fetch), the rest is fetched.
 */
function predictStage(bytes: number, server: ServerFigures, defaults: Readonly<ColdStartDefaults>, held = 0): { stage: StagePrediction; defaultsUsed: string[] } {
  const defaultsUsed: string[] = [];
  const pick = (value: number | null, fallback: number, what: string): number => {
    if (value !== null) return value;
    defaultsUsed.push(`${server.id} ${what}`);
    return fallback;
  };
  const fetchBps = pick(measured(server.fetchBytesPerS), defaults.fetchBytesPerS, 'fetch bandwidth');
  const copyBps = pick(measured(server.copyBytesPerS), defaults.copyBytesPerS, 'copy bandwidth');
  const initMs = pick(server.initMs !== null && Number.isFinite(server.initMs) && server.initMs >= 0 ? server.initMs : null, defaults.initMs, 'init time');
  const effective = fetchBps / (1 + Math.max(0, server.fetchesInFlight));
  const fetched = Math.max(0, bytes - held);
  const fetchMs = (fetched / effective) * 1000;
  const chunk = Math.min(defaults.chunkBytes, bytes);
  const lastCopyMs = (chunk / copyBps) * 1000;
  // Copies follow chunks as they land and wait for the device context: the last chunk's copy
  // comes after both; when copying is slower than fetching, the copies themselves are the path.
  const copyBoundMs = (chunk / effective) * 1000 + (bytes / copyBps) * 1000;
  const readyMs = Math.max(Math.max(fetchMs, initMs) + lastCopyMs, copyBoundMs);
  return { stage: { serverId: server.id, bytes: fetched, effectiveFetchBytesPerS: effective, fetchMs, initMs, readyMs }, defaultsUsed };
}

/**
 * Predicted cold-start time to first token of a placed pipeline: all stages fetch, copy and
 * initialise at once from t=0, the request starts when the slowest is ready, then the prompt
 * flows through the stages in order. RangeError when the per-stage lists differ in length.
 */
export function predictTtft(input: TtftInput): TtftPrediction {
  const k = input.stageBytes.length;
  if (k === 0 || input.servers.length !== k || input.prefillMsPerStage.length !== k) {
    throw new RangeError(
      `one server and one prefill time per stage are needed (stages ${k}, servers ${input.servers.length}, prefill times ${input.prefillMsPerStage.length})`,
    );
  }
  checkNonNegative('stage bytes', input.stageBytes);
  checkNonNegative('prefill times', input.prefillMsPerStage);
  checkNonNegative('model bytes', [input.modelBytes]);
  const predicted = input.stageBytes.map((bytes, i) => predictStage(bytes, input.servers[i] as ServerFigures, input.defaults, input.heldBytes?.[i] ?? 0));
  const timings = predicted.map((p) => p.stage);
  const defaultsUsed = predicted.flatMap((p) => p.defaultsUsed);
  let hopMs = input.hopMs;
  if (hopMs === null || !Number.isFinite(hopMs) || hopMs < 0) {
    if (k > 1) defaultsUsed.push('activation hop time');
    hopMs = input.defaults.hopMs;
  }
  let slowestStage = 0;
  timings.forEach((s, i) => {
    if (s.readyMs > (timings[slowestStage]?.readyMs ?? 0)) slowestStage = i;
  });
  const fetchMs = Math.max(...timings.map((s) => s.fetchMs));
  const initMs = Math.max(...timings.map((s) => s.initMs));
  const readyMs = Math.max(...timings.map((s) => s.readyMs));
  const prefillMs = input.prefillMsPerStage.reduce((a, b) => a + b, 0) + (k - 1) * hopMs;
  const linkBps = timings.reduce((sum, s) => sum + s.effectiveFetchBytesPerS, 0);
  return {
    fetchMs,
    initMs,
    loadMs: readyMs - Math.max(fetchMs, initMs),
    readyMs,
    prefillMs,
    totalMs: readyMs + prefillMs,
    floorFetchMs: (input.modelBytes / linkBps) * 1000,
    slowestStage,
    stages: timings,
    defaultsUsed,
  };
}

/**
 * Each stage's share of a whole-model prefill, by the weight bytes it streams through
 * (wholeModelMs null → modelBytes / defaults.prefillBytesPerS). Tied embeddings bound by both
 * ends count twice: the head's matmul is real work.
 */
export function prefillShares(wholeModelMs: number | null, stageBytes: readonly number[], modelBytes: number, defaults: Readonly<ColdStartDefaults>): number[] {
  const whole = wholeModelMs !== null && Number.isFinite(wholeModelMs) && wholeModelMs >= 0 ? wholeModelMs : (modelBytes / defaults.prefillBytesPerS) * 1000;
  return stageBytes.map((b) => (modelBytes > 0 ? (whole * b) / modelBytes : 0));
}

/** A model as the cold-start planner needs it. */
export interface ColdStartModel {
  /** Registered name. */
  name: string;
  /** Bytes per layer and per end (stageByteProfile of its safetensors headers). */
  profile: StageByteProfile;
  /** TTFT SLO set at registration, ms; null when it has none. */
  ttftSloMs: number | null;
  /** Measured prefill of this prompt through the whole model on one device, ms; null → estimated from bytes. */
  prefillMs: number | null;
}

/** One stage placed on a server. */
export interface PlacedStage {
  /** Position in the pipeline, 0-based. */
  stageIndex: number;
  /** Layers and ends the stage holds. */
  range: StageRangeSpec;
  /** Bytes it fetches and places on its device. */
  bytes: number;
  /** Worker that runs it; distinct for every stage. */
  serverId: string;
  /** That worker's device with the most free memory. */
  device: number;
}

export type PlacementDecision =
  | {
      kind: 'placed';
      /** Degree asked for. */
      requestedK: number;
      /** In pipeline order; fewer than requestedK when not enough servers could take a stage. */
      stages: PlacedStage[];
      /** Why fewer stages than asked, for the request trace; null when requestedK were placed. */
      note: string | null;
    }
  | {
      kind: 'unplaceable';
      /** What was missing, for the 503. */
      reason: string;
    };

export interface PlacementInput {
  model: ColdStartModel;
  /** Candidate servers (READY workers). */
  servers: readonly ServerFigures[];
  /** Degree wanted: 1 ≤ k ≤ the model's layers. */
  k: number;
  defaults: Readonly<ColdStartDefaults>;
}

function mostFreeDevice(server: ServerFigures): { index: number; freeBytes: number } | null {
  let best: { index: number; freeBytes: number } | null = null;
  for (const d of server.devices) if (!best || d.freeBytes > best.freeBytes) best = d;
  return best;
}

/** Servers in order of preference: least contended link, fastest link, most of the model cached, id. */
function byPreference(servers: readonly ServerFigures[], defaults: Readonly<ColdStartDefaults>): ServerFigures[] {
  const bandwidth = (s: ServerFigures) => measured(s.fetchBytesPerS) ?? defaults.fetchBytesPerS;
  return [...servers].sort(
    (a, b) =>
      a.fetchesInFlight - b.fetchesInFlight ||
      bandwidth(b) - bandwidth(a) ||
      b.hostCachedBytes - a.hostCachedBytes ||
      a.id.localeCompare(b.id),
  );
}

/**
 * A matching of rows to distinct columns through allowed edges (Kuhn's augmenting paths), or
 * null when some row has none. match[row] = column.
 */
function matchAll(rows: number, columns: number, allowed: (row: number, column: number) => boolean): number[] | null {
  const owner = new Array<number>(columns).fill(-1);
  const augment = (row: number, seen: boolean[]): boolean => {
    // A free column first, so rows keep the columns they would take in order when no
    // re-routing is needed.
    for (let c = 0; c < columns; c++) {
      if (owner[c] === -1 && allowed(row, c)) {
        owner[c] = row;
        return true;
      }
    }
    for (let c = 0; c < columns; c++) {
      if (seen[c] || !allowed(row, c)) continue;
      seen[c] = true;
      const current = owner[c] ?? -1;
      if (current === -1 || augment(current, seen)) {
        owner[c] = row;
        return true;
      }
    }
    return false;
  };
  for (let r = 0; r < rows; r++) {
    if (!augment(r, new Array<boolean>(columns).fill(false))) return null;
  }
  const match = new Array<number>(rows).fill(-1);
  owner.forEach((row, c) => {
    if (row >= 0) match[row] = c;
  });
  return match;
}

/**
 * Places the k stages of a balanced split on k distinct servers with a device of room for
 * each: servers are taken in order of preference (fewest fetches in flight, then highest
 * bandwidth, then most of the model in host cache) as long as the stages can still all be
 * given room, then stages go to the chosen servers so that the last one ready is as early as
 * possible. With fewer servers able to take a stage, the largest smaller degree that places,
 * with a note saying so.
 */
export function placeStages(input: PlacementInput): PlacementDecision {
  const { model, servers, k, defaults } = input;
  const layers = model.profile.layerBytes.length;
  if (!Number.isSafeInteger(k) || k < 1 || k > layers) {
    throw new RangeError(`pipeline degree must be an integer from 1 to the model's ${layers} layers (got ${k})`);
  }
  if (servers.length === 0) return { kind: 'unplaceable', reason: `no READY worker to place model '${model.name}' on` };
  const preferred = byPreference(servers, defaults);
  let note: string | null = servers.length < k ? `degree ${k} wanted ${k} servers, ${servers.length} READY` : null;
  for (let degree = Math.min(k, servers.length); degree >= 1; degree--) {
    const ranges = balanceStages(model.profile, degree);
    const bytes = ranges.map((r) => profileStageBytes(model.profile, r));
    const fits = (server: ServerFigures, stage: number) => (mostFreeDevice(server)?.freeBytes ?? -Infinity) >= (bytes[stage] ?? Infinity);

    const chosen: ServerFigures[] = [];
    for (const server of preferred) {
      if (chosen.length === degree) break;
      const trial = [...chosen, server];
      if (matchAll(trial.length, degree, (row, stage) => fits(trial[row] as ServerFigures, stage))) chosen.push(server);
    }
    if (chosen.length < degree) {
      note ??= shortfall(k, servers.length, preferred, bytes);
      continue;
    }

    // Bottleneck assignment: the least "last stage ready" time for which every stage still
    // gets a chosen server with room.
    const ready = bytes.map((b, stage) =>
      chosen.map((s) => predictStage(b, s, defaults, heldStageBytes(model.profile, ranges[stage]!, s.heldStages)).stage.readyMs),
    );
    const thresholds = [...new Set(ready.flat())].sort((a, b) => a - b);
    let assignment: number[] | null = null;
    for (const limit of thresholds) {
      assignment = matchAll(degree, degree, (stage, row) => fits(chosen[row] as ServerFigures, stage) && (ready[stage]?.[row] ?? Infinity) <= limit);
      if (assignment) break;
    }
    if (!assignment) continue; // unreachable: the largest limit admits every edge with room
    const stages = ranges.map((range, stageIndex): PlacedStage => {
      const server = chosen[assignment[stageIndex] ?? -1] as ServerFigures;
      return { stageIndex, range, bytes: bytes[stageIndex] ?? 0, serverId: server.id, device: mostFreeDevice(server)?.index ?? 0 };
    });
    return { kind: 'placed', requestedK: k, stages, note: degree < k ? `${note ?? `degree ${k} not placeable`}; placed ${degree} stage(s) instead` : null };
  }
  const whole = profileStageBytes(model.profile, { layerStart: 0, layerEnd: layers, hasEmbeddings: true, hasHead: true });
  const roomiest = Math.max(...servers.map((s) => mostFreeDevice(s)?.freeBytes ?? 0));
  return {
    kind: 'unplaceable',
    reason: `no degree up to ${k} gives every stage of model '${model.name}' (${formatBytes(whole)}) a device with room; the most free on one device is ${formatBytes(Math.max(0, roomiest))}`,
  };
}

/** Why `bytes` (the stages of degree k) found no k servers with room. */
function shortfall(k: number, serverCount: number, servers: readonly ServerFigures[], bytes: readonly number[]): string {
  const smallest = Math.min(...bytes);
  const able = servers.filter((s) => (mostFreeDevice(s)?.freeBytes ?? -Infinity) >= smallest).length;
  if (able >= k) return `degree ${k}: no ${k} servers give each stage (up to ${formatBytes(Math.max(...bytes))}) a device with room`;
  return `degree ${k} wanted ${k} servers with room for a stage (${formatBytes(smallest)} or more), ${able} of ${serverCount} have it`;
}

export interface DegreeInput {
  model: ColdStartModel;
  /** Candidate servers (READY workers). */
  servers: readonly ServerFigures[];
  /** Largest degree to consider (a cluster setting). */
  maxK: number;
  /** Activation transfer between neighbouring stages, ms; null → default. */
  hopMs: number | null;
  defaults: Readonly<ColdStartDefaults>;
}

/** One degree evaluated on the way to a choice. */
export interface DegreeCandidate {
  /** Degree tried. */
  k: number;
  /** Its predicted TTFT, ms; null when it could not be placed. */
  totalMs: number | null;
}

export type DegreeDecision =
  | {
      kind: 'cold-start';
      /** Chosen degree: the number of stages and of distinct servers. */
      k: number;
      /** The stages and where they run, in pipeline order. */
      stages: PlacedStage[];
      /** The predicted TTFT of this choice and its parts. */
      prediction: TtftPrediction;
      /** Predicted TTFT within the SLO; true as well when the model has no SLO. */
      sloMet: boolean;
      /** The SLO judged against, ms; null when the model has none. */
      sloMs: number | null;
      /** Why this degree, for the request trace. */
      reason: string;
      /** Every degree evaluated, smallest first. */
      considered: DegreeCandidate[];
    }
  | {
      kind: 'unplaceable';
      /** What was missing, for the 503. */
      reason: string;
    };

function fmtMs(ms: number): string {
  return `${Math.round(ms)} ms`;
}

function explain(p: TtftPrediction): string {
  return `fetch ${fmtMs(p.fetchMs)}, init ${fmtMs(p.initMs)}, unhidden load ${fmtMs(p.loadMs)}, prefill ${fmtMs(p.prefillMs)}`;
}

/**
 * The smallest degree whose predicted TTFT meets the model's SLO (no SLO: the smallest that
 * places), each degree placed by placeStages; when none meets it, the degree with the least
 * predicted TTFT, sloMet false. Degrees run from 1 to maxK, capped by the model's layers and
 * the number of servers.
 */
export function chooseDegree(input: DegreeInput): DegreeDecision {
  const { model, servers, defaults } = input;
  if (!Number.isSafeInteger(input.maxK) || input.maxK < 1) throw new RangeError(`maxK must be a positive integer (got ${input.maxK})`);
  const layers = model.profile.layerBytes.length;
  const top = Math.min(input.maxK, layers, servers.length);
  if (top < 1) return { kind: 'unplaceable', reason: `no READY worker to place model '${model.name}' on` };
  const modelBytes = profileStageBytes(model.profile, { layerStart: 0, layerEnd: layers, hasEmbeddings: true, hasHead: true });
  const slo = model.ttftSloMs;
  const considered: DegreeCandidate[] = [];
  const byId = new Map(servers.map((s) => [s.id, s]));
  let best: { stages: PlacedStage[]; prediction: TtftPrediction } | null = null;
  let failure: string | null = null;
  for (let k = 1; k <= top; k++) {
    const placement = placeStages({ model, servers, k, defaults });
    if (placement.kind === 'unplaceable') {
      failure = placement.reason;
      considered.push({ k, totalMs: null });
      continue;
    }
    if (placement.stages.length < k) {
      // The smaller degree it fell back to was tried already; a larger one may still fit,
      // its stages being smaller.
      considered.push({ k, totalMs: null });
      failure = placement.note;
      continue;
    }
    const stageBytes = placement.stages.map((s) => s.bytes);
    const stageServers = placement.stages.map((s) => byId.get(s.serverId) as ServerFigures);
    const prediction = predictTtft({
      modelBytes,
      stageBytes,
      heldBytes: placement.stages.map((s, i) => heldStageBytes(model.profile, s.range, stageServers[i]!.heldStages)),
      servers: stageServers,
      prefillMsPerStage: prefillShares(model.prefillMs, stageBytes, modelBytes, defaults),
      hopMs: input.hopMs,
      defaults,
    });
    considered.push({ k, totalMs: prediction.totalMs });
    const where = placement.stages.map((s) => s.serverId).join(', ');
    if (slo === null || prediction.totalMs <= slo) {
      const why = slo === null ? 'model has no TTFT SLO, smallest degree that places' : `predicted TTFT ${fmtMs(prediction.totalMs)} ≤ SLO ${fmtMs(slo)}`;
      return {
        kind: 'cold-start',
        k,
        stages: placement.stages,
        prediction,
        sloMet: true,
        sloMs: slo,
        reason: `cold: degree ${k} on ${where}: ${why} (${explain(prediction)})`,
        considered,
      };
    }
    if (!best || prediction.totalMs < best.prediction.totalMs) best = { stages: placement.stages, prediction };
  }
  if (!best) return { kind: 'unplaceable', reason: failure ?? `model '${model.name}' could not be placed` };
  const k = best.stages.length;
  const limits: string[] = [];
  if (top < input.maxK) limits.push(`degrees capped at ${top} by ${top === layers ? `${layers} layers` : `${servers.length} READY worker(s)`}`);
  if (failure !== null) limits.push(failure);
  return {
    kind: 'cold-start',
    k,
    stages: best.stages,
    prediction: best.prediction,
    sloMet: false,
    sloMs: slo,
    reason:
      `cold: no degree up to ${top} meets the TTFT SLO of ${fmtMs(slo ?? 0)}${limits.length ? ` (${limits.join('; ')})` : ''}; ` +
      `degree ${k} on ${best.stages.map((s) => s.serverId).join(', ')} predicts the least, ${fmtMs(best.prediction.totalMs)} (${explain(best.prediction)})`,
    considered,
  };
}
