// LoadStage: bring a stage of a model from its source into one host buffer (the instance's
// host cache copy, kept after the load for later swap-ins; making room for it may evict
// host-only copies, host-cache.ts) and onto a device, reporting each phase. A stage whose
// weights cannot fit on the device is refused before its bytes are fetched (memory.ts).
// Where the stage's tensors lie comes with the request when the gateway has read the
// checkpoint's headers (then the fetch starts at once and the files' sizes are checked while it
// runs); otherwise the worker checks the sizes, then reads the headers itself.
// Fetch runs several ranged requests at once in layer order (fetch-plan.ts lays them out), each
// received and hashed on a fetch thread (fetch-threads.ts) and copied into the buffer here.
// With overlap (issue 4, the default), three things run from t=0: the fetch; runtime init
// (prepareDevice's context creation, then createStage: weights and KV cache space — on the
// CPU backend, allocation — then a warm-up pass that loads the stage's kernels before its
// weights land, with a prefill of each waiting request's prompt length, and a pipeline stage's
// device links to its neighbours and its connection to the next stage's worker, links.ts);
// and the copy, which binds each tensor from the host buffer as
// soon as init is done and every range holding its bytes has landed and been verified, in
// layer order, while later layers are still fetching. Without overlap
// the phases run one after the other (fetch, init, copy), the baseline a plain serverless
// container gives. Each phase's start and end go out as PhaseEvents on the event stream
// (at_ms since the request arrived); LoadProgress messages stream to the caller throughout.
// A load that fails or is aborted leaves nothing behind: every task is stopped and awaited,
// the stage is disposed, the buffer freed, the instance reported FAILED and then removed.
// Integrity: files registered with chunk hashes are fetched in whole chunks, each verified as
// it completes; a chunk that fails is fetched once more, and failing again fails the load with
// DATA_LOSS. A tensor is bound only once every chunk under it verified, and the instance
// serves only once all are bound, so it never serves unverified bytes (files registered
// without chunks load unverified, with a warning).
// Tensors that another settled host copy of the same verified files on this worker holds (a
// pipeline member's own stage when it consolidates the whole model, a stage kept after its
// pipeline dissolved) are copied from it instead of fetched (local-copies.ts).
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { status } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { LoadProgress__Output } from '../../protos/generated/paraserve/v1/LoadProgress.js';
import type { LoadStageRequest__Output } from '../../protos/generated/paraserve/v1/LoadStageRequest.js';
import type { ModelFile__Output } from '../../protos/generated/paraserve/v1/ModelFile.js';
import type { StageRange__Output } from '../../protos/generated/paraserve/v1/StageRange.js';
import type { ModelConfig } from '../models/model-config.js';
import { parseModelConfig } from '../models/config.js';
import { readCheckpointTensors, tensorsFromLayout, type TensorInfo } from '../models/safetensors.js';
import { openModelSource, type ModelSourceReader } from '../models/source.js';
import { throttledSource, type FetchLimiter } from '../models/throttle.js';
import { planStageTensors, stageSpecFor, type StageRangeSpec } from '../models/stage-plan.js';
import type { BackendName, HostBufferHandle, NativeAddon, StageHandle } from '../native/addon-types.js';
import { toStatus, WorkerError, type StatusReport } from './errors.js';
import {
  defaultFetchPlanOptions,
  planFetch,
  subRange,
  type FetchChunk,
  type FetchPlan,
  type FetchRange,
  type FileChunkHashes,
} from './fetch-plan.js';
import { fetchOnThread, prepareFetchThreads } from './fetch-threads.js';
import { allocateHostCopy, releaseNative } from './host-cache.js';
import { openStageLinks, NO_LINKS } from './links.js';
import { connectNextStage, nextStageAddress } from './pipeline.js';
import { contentKeyOf, localCopies } from './local-copies.js';
import { untilAborted } from './until-aborted.js';
import { chooseDevice, estimateWeightBytes } from './memory.js';
import type { HostTensor, InstanceRecord, WorkerState } from './state.js';
import { attachStage, checkRoom, swapIn, swapSettled } from './swap.js';

export type LoadPhase = 'FETCH' | 'COPY' | 'INIT' | 'READY';

