// Generate on the worker: find the instance, turn the proto request into the engine's
// GenerationRequest (proto3 leaves unset numbers at 0, so 0 means "not given" where 0 is not
// a usable value), register the request so Cancel, Drain, Unload and a client disconnect can
// stop it, and hand it to the instance's continuous batcher (engine/batcher.ts), where it
// shares decode steps with the instance's other requests. The mapping is pure; the gRPC
// handler only streams.
import { status } from '@grpc/grpc-js';
import type { GenerateRequest__Output } from '../../protos/generated/paraserve/v1/GenerateRequest.js';
import { ContinuousBatcher, DEFAULT_MAX_BATCH_SIZE } from '../engine/batcher.js';
import { validateGeneration, type GenerationRequest, type GenerationResult, type StageRunner, type TokenSink } from '../engine/generator.js';
import { WorkerError } from './errors.js';
import type { InstanceRecord, WorkerState } from './state.js';

/**
 * Pure: the engine's view of a Generate request. Sampling absent or temperature 0 is greedy;
 * top_p 0 (unset) keeps every token; max_tokens 0 (unset) generates until a stop token or a
 * full context.
 */
export function toGenerationRequest(
  message: GenerateRequest__Output,
  maxContext: number,
  sequence: number,
  arrivedAt: number,
): GenerationRequest {
  const sampling = message.sampling;
  return {
    sequence,
    promptTokenIds: message.promptTokenIds,
    maxTokens: message.maxTokens > 0 ? message.maxTokens : null,
    stopTokenIds: message.stopTokenIds,
    sampling: {
      temperature: sampling?.temperature ?? 0,
      topP: sampling === null || sampling.topP === 0 ? 1 : sampling.topP,
      seed: sampling?.seed ?? null,
    },
    maxContext,
    arrivedAt,
  };
}

/** The instance a request may run on, or the status explaining why it cannot. */
export function servingInstance(state: WorkerState, instanceId: string): InstanceRecord {
  const record = state.instance(instanceId);
  if (record === null) throw new WorkerError(status.NOT_FOUND, `unknown instance ${JSON.stringify(instanceId)}`);
  if (record.unloading) throw new WorkerError(status.NOT_FOUND, `instance ${instanceId} is being unloaded`);
  if (record.residency !== 'ON_DEVICE' || record.runner === null) {
    throw new WorkerError(status.FAILED_PRECONDITION, `instance ${instanceId} is not ready (${record.residency.toLowerCase()})`);
  }
  if (!record.stage.hasEmbeddings || !record.stage.hasHead) {
    throw new WorkerError(
      status.FAILED_PRECONDITION,
      `instance ${instanceId} holds layers [${record.stage.layerStart}, ${record.stage.layerEnd}) only; a pipeline is served by its stage 0 (pipeline.ts)`,
    );
  }
  return record;
}

/**
 * One continuous batcher per stage runner, so the requests of an instance share decode steps;
 * a runner replaced by a reload gets a fresh batcher, and a dropped one takes its batcher along.
 */
const batchers = new WeakMap<StageRunner, ContinuousBatcher>();

function batcherOf(runner: StageRunner): ContinuousBatcher {
  let batcher = batchers.get(runner);
  if (batcher === undefined) {
    batcher = new ContinuousBatcher(runner, { maxBatchSize: DEFAULT_MAX_BATCH_SIZE });
    batchers.set(runner, batcher);
  }
  return batcher;
}

/**
 * Runs one Generate request to its end: tokens go to onToken, the result carries the finish
 * reason and timings. `caller` aborts it (client disconnect). Rejects with a WorkerError (or
 * an engine/native error toStatus maps) before or during generation.
 */
export function runGenerate(
  state: WorkerState,
  message: GenerateRequest__Output,
  onToken: TokenSink,
  caller: AbortSignal,
  arrivedAt: number,
): Promise<GenerationResult> {
  state.assertAccepting();
  const record = servingInstance(state, message.instanceId);
  const request = toGenerationRequest(message, record.maxContext, record.nextSequence, arrivedAt);
  const invalid = validateGeneration(request);
  if (invalid !== null) throw new WorkerError(status.INVALID_ARGUMENT, invalid);
  const batcher = batcherOf(record.runner!);
  const requestId = message.requestId !== '' ? message.requestId : state.anonymousRequestId();
  const result = state.trackRequest(requestId, record, caller, (signal) => batcher.generate(request, onToken, signal));
  record.nextSequence++;
  return result;
}
