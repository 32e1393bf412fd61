// The generation loop of one request on one whole-model instance: prefill the prompt in one
// forward, then decode one token per forward until a stop token, max_tokens, a full context
// or cancellation — and always free the sequence's KV cache. It talks to the stage through
// StageRunner, so it runs against a fake in unit tests and against the native addon in the
// daemon. Deciding when to stop is a pure function (finishReasonAfter); a request's decoding
// state (next input, generator state, timings) is a Decoding, which this loop and the
// continuous batcher (batcher.ts) share; the loop only sequences forward → sample → emit.
import type { ForwardInput, NativeAddon, StageHandle } from '../native/addon-types.js';
import {
  randomSeed,
  rngFromSeed,
  sampleToken,
  validateSamplingParams,
  type RandomGenerator,
  type SamplingParams,
} from './sampling.js';

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

/** A StageRunner that can also run one step of several sequences in one call (batcher.ts). */
export interface BatchStageRunner extends StageRunner {
  /**
   * Runs distinct sequences' inputs in one pass; resolves to each input's logits, in input
   * order, as forward would for it alone. A rejection may have advanced some sequences;
   * rerunning an input at its position is safe.
   */
  forwardBatch(inputs: readonly ForwardInput[]): ReturnType<NativeAddon['forwardBatch']>;
}

/** Whether the runner can run a batch in one call. */
export function canBatch(runner: StageRunner): runner is BatchStageRunner {
  return 'forwardBatch' in runner;
}

/**
 * A StageRunner over a native stage. The addon runs forwards of different sequences
 * concurrently (serialising each sequence), so requests share a stage without a lock here;
 * the batcher (batcher.ts) runs their decode steps as one forwardBatch.
 */
export function nativeStageRunner(
  addon: Pick<NativeAddon, 'forward' | 'forwardBatch' | 'releaseSequence'>,
  stage: StageHandle,
): BatchStageRunner {
  return {
    forward: (input) => addon.forward(stage, input),
    forwardBatch: (inputs) => addon.forwardBatch(stage, inputs),
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

/** One sampled token and whether generation ends with it. */
export interface SampledToken {
  id: number;
  /** 0 for the first generated token. */
  index: number;
  /** Why generation ends after this token; null: it goes on. */
  finish: FinishReason | null;
}

/**
 * One validated request's decoding state: the input of its next forward (the whole prompt
 * first, then the last sampled token), its own random generator, and its timings. Created
 * when the request starts running (that ends its queue time).
 */
export class Decoding {
  readonly request: GenerationRequest;
  /** The input of the next forward. */
  next: ForwardInput;
  private rng: RandomGenerator;
  private generated = 0;
  private readonly startedAt = performance.now();
  private firstTokenAt: number | null = null;

  constructor(request: GenerationRequest) {
    this.request = request;
    this.rng = rngFromSeed(request.sampling.seed ?? randomSeed());
    this.next = { sequence: request.sequence, position: 0, tokens: Int32Array.from(request.promptTokenIds), hidden: null };
  }

  /**
   * Samples a token from the logits of `next` (throws SamplingError for unusable logits) and
   * makes it the next input.
   */
  sample(logits: Float32Array): SampledToken {
    const [id, rng] = sampleToken(logits, this.request.sampling, this.rng);
    this.rng = rng;
    this.generated++;
    this.next = {
      sequence: this.request.sequence,
      position: this.request.promptTokenIds.length + this.generated - 1,
      tokens: Int32Array.of(id),
      hidden: null,
    };
    return { id, index: this.generated - 1, finish: finishReasonAfter(this.request, this.generated, id) };
  }

  /** Called once a sampled token was delivered; the first call ends the prefill time. */
  delivered(): void {
    this.firstTokenAt ??= performance.now();
  }

  result(reason: FinishReason): GenerationResult {
    const ended = performance.now();
    return {
      reason,
      promptTokens: this.request.promptTokenIds.length,
      completionTokens: this.generated,
      queueMs: this.startedAt - this.request.arrivedAt,
      prefillMs: (this.firstTokenAt ?? ended) - this.startedAt,
      decodeMs: this.firstTokenAt === null ? 0 : ended - this.firstTokenAt,
    };
  }
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

  const decoding = new Decoding(request);
  let reason: FinishReason = 'CANCELLED';
  try {
    while (!signal.aborted) {
      const logits = await runner.forward(decoding.next);
      if (signal.aborted) break;
      const token = decoding.sample(logits);
      await onToken(token.id, token.index);
      decoding.delivered();
      if (token.finish !== null) {
        reason = token.finish;
        break;
      }
    }
  } finally {
    runner.releaseSequence(request.sequence);
  }
  return decoding.result(reason);
}