export interface LoaderDeps {
  addon: NativeAddon;
  backend: BackendName;
  state: WorkerState;
  logger: Logger;
  /** KV cache capacity per sequence when the request leaves max_context at 0. */
  defaultMaxContext: number;
  /** Ranged requests in flight at once while fetching. */
  fetchConcurrency: number;
  /** Overlap fetch, runtime init and copy; false: fetch, then init, then copy (the baseline). */
  loadOverlap: boolean;
  /** A fetch fails when its source sends nothing for this long (connect, headers, between chunks). */
  fetchStallTimeoutMs: number;
}

/** Receives LoadProgress messages for the LoadStage stream. */
export type ProgressSink = (progress: LoadProgress__Output) => void;

/** The stage a request asks for, checked against the model's shape. */
export interface ResolvedStage {
  range: StageRange__Output;
  spec: StageRangeSpec;
  maxContext: number;
}

/**
 * Pure: checks the requested range against the model and fills defaults. An absent stage is
 * the whole model; max_context 0 takes the worker's default; both are capped at the model's
 * max_position_embeddings.
 */
export function resolveStage(
  stage: StageRange__Output | null,
  requestedMaxContext: number,
  defaultMaxContext: number,
  config: ModelConfig,
): ResolvedStage | string {
  const range: StageRange__Output = stage ?? {
    layerStart: 0,
    layerEnd: config.numLayers,
    hasEmbeddings: true,
    hasHead: true,
    stageIndex: 0,
    stageCount: 1,
  };
  const { layerStart, layerEnd } = range;
  if (!(layerStart < layerEnd && layerEnd <= config.numLayers)) {
    return `stage layers [${layerStart}, ${layerEnd}) are not a non-empty range within the model's ${config.numLayers} layers`;
  }
  if (range.hasEmbeddings !== (layerStart === 0)) {
    return `stage layers [${layerStart}, ${layerEnd}): has_embeddings must be ${layerStart === 0} (only the stage starting at layer 0 holds the embeddings)`;
  }
  if (range.hasHead !== (layerEnd === config.numLayers)) {
    return `stage layers [${layerStart}, ${layerEnd}): has_head must be ${layerEnd === config.numLayers} (only the stage ending at the last layer holds the head)`;
  }
  if (range.stageCount > 0 && range.stageIndex >= range.stageCount) {
    return `stage_index ${range.stageIndex} is not below stage_count ${range.stageCount}`;
  }
  const maxContext = Math.min(requestedMaxContext > 0 ? requestedMaxContext : defaultMaxContext, config.maxPositionEmbeddings);
  if (maxContext < 2) return `max_context ${maxContext} is too small`;
  return {
    range: { ...range },
    spec: { layerStart, layerEnd, hasEmbeddings: range.hasEmbeddings, hasHead: range.hasHead },
    maxContext,
  };
}

/** Pure: files whose size at the source differs from the registered one. */
export function sizeMismatches(registered: readonly ModelFile__Output[], actual: readonly number[]): string[] {
  return registered.flatMap((file, i) =>
    file.size > 0 && actual[i] !== file.size
      ? [`${file.path} is ${actual[i]} bytes at the source but was registered with ${file.size}`]
      : [],
  );
}

const SHA256_HEX = /^[0-9a-f]{64}$/;

/**
 * Pure: the chunk hashes of the registered files that have them, by path, or what is wrong
 * with them. Files with chunk_bytes 0 are absent (loaded unverified).
 */
export function registeredChunks(files: readonly ModelFile__Output[]): Map<string, FileChunkHashes> | string {
  const out = new Map<string, FileChunkHashes>();
  for (const f of files) {
    if (f.chunkBytes === 0) {
      if (f.chunkSha256.length > 0) return `${f.path}: chunk_sha256 given without chunk_bytes`;
      continue;
    }
    const expected = Math.ceil(f.size / f.chunkBytes);
    if (f.chunkSha256.length !== expected) {
      return `${f.path}: ${f.chunkSha256.length} chunk hashes, but ${f.size} bytes in chunks of ${f.chunkBytes} make ${expected}`;
    }
    const bad = f.chunkSha256.findIndex((h) => !SHA256_HEX.test(h));
    if (bad !== -1) return `${f.path}: chunk_sha256[${bad}] is not a lowercase hex sha256`;
    out.set(f.path, { size: f.size, chunkBytes: f.chunkBytes, sha256: f.chunkSha256 });
  }
  return out;
}

const RANGES_PER_STAGE = 64;
const MIN_RANGE_BYTES = 256 * 1024;

