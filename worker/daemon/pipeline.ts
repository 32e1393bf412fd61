// Pipeline execution: a model split into k stages on k workers, one ForwardActivations stream
// per request and per hop carrying each step downstream. The hidden states go over the hop's
// device link (NCCL, links.ts) where both stages opened it — the message then carries only
// their tag — and in the message itself otherwise (CPU backend, CI, a link that did not open).
// Design (the "one sampling code path"):
//   - stage 0 takes Generate from the gateway, embeds and runs its layers, and sends the hidden
//     states (float32 little-endian, or over the link) downstream; the first message carries
//     the request;
//   - middle stages run their layers and pass the hidden states on, and relay replies back up;
//   - the last stage runs the engine's own generate() loop (worker/engine/generator.ts) with a
//     StageRunner whose forward() waits for the upstream hidden states of that step and runs
//     layers + head: sampling, seeding and stop rules are exactly the single-worker ones. Each
//     sampled token goes back up the chain as `next_token` (with `finished` from the same pure
//     finishReasonAfter), and stage 0 emits it and feeds it in as the next step.
// Every stage tracks the request in WorkerState (Cancel by id, drain, unload reach it) and
// releases the request's KV cache sequence when its stream ends for any reason. A link that
// breaks fails the request upstream with the link's status (UNAVAILABLE when a peer is gone).
// All stages of one pipeline share the gateway's instance id; each worker holds one of them.
import os from 'node:os';
import * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { Activation, Activation__Output } from '../../protos/generated/paraserve/v1/Activation.js';
import type { GenerateRequest, GenerateRequest__Output } from '../../protos/generated/paraserve/v1/GenerateRequest.js';
import type { StageRange__Output } from '../../protos/generated/paraserve/v1/StageRange.js';
import type { WorkerClient } from '../../protos/generated/paraserve/v1/Worker.js';
import { loadParaserveProto } from '../../protos/load.js';
import {
  finishReasonAfter,
  generate,
  validateGeneration,
  type FinishReason,
  type GenerationRequest,
  type GenerationResult,
  type StageRunner,
  type TokenSink,
} from '../engine/generator.js';
import type { ForwardInput, LinkInput, NativeAddon } from '../native/addon-types.js';
import { toStatus, WorkerError } from './errors.js';
import type { LinkTags } from './links.js';
import { toGenerationRequest } from './requests.js';
import type { InstanceRecord, WorkerState } from './state.js';

/** Largest activation message: the hidden states of a long prefill (tokens x hidden x 4 bytes). */
export const MAX_ACTIVATION_MESSAGE_BYTES = 256 * 1024 * 1024;

/** Channel settings of a link to the next stage: a vanished peer fails the link within seconds. */
const LINK_OPTIONS: grpc.ChannelOptions = {
  'grpc.keepalive_time_ms': 2_000,
  'grpc.keepalive_timeout_ms': 2_000,
  'grpc.max_receive_message_length': MAX_ACTIVATION_MESSAGE_BYTES,
  'grpc.max_send_message_length': MAX_ACTIVATION_MESSAGE_BYTES,
};

/** How long a loading stage keeps trying to connect to the next stage's worker in the background. */
const NEXT_STAGE_CONNECT_MS = 10_000;

/**
 * A client of the next stage's worker that starts connecting at once, during the stage's load,
 * and holds the connection: each request opens its ForwardActivations stream on a client of its
 * own (openLink), and grpc-js gives clients of one address and settings the same connection, so
 * the first request does not wait for TCP and HTTP/2 set-up at every hop (about 10 ms a hop at
 * CPU scale). Closed with the stage's device copy (closeStageLinks).
 */
export function connectNextStage(address: string): grpc.Client {
  const { Worker } = loadParaserveProto().paraserve.v1;
  const client = new Worker(address, grpc.credentials.createInsecure(), LINK_OPTIONS);
  client.waitForReady(Date.now() + NEXT_STAGE_CONNECT_MS, () => undefined);
  return client;
}

/** Pure: the next stage's address among LoadStage's peers; null for a whole model or the last stage. */
export function nextStageAddress(stage: StageRange__Output, peers: readonly string[]): string | null {
  if (!isPartialStage(stage) || stage.stageIndex + 1 >= stage.stageCount) return null;
  return peers[stage.stageIndex + 1] || null;
}

