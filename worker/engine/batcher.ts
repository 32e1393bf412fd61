// Continuous batching on one whole-model instance: concurrent requests share decode steps.
// One loop per instance runs steps; each step gathers every request ready for its next
// forward, runs them as one forwardBatch (each weight matrix read once for the whole batch),
// then samples each request's token with its own settings and generator (Decoding,
// generator.ts) and streams it. A request that arrives while a step runs joins at the next
// step, without waiting for the running ones to finish; one that finishes, fails or is
// cancelled leaves the batch at a step boundary and its sequence is released.
//
// Prefill choice: a newcomer's whole prompt is its input in the next step, batched with the
// running requests' single decode tokens (the native pass takes inputs of any lengths). This
// keeps one call per step and lets a prompt start at once, at the cost of one slower step
// for the others while a long prompt runs (vLLM chunks prompts to bound that; not done here).
//
// A request whose token sink pushes back (returns a promise) skips steps until it resolves,
// so one slow client never stalls the batch. When a batched call fails, each of its inputs is
// rerun alone, so a bad input fails only its own request.
import type { ForwardInput } from '../native/addon-types.js';
import {
  canBatch,
  Decoding,
  GenerationError,
  validateGeneration,
  type FinishReason,
  type GenerationRequest,
  type GenerationResult,
  type SampledToken,
  type StageRunner,
  type TokenSink,
} from './generator.js';

export interface BatcherOptions {
  /** Most requests in one step; later arrivals wait for a place. */
  maxBatchSize: number;
}

/** Requests per step when the caller has no reason to pick another size. */
export const DEFAULT_MAX_BATCH_SIZE = 16;

/** A request in the batcher, from arrival to its settled result. */
interface Member {
  request: GenerationRequest;
  onToken: TokenSink;
  signal: AbortSignal;
  /** Set once the request entered the batch (its prefill starts at the next step). */
  decoding: Decoding | null;
  /** true while a delivered token's sink promise is pending: the member skips steps. */
  delivering: boolean;
  resolve: (result: GenerationResult) => void;
  reject: (error: unknown) => void;
}

/**
 * Runs the generations of one stage instance in shared steps. Runners with forwardBatch run a
 * step in one call; others run its inputs as concurrent forwards.
 */
export class ContinuousBatcher {
  private readonly runner: StageRunner;
  private readonly maxBatchSize: number;
  /** Arrived, not in the batch yet (first come, first admitted). */
  private readonly waiting: Member[] = [];
  /** In the batch, in admission order. */
  private readonly running: Member[] = [];
  private looping = false;
  private wake: (() => void) | null = null;

  constructor(runner: StageRunner, options: BatcherOptions) {
    if (!Number.isInteger(options.maxBatchSize) || options.maxBatchSize < 1) {
      throw new RangeError(`maxBatchSize must be a positive integer, got ${options.maxBatchSize}`);
    }
    this.runner = runner;
    this.maxBatchSize = options.maxBatchSize;
  }

  /** Requests in the batch or waiting for a place. */
  get size(): number {
    return this.running.length + this.waiting.length;
  }

  /**
   * The contract of generate() (generator.ts): resolves with the finish reason and timings
   * (CANCELLED once the signal aborts, at the next step boundary), rejects with
   * GenerationError for an invalid request or with the runner's or sink's error; the sequence
   * is released in every case. queueMs includes the wait for a place in the batch.
   */
  generate(request: GenerationRequest, onToken: TokenSink, signal: AbortSignal): Promise<GenerationResult> {
    const invalid = validateGeneration(request);
    if (invalid !== null) return Promise.reject(new GenerationError(invalid));
    return new Promise<GenerationResult>((resolve, reject) => {
      this.waiting.push({ request, onToken, signal, decoding: null, delivering: false, resolve, reject });
      signal.addEventListener('abort', () => this.wakeUp(), { once: true });
      this.wakeUp();
      if (!this.looping) {
        this.looping = true;
        // After the current task's other arrivals, so requests arriving together share step 1.
        queueMicrotask(() => void this.loop());
      }
    });
  }

  /** Schedule → execute → update, until no request is left. Never rejects. */
  private async loop(): Promise<void> {
    while (this.size > 0) {
      this.dropCancelled();
      this.admit();
      const ready = this.running.filter((m) => !m.delivering);
      if (ready.length === 0) {
        if (this.size > 0) await this.idle();
        continue;
      }
      const outputs = await this.execute(ready.map((m) => m.decoding!.next));
      ready.forEach((member, i) => this.update(member, outputs[i]!));
    }
    this.looping = false;
  }

  private dropCancelled(): void {
    for (const member of [...this.waiting, ...this.running]) {
      if (member.signal.aborted) this.finish(member, 'CANCELLED');
    }
  }

  private admit(): void {
    while (this.running.length < this.maxBatchSize && this.waiting.length > 0) {
      const member = this.waiting.shift()!;
      member.decoding = new Decoding(member.request);
      this.running.push(member);
    }
  }

  /** Each input's logits or the error of running it; never rejects. */
  private async execute(inputs: ForwardInput[]): Promise<PromiseSettledResult<Float32Array>[]> {
    const alone = (): Promise<PromiseSettledResult<Float32Array>[]> =>
      Promise.allSettled(inputs.map((input) => Promise.resolve().then(() => this.runner.forward(input))));
    if (!canBatch(this.runner)) return alone();
    try {
      const outputs = await this.runner.forwardBatch(inputs);
      return outputs.map((value) => ({ status: 'fulfilled', value }));
    } catch (error) {
      if (inputs.length === 1) return [{ status: 'rejected', reason: error }];
      return alone();
    }
  }

  /** Samples and delivers the member's token from its step output. */
  private update(member: Member, output: PromiseSettledResult<Float32Array>): void {
    if (member.signal.aborted) return;
    if (output.status === 'rejected') {
      this.fail(member, output.reason);
      return;
    }
    let token: SampledToken;
    let delivery: void | Promise<void>;
    try {
      token = member.decoding!.sample(output.value);
      delivery = member.onToken(token.id, token.index);
    } catch (error) {
      this.fail(member, error);
      return;
    }
    if (!(delivery instanceof Promise)) {
      this.delivered(member, token);
      return;
    }
    member.delivering = true;
    delivery.then(
      () => {
        member.delivering = false;
        this.delivered(member, token);
        this.wakeUp();
      },
      (error: unknown) => {
        member.delivering = false;
        this.fail(member, error);
        this.wakeUp();
      },
    );
  }

  private delivered(member: Member, token: SampledToken): void {
    member.decoding!.delivered();
    if (token.finish !== null) this.finish(member, token.finish);
  }

  private finish(member: Member, reason: FinishReason): void {
    this.leave(member, () => {
      member.decoding ??= new Decoding(member.request);
      member.resolve(member.decoding.result(reason));
    });
  }

  private fail(member: Member, error: unknown): void {
    this.leave(member, () => member.reject(error));
  }

  /**
   * Takes the member out of the batcher, releases its sequence and settles it (with the
   * release's error if that throws); does nothing for a member that already left.
   */
  private leave(member: Member, settle: () => void): void {
    const list = member.decoding === null ? this.waiting : this.running;
    const index = list.indexOf(member);
    if (index < 0) return;
    list.splice(index, 1);
    try {
      this.runner.releaseSequence(member.request.sequence);
    } catch (error) {
      member.reject(error);
      return;
    }
    settle();
  }

  /** Resolves at the next wakeUp (an arrival, an abort, a delivered token). */
  private idle(): Promise<void> {
    return new Promise((resolve) => {
      this.wake = resolve;
    });
  }

  private wakeUp(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }
}