/**
 * Pure: the longest request for a stage of `tensorBytes`: about 1/64 of the stage, so that
 * every fetch lane has work and the copy follows the fetch closely even for small stages,
 * within [256 KiB, the default 16 MiB].
 */
export function maxRangeBytesFor(tensorBytes: number): number {
  return Math.min(defaultFetchPlanOptions.maxRangeBytes, Math.max(MIN_RANGE_BYTES, Math.ceil(tensorBytes / RANGES_PER_STAGE)));
}

/** Most prompt lengths a load warms its stage up for (LoadStageRequest.warm_up_token_counts). */
const MAX_WARM_UP_PROMPTS = 8;

/** Pure: the prompt lengths to warm a stage up for, or what is wrong with them. */
function warmUpPrompts(counts: readonly number[]): number[] | string {
  if (counts.length > MAX_WARM_UP_PROMPTS) return `at most ${MAX_WARM_UP_PROMPTS} prompt lengths, got ${counts.length}`;
  if (counts.some((c) => c < 1)) return 'prompt lengths must be at least 1 token';
  return [...new Set(counts)];
}

function invalid(message: string): WorkerError {
  return new WorkerError(status.INVALID_ARGUMENT, message);
}

/**
 * Loads the stage named by the request, or confirms it is loaded. Resolves once the instance
 * is ON_DEVICE (the caller then ends the stream, whose last message is READY); rejects with
 * an error toStatus maps. `caller` aborts the load (client gone).
 */