export interface PipelineDeps {
  addon: Pick<NativeAddon, 'forwardToLink'>;
  state: WorkerState;
  logger: Logger;
  /** Tags of the activations this worker sends over device links. */
  linkTags: LinkTags;
  /** Peer addresses of each pipeline instance, by stage index (from LoadStage). */
  peers: PipelinePeers;
}

/** The peers LoadStage named for each partial-stage instance of this worker. */
export class PipelinePeers {
  private readonly byInstance = new Map<string, readonly string[]>();

  set(instanceId: string, peers: readonly string[]): void {
    this.byInstance.set(instanceId, [...peers]);
  }

  get(instanceId: string): readonly string[] | null {
    return this.byInstance.get(instanceId) ?? null;
  }

  delete(instanceId: string): void {
    this.byInstance.delete(instanceId);
  }
}

/** Whether the range is a part of the model (not both embeddings and head). */
export function isPartialStage(range: Pick<StageRange__Output, 'hasEmbeddings' | 'hasHead'>): boolean {
  return !(range.hasEmbeddings && range.hasHead);
}

/**
 * Pure: why LoadStage's peers do not fit its stage, or null. A partial stage needs
 * stage_count > 1, one address per stage, and the next stage's address unless it is last.
 */
export function peersProblem(range: StageRange__Output | null, peers: readonly string[]): string | null {
  if (range === null || !isPartialStage(range)) return null;
  if (range.stageCount < 2) return `a partial stage needs stage_count >= 2, got ${range.stageCount}`;
  if (peers.length !== range.stageCount) {
    return `peers must list the ${range.stageCount} stages' addresses by stage index, got ${peers.length}`;
  }
  if (range.stageIndex + 1 < range.stageCount && (peers[range.stageIndex + 1] ?? '') === '') {
    return `peers[${range.stageIndex + 1}] (the next stage) is empty`;
  }
  return null;
}

/** Float32 hidden states as the proto's little-endian bytes. */
export function encodeHidden(values: Float32Array): Buffer {
  if (os.endianness() === 'LE') return Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  const out = Buffer.alloc(values.length * 4);
  for (let i = 0; i < values.length; i++) out.writeFloatLE(values[i]!, i * 4);
  return out;
}

/** The proto's little-endian float32 bytes as a fresh Float32Array; WorkerError if malformed. */
export function decodeHidden(bytes: Uint8Array, tokenCount: number): Float32Array {
  if (tokenCount < 1 || bytes.byteLength === 0 || bytes.byteLength % (4 * tokenCount) !== 0) {
    throw new WorkerError(status.INVALID_ARGUMENT, `hidden holds ${bytes.byteLength} bytes, not token_count ${tokenCount} rows of float32`);
  }
  const out = new Float32Array(bytes.byteLength / 4);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true);
  return out;
}

/** A step's input hidden states: in the message, or on this stage's link under the message's tag. */
function stepHidden(record: InstanceRecord, m: Activation__Output): Float32Array | LinkInput {
  if (m.linkTag === 0) return decodeHidden(m.hidden, m.tokenCount);
  const link = record.links.fromPrevious;
  if (link === null) {
    throw new WorkerError(status.FAILED_PRECONDITION, `instance ${record.id} (stage ${record.stage.stageIndex}) got an activation over a device link it does not have`);
  }
  return { link, tag: m.linkTag, tokenCount: m.tokenCount };
}

/**
 * Runs a stage that is not the last on one step and hands its output on: over the link to the
 * next stage where there is one (queued before this resolves, so the message that names its
 * tag never overtakes it), else as the message's bytes.
 */
async function forwardDownstream(deps: PipelineDeps, record: InstanceRecord, input: ForwardInput): Promise<Pick<Activation, 'hidden' | 'linkTag'>> {
  const link = record.links.toNext;
  if (link === null) return { hidden: encodeHidden(await record.runner!.forward(input)) };
  const tag = deps.linkTags.next();
  await deps.addon.forwardToLink(record.nativeStage!, input, { link, tag });
  return { linkTag: tag };
}

/** Messages of a stream, awaited one at a time; null once it ended or the signal aborted. */
class Inbox<T> {
  private readonly items: T[] = [];
  private waiter: ((item: T | null) => void) | null = null;
  private ended = false;

  push(item: T): void {
    if (this.waiter !== null) {
      const wake = this.waiter;
      this.waiter = null;
      wake(item);
    } else this.items.push(item);
  }

  end(): void {
    this.ended = true;
    const wake = this.waiter;
    this.waiter = null;
    wake?.(null);
  }

