// The generation loop of one request on one whole-model instance: prefill the prompt in one
// forward, then decode one token per forward until a stop token, max_tokens, a full context
// or cancellation — and always free the sequence's KV cache. It talks to the stage through
// StageRunner, so it runs against a fake in unit tests and against the native addon in the
// daemon. Deciding when to stop is a pure function (finishReasonAfter); the loop only
// sequences forward → sample → emit.
import type { ForwardInput, NativeAddon, StageHandle } from '../native/addon-types.js';
import { randomSeed, rngFromSeed, sampleToken, validateSamplingParams, type SamplingParams } from './sampling.js';

/**
 * What the loop needs from a stage that holds the whole model (embeddings and head).
 * Typed from NativeAddon's forward/releaseSequence with the stage handle bound.
 */
export interface StageRunner {
  /**
   * Runs the stage over input.tokens at input.position for input.sequence; resolves to the
   * logits of the last token (vocabSize floats). The loop awaits each call before the next
   * one of the same sequence.
   */
  forward(input: ForwardInput): ReturnType<NativeAddon['forward']>;
  /** Frees a sequence's KV cache; called once per generation, after its last forward settled. */
  releaseSequence(sequence: number): ReturnType<NativeAddon['releaseSequence']>;
}

/**
 * A StageRunner over a native stage. The addon runs forwards of different sequences
 * concurrently (serialising each sequence), so requests share a stage without a lock here;
 * running them in one batch is continuous batching, a later issue.
 */
export function nativeStageRunner(
  addon: Pick<NativeAddon, 'forward' | 'releaseSequence'>,
  stage: StageHandle,
): StageRunner {
  return {
    forward: (input) => addon.forward(stage, input),
    releaseSequence: (sequence) => addon.releaseSequence(stage, sequence),
  };
}

/** One request as the loop sees it; the daemon builds it from a GenerateRequest. */
export interface GenerationRequest {
  /** Sequence id on the stage, unique among the instance's live requests. */
  sequence: number;
  promptTokenIds: readonly number[];
  /** Most tokens to generate; null: until a stop token or a full context. */
  maxTokens: number | null;
  /** Generation ends after sampling one of these (the stop token is emitted). */
  stopTokenIds: readonly number[];
  sampling: SamplingParams;
  /** KV cache capacity of the sequence in tokens: prompt + generated never exceed it. */
  maxContext: number;
  /** performance.now() when the request reached the worker, for queueMs. */
  arrivedAt: number;
}

export type FinishReason = 'STOP' | 'LENGTH' | 'CANCELLED';

/** How a generation ended; mirrors FinishEvent of the proto. */
export interface GenerationResult {
  reason: FinishReason;
  promptTokens: number;
  completionTokens: number;
  /** From arrival to the start of prefill. */
  queueMs: number;
  /** Prefill forward and the first token's sampling and emission. */
  prefillMs: number;
  /** Everything after the first token. */
  decodeMs: number;
}

/** Receives each sampled token in order; the loop waits for a returned promise (backpressure). */
export type TokenSink = (id: number, index: number) => void | Promise<void>;

/** A request the loop cannot run (empty prompt, no room in the context, bad parameters). */
export class GenerationError extends Error {
  override name = 'GenerationError';
}

/** Why the request cannot run, or null when it can. */
export function validateGeneration(request: GenerationRequest): string | null {
  const prompt = request.promptTokenIds;
  if (prompt.length === 0) return 'prompt is empty';
  if (!prompt.every((id) => Number.isInteger(id) && id >= 0 && id <= 0x7fffffff)) {
    return 'prompt holds a token id that is not a non-negative 32-bit integer';
  }
  if (prompt.length >= request.maxContext) {
    return `prompt of ${prompt.length} tokens leaves no room in a context of ${request.maxContext} tokens`;
  }
  if (request.maxTokens !== null && (!Number.isInteger(request.maxTokens) || request.maxTokens < 1)) {
    return `max_tokens must be a positive integer, got ${request.maxTokens}`;
  }
  return validateSamplingParams(request.sampling);
}

/**
 * Whether generation ends after `generated` tokens, the last being `lastToken`.
 * A stop token wins over the length limits it coincides with.
 */
export function finishReasonAfter(
  request: Pick<GenerationRequest, 'promptTokenIds' | 'maxTokens' | 'stopTokenIds' | 'maxContext'>,
  generated: number,
  lastToken: number,
): FinishReason | null {
  if (request.stopTokenIds.includes(lastToken)) return 'STOP';
  if (request.maxTokens !== null && generated >= request.maxTokens) return 'LENGTH';
  if (request.promptTokenIds.length + generated >= request.maxContext) return 'LENGTH';
  return null;
}

/**
 * Runs one request to its end. Resolves with reason CANCELLED when the signal aborts (checked
 * between forwards: a forward in flight completes first). Rejects with GenerationError for a
 * request validateGeneration refuses, or with the runner's or the sink's error; the sequence
 * is released in every case once anything ran.
 */
export async function generate(
  runner: StageRunner,
  request: GenerationRequest,
  onToken: TokenSink,
  signal: AbortSignal,
): Promise<GenerationResult> {
  const invalid = validateGeneration(request);
  if (invalid !== null) throw new GenerationError(invalid);

  const prompt = request.promptTokenIds;
  const started = performance.now();
  const queueMs = started - request.arrivedAt;
  let rng = rngFromSeed(request.sampling.seed ?? randomSeed());
  let generated = 0;
  let prefillEnd: number | null = null;
  let reason: FinishReason = 'CANCELLED';

  try {
    let input: ForwardInput = { sequence: request.sequence, position: 0, tokens: Int32Array.from(prompt), hidden: null };
    while (!signal.aborted) {
      const logits = await runner.forward(input);
      if (signal.aborted) break;
      const [token, nextRng] = sampleToken(logits, request.sampling, rng);
      rng = nextRng;
      generated++;
      await onToken(token, generated - 1);
      prefillEnd ??= performance.now();
      const finish = finishReasonAfter(request, generated, token);
      if (finish !== null) {
        reason = finish;
        break;
      }
      input = {
        sequence: request.sequence,
        position: prompt.length + generated - 1,
        tokens: Int32Array.of(token),
        hidden: null,
      };
    }
  } finally {
    runner.releaseSequence(request.sequence);
  }

  const ended = performance.now();
  return {
    reason,
    promptTokens: prompt.length,
    completionTokens: generated,
    queueMs,
    prefillMs: (prefillEnd ?? ended) - started,
    decodeMs: prefillEnd === null ? 0 : ended - prefillEnd,
  };
}