export async function loadStage(
  deps: LoaderDeps,
  request: LoadStageRequest__Output,
  progress: ProgressSink,
  caller: AbortSignal,
): Promise<void> {
  const arrived = performance.now();
  const elapsed = (): number => performance.now() - arrived;
  const report = (phase: LoadPhase, bytesDone: number, bytesTotal: number, linkToNext = false): void =>
    progress({ phase, bytesDone, bytesTotal, elapsedMs: elapsed(), linkToNext });

  if (request.instanceId === '') throw invalid('instance_id is empty');
  const existing = deps.state.instance(request.instanceId);
  if (existing !== null) {
    if (existing.model !== request.model) {
      throw new WorkerError(status.ALREADY_EXISTS, `instance ${existing.id} already holds model ${existing.model}`);
    }
    const failure = await existing.loaded;
    if (failure !== null) throw new WorkerError(failure.code, failure.details);
    if (existing.unloading) throw new WorkerError(status.FAILED_PRECONDITION, `instance ${existing.id} is being unloaded`);
    if (existing.residency === 'HOST_ONLY') {
      deps.state.assertAccepting();
      await swapIn(deps, existing.id, request.device);
    }
    report('READY', existing.hostBytes, existing.hostBytes, existing.links.toNext !== null);
    return;
  }
  deps.state.assertAccepting();
  if (request.model === '') throw invalid('model is empty');
  if (request.source === null || request.source.uri === '') throw invalid('source.uri is empty');

  let config: ModelConfig;
  try {
    config = parseModelConfig(JSON.parse(request.configJson) as unknown);
  } catch (e) {
    throw invalid(`config_json: ${e instanceof Error ? e.message : String(e)}`);
  }
  const resolved = resolveStage(request.stage, request.maxContext, deps.defaultMaxContext, config);
  if (typeof resolved === 'string') throw invalid(resolved);
  const device = chooseDevice(request.device, deps.state.currentDevices());
  if (typeof device === 'string') throw invalid(device);
  const stageSpec = stageSpecFor(config, resolved.spec, deps.backend, device, resolved.maxContext);
  const chunks = registeredChunks(request.source.files);
  if (typeof chunks === 'string') throw invalid(`source.files: ${chunks}`);
  const warmUp = warmUpPrompts(request.warmUpTokenCounts);
  if (typeof warmUp === 'string') throw invalid(`warm_up_token_counts: ${warmUp}`);
  let given: Map<string, TensorInfo> | null = null;
  if (request.tensors.length > 0) {
    try {
      given = tensorsFromLayout(request.tensors, request.source.files);
    } catch (e) {
      throw invalid(`tensors: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  let settle: (failure: StatusReport | null) => void = () => undefined;
  const record: InstanceRecord = {
    id: request.instanceId,
    model: request.model,
    stage: resolved.range,
    device,
    residency: 'LOADING',
    deviceBytes: 0,
    hostBytes: 0,
    activeRequests: 0,
    error: '',
    lastUsedMs: Date.now(),
    secondCopy: null,
    contentKey: contentKeyOf(request.source.files),
    maxContext: resolved.maxContext,
    stageSpec,
    nativeStage: null,
    hostBuffer: null,
    hostTensors: [],
    weightBytes: 0,
    runner: null,
    links: NO_LINKS,
    measureDeviceBytes: null,
    transition: null,
    swappingOut: false,
    loaded: new Promise((resolve) => {
      settle = resolve;
    }),
    loadAbort: new AbortController(),
    unloading: false,
    nextSequence: 1,
  };
  const signal = AbortSignal.any([caller, record.loadAbort.signal]);
  deps.state.addInstance(record);
  const log = deps.logger.child({ instance: record.id, model: record.model });
  log.info({ stage: resolved.range, device, source: request.source.uri }, 'load started');

  const phase = (name: LoadPhase, ended: boolean): void =>
    deps.state.emitPhase({ instanceId: record.id, phase: name, ended, atMs: elapsed() });

  // Every task of the load (init, fetch, copy) stops the others when it fails; the first
  // failure is the one reported, and nothing is freed until every task has settled.
  const stop = new AbortController();
  const loadSignal = AbortSignal.any([signal, stop.signal]);
  const tasks: Promise<unknown>[] = [];
  const track = <T>(task: Promise<T>): Promise<T> => {
    tasks.push(task);
    task.catch((e: unknown) => stop.abort(e));
    return task;
  };
  // The stage is created only once its bytes are checked and reserved on the device, so the
  // check never counts the stage's own allocation; the device's runtime init goes first.
  let roomReserved: () => void = () => undefined;
  const reserved = new Promise<void>((resolve, reject) => {
    roomReserved = resolve;
    loadSignal.addEventListener('abort', () => reject(loadSignal.reason as Error), { once: true });
  });
  reserved.catch(() => undefined);
  const initStage = async (): Promise<StageHandle> => {
    await yieldToLoop();
    loadSignal.throwIfAborted();
    phase('INIT', false);
    report('INIT', 0, 1);
    const next = nextStageAddress(resolved.range, request.peers);
    if (next !== null) record.links = { ...record.links, nextStage: connectNextStage(next) };
    await deps.addon.prepareDevice(deps.backend, device);
    const linksOpened = openStageLinks(deps.addon, deps.backend, device, request, record, log, loadSignal);
    await reserved;
    record.nativeStage = deps.addon.createStage(stageSpec);
    await deps.addon.warmUpStage(record.nativeStage, warmUp);
    await untilAborted(linksOpened, loadSignal);
    phase('INIT', true);
    report('INIT', 1, 1);
    return record.nativeStage;
  };

  try {
    phase('FETCH', false);
    report('FETCH', 0, 0);
    const init = deps.loadOverlap ? track(initStage()) : null;
    const remote: RemoteSource = { uri: request.source.uri, timeoutMs: deps.fetchStallTimeoutMs, limiter: deps.state.fetchLimiter };
    prepareFetchThreads(remote.uri, remote.timeoutMs);
    const source = throttledSource(openModelSource(remote.uri, { timeoutMs: remote.timeoutMs }), remote.limiter);
    // With the layout given, the files' sizes are checked while the fetch runs (before READY).
    let sizesChecked = Promise.resolve();
    let tensors: Map<string, TensorInfo>;
    if (given === null) {
      await verifySizes(source, request.source.files);
      loadSignal.throwIfAborted();
      tensors = await readCheckpointTensors(source);
      loadSignal.throwIfAborted();
    } else {
      sizesChecked = track(verifySizes(source, request.source.files));
      tensors = given;
    }
    const planned = planStageTensors(tensors, config, resolved.spec);
    const tensorBytes = planned.reduce((sum, t) => sum + (t.end - t.begin), 0);
    const planOptions = { ...defaultFetchPlanOptions, maxRangeBytes: maxRangeBytesFor(tensorBytes) };
    const layout = planFetch(planned, planOptions, chunks);
    if (layout.unverifiedFiles.length > 0) {
      log.warn({ files: layout.unverifiedFiles }, 'loading unverified bytes: these files were registered without chunk hashes');
    }

    const weightBytes = estimateWeightBytes(planned, stageSpec.computeDType);
    checkRoom(deps.state, record.id, weightBytes, device);
    record.deviceBytes = weightBytes;
    roomReserved();
    const buffer = allocateHostCopy({ addon: deps.addon, state: deps.state, logger: log }, record, layout.totalBytes);
    record.hostBuffer = buffer;
    record.hostTensors = planned.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, offset: layout.offsets.get(t.name)!, bytes: t.end - t.begin }));
    // Donors are chosen once the buffer is allocated, since making room may evict host copies.
    const copies = localCopies(deps.state, record, record.hostTensors);
    const had = new Set(copies.map((c) => c.name));
    const plan = had.size === 0 ? layout : planFetch(planned, planOptions, chunks, had);
    if (copies.length > 0) {
      log.info({ tensors: copies.length, bytes: copies.reduce((sum, c) => sum + c.bytes, 0) }, 'copying tensors from host copies on this worker');
    }

    report('FETCH', 0, plan.fetchBytes);
    // Copied tensors land together, as one extra "range" after the fetched ones.
    const copiedRange = plan.ranges.length;
    const landed = new LandedTensors(tensorRanges(planned, plan).map((ranges, i) => (had.has(planned[i]!.name) ? [copiedRange] : ranges)));
    if (copies.length > 0) {
      track(
        Promise.all(copies.map((c) => deps.addon.copyHostBuffer(c.from, c.fromOffset, buffer, layout.offsets.get(c.name)!, c.bytes))).then(() =>
          landed.rangeDone(copiedRange),
        ),
      );
    }
    const fetchStarted = performance.now();
    const fetching = track(
      fetchInto(deps, log, remote, plan, buffer, loadSignal, (index, done) => {
        landed.rangeDone(index);
        report('FETCH', done, plan.fetchBytes);
      }).then(() => {
        const fetchSeconds = (performance.now() - fetchStarted) / 1000;
        if (fetchSeconds > 0 && plan.fetchBytes > 0) deps.state.recordFetchRate(plan.fetchBytes / fetchSeconds);
        phase('FETCH', true);
      }),
    );
    const copy = async (stage: StageHandle): Promise<void> => {
      await bindAsLanded(deps.addon, stage, buffer, record.hostTensors, landed, loadSignal, () => phase('COPY', false), (done) =>
        report('COPY', done, plan.tensorBytes),
      );
      loadSignal.throwIfAborted();
      const missing = deps.addon.missingTensors(stage);
      if (missing.length > 0) throw invalid(`the checkpoint lacks tensors the stage needs: ${missing.join(', ')}`);
      phase('COPY', true);
    };
    if (init !== null) {
      await Promise.all([fetching, track(init.then(copy))]);
    } else {
      await fetching;
      await copy(await track(initStage()));
    }
    await sizesChecked;
    loadSignal.throwIfAborted();

    attachStage(deps.addon, deps.state, record, record.nativeStage!);
    record.weightBytes = record.deviceBytes;
    record.lastUsedMs = Date.now();
    phase('READY', true);
    report('READY', plan.fetchBytes, plan.fetchBytes, record.links.toNext !== null);
    log.info({ elapsedMs: Math.round(elapsed()), hostBytes: record.hostBytes, deviceBytes: record.deviceBytes }, 'load ready');
    settle(null);
  } catch (e) {
    stop.abort(e);
    await Promise.allSettled(tasks);
    const failure = toStatus(loadSignal.reason ?? e);
    log.warn({ code: failure.code, details: failure.details }, 'load failed');
    releaseNative(deps.addon, record);
    deps.state.failInstance(record, failure.details);
    settle(failure);
    throw new WorkerError(failure.code, failure.details, { cause: e });
  }
}

async function verifySizes(source: ModelSourceReader, files: readonly ModelFile__Output[]): Promise<void> {
  if (files.length === 0) return;
  const actual = await Promise.all(files.map((f) => source.size(f.path)));
  const mismatches = sizeMismatches(files, actual);
  if (mismatches.length > 0) {
    throw new WorkerError(status.FAILED_PRECONDITION, `model files changed since registration: ${mismatches.join('; ')}`);
  }
}

/** A chunk whose bytes did not hash to the registered digest. */
interface ChunkFailure {
  chunk: FetchChunk;
  actual: string;
}

/** Where a load's ranged requests go, and the cap they share. */
interface RemoteSource {
  uri: string;
  timeoutMs: number;
  limiter: FetchLimiter;
}

/**
 * Fetches one range on a fetch thread, which hashes each of its chunks as the bytes pass;
 * copies the bytes its targets need into the buffer. Resolves to the chunks that failed
 * verification.
 */
async function fetchRange(
  addon: NativeAddon,
  source: RemoteSource,
  range: FetchRange,
  buffer: HostBufferHandle,
  signal: AbortSignal,
): Promise<ChunkFailure[]> {
  let target = 0;
  const writeTargets = (offset: number, bytes: Uint8Array): void => {
    const bytesEnd = offset + bytes.length;
    while (target < range.targets.length && range.targets[target]!.end <= offset) target++;
    for (let k = target; k < range.targets.length && range.targets[k]!.begin < bytesEnd; k++) {
      const t = range.targets[k]!;
      const from = Math.max(t.begin, offset);
      const to = Math.min(t.end, bytesEnd);
      if (from < to) addon.writeHostBuffer(buffer, t.bufferOffset + (from - t.begin), bytes.subarray(from - offset, to - offset));
    }
  };
  const ended = source.limiter.begin();
  let digests: string[];
  try {
    digests = await fetchOnThread(
      {
        uri: source.uri,
        timeoutMs: source.timeoutMs,
        limit: source.limiter.shared,
        file: range.file,
        begin: range.begin,
        end: range.end,
        chunkEnds: range.chunks.map((c) => c.end),
      },
      writeTargets,
      signal,
    );
  } finally {
    ended();
  }
  return range.chunks.flatMap((chunk, i) => {
    const actual = digests[i] ?? 'none (the fetch ended before the chunk did)';
    return actual === chunk.sha256 ? [] : [{ chunk, actual }];
  });
}

/** Fetches a range and refetches each chunk that fails verification once; DATA_LOSS if it fails again. */
async function fetchVerified(
  deps: LoaderDeps,
  log: Logger,
  source: RemoteSource,
  range: FetchRange,
  buffer: HostBufferHandle,
  signal: AbortSignal,
): Promise<void> {
  const failures = await fetchRange(deps.addon, source, range, buffer, signal);
  for (const first of failures) {
    signal.throwIfAborted();
    log.warn(
      { file: range.file, chunk: first.chunk.index, expected: first.chunk.sha256, actual: first.actual },
      'chunk failed verification; fetching it again',
    );
    const again = await fetchRange(deps.addon, source, subRange(range, first.chunk), buffer, signal);
    const second = again[0];
    if (second !== undefined) {
      const { index, begin, end, sha256 } = second.chunk;
      throw new WorkerError(
        status.DATA_LOSS,
        `${range.file} chunk ${index} (bytes ${begin}-${end}) failed verification twice: expected sha256 ${sha256}, got ${second.actual}`,
      );
    }
  }
}

/**
 * Runs the plan's ranges with deps.fetchConcurrency requests in flight, in plan order, writing
 * the needed bytes at their place in the buffer and verifying chunks; calls back as each range
 * has every chunk verified (refetches included). On the first failure the
 * others are aborted, and this returns only once none is running (the buffer may be freed after).
 */
async function fetchInto(
  deps: LoaderDeps,
  log: Logger,
  source: RemoteSource,
  plan: FetchPlan,
  buffer: HostBufferHandle,
  signal: AbortSignal,
  onRangeDone: (rangeIndex: number, bytesDone: number) => void,
): Promise<void> {
  const stop = new AbortController();
  const fetchSignal = AbortSignal.any([signal, stop.signal]);
  let next = 0;
  let done = 0;
  let failure: { error: unknown } | null = null;
  const lane = async (): Promise<void> => {
    while (next < plan.ranges.length && !fetchSignal.aborted) {
      const index = next++;
      const range = plan.ranges[index]!;
      try {
        await fetchVerified(deps, log, source, range, buffer, fetchSignal);
      } catch (e) {
        failure ??= { error: e };
        stop.abort();
        return;
      }
      done += range.end - range.begin;
      onRangeDone(index, done);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, deps.fetchConcurrency) }, lane));
  signal.throwIfAborted();
  if (failure !== null) throw (failure as { error: unknown }).error;
}

/**
 * Pure: for each planned tensor (in plan order), the indices of the plan's ranges that fetch
 * its bytes. Ranges of one file never overlap, so these are the ranges of its file that
 * intersect it.
 */
export function tensorRanges(planned: readonly Pick<TensorInfo, 'file' | 'begin' | 'end'>[], plan: Pick<FetchPlan, 'ranges'>): number[][] {
  const byFile = new Map<string, { index: number; begin: number; end: number }[]>();
  plan.ranges.forEach((r, index) => {
    let list = byFile.get(r.file);
    if (list === undefined) byFile.set(r.file, (list = []));
    list.push({ index, begin: r.begin, end: r.end });
  });
  return planned.map((t) => (byFile.get(t.file) ?? []).filter((r) => r.begin < t.end && t.begin < r.end).map((r) => r.index));
}

/**
 * Which planned tensors have landed: every range holding their bytes fetched and verified.
 * whenLanded(i) waits for tensor i, or rejects with the signal's reason once it aborts.
 */
export class LandedTensors {
  private readonly outstanding: number[];
  private readonly tensorsOfRange = new Map<number, number[]>();
  private readonly waiters = new Map<number, () => void>();

  constructor(rangesOfTensor: readonly (readonly number[])[]) {
    this.outstanding = rangesOfTensor.map((ranges) => ranges.length);
    rangesOfTensor.forEach((ranges, tensor) => {
      for (const range of ranges) {
        let list = this.tensorsOfRange.get(range);
        if (list === undefined) this.tensorsOfRange.set(range, (list = []));
        list.push(tensor);
      }
    });
  }

  landed(tensor: number): boolean {
    return this.outstanding[tensor] === 0;
  }

  rangeDone(range: number): void {
    for (const tensor of this.tensorsOfRange.get(range) ?? []) {
      const left = (this.outstanding[tensor] ?? 0) - 1;
      this.outstanding[tensor] = left;
      if (left === 0) this.waiters.get(tensor)?.();
    }
  }

  whenLanded(tensor: number, signal: AbortSignal): Promise<void> {
    if (this.landed(tensor)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason as Error);
        return;
      }
      const onAbort = (): void => {
        this.waiters.delete(tensor);
        reject(signal.reason as Error);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiters.set(tensor, () => {
        signal.removeEventListener('abort', onAbort);
        this.waiters.delete(tensor);
        resolve();
      });
    });
  }
}

/**
 * Binds every planned tensor from the host buffer in plan (layer) order, each as soon as it has
 * landed, yielding to the event loop between them; onStart fires before the first bind.
 */
async function bindAsLanded(
  addon: NativeAddon,
  stage: StageHandle,
  buffer: HostBufferHandle,
  tensors: readonly HostTensor[],
  landed: LandedTensors,
  signal: AbortSignal,
  onStart: () => void,
  onProgress: (bytesDone: number) => void,
): Promise<void> {
  let done = 0;
  for (const [i, t] of tensors.entries()) {
    await landed.whenLanded(i, signal);
    signal.throwIfAborted();
    if (i === 0) onStart();
    addon.bindTensor(stage, { name: t.name, dtype: t.dtype, shape: t.shape, buffer, offset: t.offset });
    done += t.bytes;
    onProgress(done);
    await yieldToLoop();
  }
  if (tensors.length === 0) onStart();
}

/**
 * UnloadStage: drops an instance with its device and host copies. A loading instance has its
 * load aborted; a ready one first has its requests cancelled and waits for them to release
 * their sequences, and for a swap in progress to end. Resolves to the bytes freed.
 */
export async function unloadInstance(deps: Pick<LoaderDeps, 'addon' | 'state' | 'logger'>, instanceId: string): Promise<number> {
  const record = deps.state.instance(instanceId);
  if (record === null || record.unloading) {
    throw new WorkerError(status.NOT_FOUND, `unknown instance ${JSON.stringify(instanceId)}`);
  }
  record.unloading = true;
  deps.state.changed();
  const reason = new WorkerError(status.CANCELLED, `instance ${instanceId} was unloaded`);
  if (record.residency === 'LOADING') {
    record.loadAbort.abort(reason);
    await record.loaded;
    return 0;
  }
  const requests = deps.state.requestsOf(instanceId);
  for (const r of requests) r.abort.abort(reason);
  await Promise.all(requests.map((r) => r.done));
  await swapSettled(record);
  const freed = record.hostBytes + record.deviceBytes;
  releaseNative(deps.addon, record);
  deps.state.removeInstance(record);
  deps.logger.info({ instance: instanceId, freedBytes: freed }, 'instance unloaded');
  return freed;
}