  next(signal: AbortSignal): Promise<T | null> {
    const item = this.items.shift();
    if (item !== undefined) return Promise.resolve(item);
    if (this.ended || signal.aborted) return Promise.resolve(null);
    return new Promise((resolve) => {
      const onAbort = (): void => {
        this.waiter = null;
        resolve(null);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiter = (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      };
    });
  }
}

/**
 * A ForwardActivations stream to the next stage. Replies arrive in `replies`; when the stream
 * ends, `outcome` settles: null after a clean end, else the failure as a WorkerError that
 * names the peer. close() ends it from this side (idempotent).
 */
interface Link {
  send(message: Activation): void;
  replies: Inbox<Activation__Output>;
  outcome: Promise<WorkerError | null>;
  close(): void;
}

function openLink(address: string, stageIndex: number): Link {
  const { Worker } = loadParaserveProto().paraserve.v1;
  const client: WorkerClient = new Worker(address, grpc.credentials.createInsecure(), LINK_OPTIONS);
  const call = client.ForwardActivations();
  const replies = new Inbox<Activation__Output>();
  let closed = false;
  const outcome = new Promise<WorkerError | null>((resolve) => {
    call.on('data', (m: Activation__Output) => replies.push(m));
    call.on('error', () => undefined);
    call.on('status', (s: grpc.StatusObject) => {
      replies.end();
      client.close();
      if (s.code === status.OK) resolve(null);
      else {
        const code = s.code === status.CANCELLED && !closed ? status.UNAVAILABLE : s.code;
        resolve(new WorkerError(code, `pipeline stage ${stageIndex} at ${address}: ${s.details || 'stream failed'}`));
      }
    });
  });
  return {
    send: (message) => {
      if (!closed) call.write(message);
    },
    replies,
    outcome,
    close: () => {
      if (closed) return;
      closed = true;
      call.end();
      call.cancel();
    },
  };
}

/** The record of a pipeline stage that serves requests now, or the status saying why not. */
function servingStage(state: WorkerState, instanceId: string): InstanceRecord {
  const record = state.instance(instanceId);
  if (record === null || record.unloading) throw new WorkerError(status.NOT_FOUND, `unknown instance ${JSON.stringify(instanceId)}`);
  if (record.residency !== 'ON_DEVICE' || record.runner === null) {
    throw new WorkerError(status.FAILED_PRECONDITION, `instance ${instanceId} is not ready (${record.residency.toLowerCase()})`);
  }
  return record;
}

function nextPeer(deps: PipelineDeps, record: InstanceRecord): string {
  const address = nextStageAddress(record.stage, deps.peers.get(record.id) ?? []);
  if (address === null) {
    throw new WorkerError(status.FAILED_PRECONDITION, `instance ${record.id} (stage ${record.stage.stageIndex}) has no next stage to send to`);
  }
  return address;
}

function requestMessage(message: GenerateRequest__Output): GenerateRequest {
  const sampling = message.sampling;
  return {
    requestId: message.requestId,
    instanceId: message.instanceId,
    promptTokenIds: message.promptTokenIds,
    maxTokens: message.maxTokens,
    stopTokenIds: message.stopTokenIds,
    sampling:
      sampling === null
        ? null
        : { temperature: sampling.temperature, topP: sampling.topP, ...(sampling.seed === undefined ? {} : { seed: sampling.seed }) },
  };
}

/**
 * Generate on a partial-stage instance, which must be stage 0 of a pipeline: validates like the
 * single-worker path, registers the request, and drives the chain until the last stage says
 * finished, the caller aborts, or a link fails (rejecting with its status). The result's
 * timings are stage 0's.
 */
export function runPipelineGenerate(
  deps: PipelineDeps,
  message: GenerateRequest__Output,
  onToken: TokenSink,
  caller: AbortSignal,
  arrivedAt: number,
): Promise<GenerationResult> {
  deps.state.assertAccepting();
  const record = servingStage(deps.state, message.instanceId);
  if (!record.stage.hasEmbeddings) {
    throw new WorkerError(
      status.FAILED_PRECONDITION,
      `instance ${record.id} is stage ${record.stage.stageIndex} of a pipeline; Generate goes to stage 0`,
    );
  }
  const request = toGenerationRequest(message, record.maxContext, record.nextSequence, arrivedAt);
  const invalid = validateGeneration(request);
  if (invalid !== null) throw new WorkerError(status.INVALID_ARGUMENT, invalid);
  const address = nextPeer(deps, record);
  // Anonymous ids are per worker: qualified, they cannot collide with the peers' own.
  const requestId = message.requestId !== '' ? message.requestId : `${deps.state.workerId}/${deps.state.anonymousRequestId()}`;
  const forwarded = { ...requestMessage(message), requestId };
  const result = deps.state.trackRequest(requestId, record, caller, (signal) =>
    driveFirstStage(deps, record, request, forwarded, address, onToken, signal),
  );
  record.nextSequence++;
  return result;
}

async function driveFirstStage(
  deps: PipelineDeps,
  record: InstanceRecord,
  request: GenerationRequest,
  forwarded: GenerateRequest,
  address: string,
  onToken: TokenSink,
  signal: AbortSignal,
): Promise<GenerationResult> {
  const runner = record.runner!;
  const prompt = request.promptTokenIds;
  const started = performance.now();
  const link = openLink(address, record.stage.stageIndex + 1);
  let generated = 0;
  let prefillEnd: number | null = null;
  let reason: FinishReason = 'CANCELLED';
  try {
    let tokens = Int32Array.from(prompt);
    let position = 0;
    while (!signal.aborted) {
      const output = await forwardDownstream(deps, record, { sequence: request.sequence, position, tokens, hidden: null });
      if (signal.aborted) break;
      link.send({
        requestId: forwarded.requestId ?? '',
        position,
        tokenCount: tokens.length,
        ...output,
        ...(position === 0 ? { request: forwarded } : {}),
      });
      const reply = await link.replies.next(signal);
      if (signal.aborted) break;
      if (reply === null) {
        throw (await link.outcome) ?? new WorkerError(status.UNAVAILABLE, `pipeline stage ${record.stage.stageIndex + 1} at ${address} ended the stream before the request finished`);
      }
      const token = reply.nextToken;
      generated++;
      await onToken(token, generated - 1);
      prefillEnd ??= performance.now();
      const finish = finishReasonAfter(request, generated, token);
      if (finish !== null || reply.finished) {
        reason = finish ?? 'STOP';
        break;
      }
      tokens = Int32Array.of(token);
      position = prompt.length + generated - 1;
    }
  } finally {
    link.close();
    runner.releaseSequence(request.sequence);
  }
  const ended = performance.now();
  return {
    reason,
    promptTokens: prompt.length,
    completionTokens: generated,
    queueMs: started - request.arrivedAt,
    prefillMs: (prefillEnd ?? ended) - started,
    decodeMs: prefillEnd === null ? 0 : ended - prefillEnd,
  };
}

/** The server side of a ForwardActivations call: a request arriving at stage i > 0. */
export function serveActivations(deps: PipelineDeps, call: grpc.ServerDuplexStream<Activation__Output, Activation>): void {
  const inbox = new Inbox<Activation__Output>();
  const caller = new AbortController();
  const upstreamGone = (): void => {
    inbox.end();
    caller.abort(new WorkerError(status.CANCELLED, 'the previous stage closed the stream'));
  };
  call.on('data', (m: Activation__Output) => inbox.push(m));
  call.on('end', () => inbox.end());
  call.on('cancelled', upstreamGone);
  call.on('error', upstreamGone);

  const fail = (error: unknown): void => {
    const report = toStatus(error);
    deps.logger.debug({ code: report.code, details: report.details }, 'activation stream failed');
    if (!call.cancelled) call.emit('error', { code: report.code, details: report.details });
  };

  void (async () => {
    const first = await inbox.next(caller.signal);
    if (first === null) {
      if (!call.cancelled) call.end();
      return;
    }
    const message = first.request;
    if (message === null) throw new WorkerError(status.INVALID_ARGUMENT, 'the first activation of a request must carry the request');
    deps.state.assertAccepting();
    const record = servingStage(deps.state, message.instanceId);
    if (record.stage.hasEmbeddings) {
      throw new WorkerError(status.FAILED_PRECONDITION, `instance ${record.id} is stage 0 of its pipeline; send it Generate instead`);
    }
    const requestId = message.requestId !== '' ? message.requestId : deps.state.anonymousRequestId();
    const sequence = record.nextSequence++;
    const run = record.stage.hasHead
      ? (signal: AbortSignal) => runLastStage(record, message, sequence, first, inbox, call, signal)
      : (signal: AbortSignal) => runMiddleStage(deps, record, sequence, first, inbox, call, signal);
    await deps.state.trackRequest(requestId, record, caller.signal, run);
  })().then(
    () => undefined,
    (e: unknown) => fail(e),
  );
}

/**
 * Why a stage's request stopped (drain, unload, Cancel by id), to report upstream while the
 * previous stage still listens.
 */
function abortReason(signal: AbortSignal): WorkerError {
  const reason: unknown = signal.reason;
  return reason instanceof WorkerError ? reason : new WorkerError(status.CANCELLED, 'the request was cancelled');
}

/** Reads the next step's activation from upstream; rejects when the stream ended. */
async function nextActivation(inbox: Inbox<Activation__Output>, signal: AbortSignal, position: number): Promise<Activation__Output> {
  const m = await inbox.next(signal);
  if (m === null) throw signal.aborted ? abortReason(signal) : new WorkerError(status.CANCELLED, 'the previous stage ended the stream');
  if (m.position !== position) {
    throw new WorkerError(status.INVALID_ARGUMENT, `activation for position ${m.position} arrived where position ${position} was next`);
  }
  return m;
}

/** The last stage: the engine's generate() with a runner fed from upstream; tokens go back up. */
async function runLastStage(
  record: InstanceRecord,
  message: GenerateRequest__Output,
  sequence: number,
  first: Activation__Output,
  inbox: Inbox<Activation__Output>,
  call: grpc.ServerDuplexStream<Activation__Output, Activation>,
  signal: AbortSignal,
): Promise<void> {
  const stage = record.runner!;
  const request = toGenerationRequest(message, record.maxContext, sequence, performance.now());
  let pending: Activation__Output | null = first;
  const runner: StageRunner = {
    forward: async (input) => {
      let step: Activation__Output;
      if (pending !== null) {
        if (pending.position !== input.position) {
          throw new WorkerError(status.INVALID_ARGUMENT, `the first activation is for position ${pending.position}, not ${input.position}`);
        }
        step = pending;
        pending = null;
      } else {
        step = await nextActivation(inbox, signal, input.position);
      }
      return stage.forward({ sequence: input.sequence, position: step.position, tokens: null, hidden: stepHidden(record, step) });
    },
    releaseSequence: (s) => stage.releaseSequence(s),
  };
  const onToken: TokenSink = (id, index) => {
    if (call.cancelled) return;
    call.write({
      requestId: message.requestId,
      position: request.promptTokenIds.length + index,
      tokenCount: 1,
      nextToken: id,
      finished: finishReasonAfter(request, index + 1, id) !== null,
    });
  };
  const result = await generate(runner, request, onToken, signal);
  if (result.reason === 'CANCELLED') {
    if (!call.cancelled) throw abortReason(signal);
    return;
  }
  if (!call.cancelled) call.end();
}

/** A middle stage: runs its layers on each upstream step, relays replies from downstream. */
async function runMiddleStage(
  deps: PipelineDeps,
  record: InstanceRecord,
  sequence: number,
  first: Activation__Output,
  inbox: Inbox<Activation__Output>,
  call: grpc.ServerDuplexStream<Activation__Output, Activation>,
  signal: AbortSignal,
): Promise<void> {
  const stage = record.runner!;
  const link = openLink(nextPeer(deps, record), record.stage.stageIndex + 1);
  const local = new AbortController();
  const stop = AbortSignal.any([signal, local.signal]);
  // Replies are relayed until the link's stream ends (its inbox ends on the final status).
  const relayed = (async () => {
    const never = new AbortController().signal;
    for (;;) {
      const reply = await link.replies.next(never);
      if (reply === null) return;
      if (!call.cancelled) call.write(reply);
    }
  })();
  void link.outcome.then((failure) => local.abort(failure ?? new WorkerError(status.OK, 'the next stage finished the request')));
  try {
    let message: Activation__Output | null = first;
    while (message !== null && !stop.aborted) {
      const input = { sequence, position: message.position, tokens: null, hidden: stepHidden(record, message) };
      const output = await forwardDownstream(deps, record, input);
      if (stop.aborted) break;
      link.send({
        requestId: message.requestId,
        position: message.position,
        tokenCount: message.tokenCount,
        ...output,
        ...(message.request === null ? {} : { request: requestMessage(message.request) }),
      });
      message = await inbox.next(stop);
    }
  } finally {
    link.close();
    stage.releaseSequence(sequence);
  }
  await relayed;
  const downstream = await link.outcome;
  if (signal.aborted) {
    if (!call.cancelled) throw abortReason(signal);
    return;
  }
  if (downstream !== null) throw downstream;
  if (!call.cancelled) call.end();
}
