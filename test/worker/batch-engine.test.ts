// The continuous batcher (worker/engine/batcher.ts) against a fake batch runner whose steps
// the test releases one at a time: concurrent requests share steps, a newcomer joins a running
// batch, the batch size is capped, cancellation and failures take out only their request, a
// slow token sink does not stall the others, and every request's tokens are those the
// one-request loop (generate) gives it, greedy and seeded.
import t from 'tap';
import { ContinuousBatcher } from '../../worker/engine/batcher.js';
import {
  generate,
  GenerationError,
  type BatchStageRunner,
  type GenerationRequest,
  type GenerationResult,
  type TokenSink,
} from '../../worker/engine/generator.js';
import type { ForwardInput } from '../../worker/native/addon-types.js';

const VOCAB = 32;

/** Logits that depend on the sequence and the last position, so sampling has choices to make. */
function logitsFor(input: ForwardInput): Float32Array {
  const last = input.position + (input.tokens?.length ?? 0) - 1;
  const logits = new Float32Array(VOCAB);
  for (let i = 0; i < VOCAB; i++) logits[i] = Math.sin(i * 0.7 + last * 1.3 + input.sequence);
  return logits;
}

/** A BatchStageRunner that records each call; with `gated`, every call waits for step(). */
class FakeBatchRunner implements BatchStageRunner {
  readonly batches: ForwardInput[][] = [];
  readonly forwards: ForwardInput[] = [];
  readonly released: number[] = [];
  /** A batch holding this sequence rejects, and so does a forward of it. */
  failSequence: number | null = null;
  private pending: (() => void)[] = [];
  private callWaiters: { count: number; resolve: () => void }[] = [];

  constructor(private gated: boolean) {}

  async forwardBatch(inputs: readonly ForwardInput[]): Promise<Float32Array[]> {
    this.batches.push([...inputs]);
    await this.gate();
    if (inputs.some((input) => input.sequence === this.failSequence)) throw new Error('a bad input in the batch');
    return inputs.map(logitsFor);
  }

  async forward(input: ForwardInput): Promise<Float32Array> {
    this.forwards.push(input);
    if (input.sequence === this.failSequence) throw new Error(`sequence ${input.sequence} fell over`);
    return logitsFor(input);
  }

  releaseSequence(sequence: number): void {
    this.released.push(sequence);
  }

  /** Resolves once `count` batches have been asked for. */
  batchesStarted(count: number): Promise<void> {
    if (this.batches.length >= count) return Promise.resolve();
    return new Promise((resolve) => this.callWaiters.push({ count, resolve }));
  }

  /** Lets the oldest held batch finish. */
  step(): void {
    this.pending.shift()?.();
  }

  /** Lets every held and later batch finish. */
  open(): void {
    this.gated = false;
    for (const release of this.pending.splice(0)) release();
  }

  private gate(): Promise<void> {
    for (const w of this.callWaiters.filter((w) => this.batches.length >= w.count)) w.resolve();
    this.callWaiters = this.callWaiters.filter((w) => this.batches.length < w.count);
    if (!this.gated) return Promise.resolve();
    return new Promise((resolve) => this.pending.push(resolve));
  }
}

function request(sequence: number, overrides: Partial<GenerationRequest> = {}): GenerationRequest {
  return {
    sequence,
    promptTokenIds: [1, 2, 3 + sequence],
    maxTokens: 6,
    stopTokenIds: [],
    sampling: { temperature: 0, topP: 1, seed: null },
    maxContext: 64,
    arrivedAt: performance.now(),
    ...overrides,
  };
}

interface Run {
  tokens: number[];
  result: Promise<GenerationResult>;
  abort: AbortController;
}

function start(batcher: ContinuousBatcher, req: GenerationRequest, sink: TokenSink | null = null): Run {
  const tokens: number[] = [];
  const abort = new AbortController();
  const result = batcher.generate(
    req,
    (id, index) => {
      tokens.push(id);
      return sink?.(id, index);
    },
    abort.signal,
  );
  return { tokens, result, abort };
}

/** Tokens the one-request loop gives the request on an ungated runner. */
async function alone(req: GenerationRequest): Promise<number[]> {
  const tokens: number[] = [];
  await generate(new FakeBatchRunner(false), req, (id) => void tokens.push(id), new AbortController().signal);
  return tokens;
}

t.test('requests arriving together share every step and get their one-request tokens', async (t) => {
  const runner = new FakeBatchRunner(false);
  const batcher = new ContinuousBatcher(runner, { maxBatchSize: 8 });
  const requests = [
    request(1),
    request(2, { sampling: { temperature: 0.9, topP: 0.9, seed: 42 } }),
    request(3, { sampling: { temperature: 1.5, topP: 1, seed: 7 }, maxTokens: 4 }),
  ];
  const runs = requests.map((r) => start(batcher, r));
  const results = await Promise.all(runs.map((r) => r.result));
  for (const [i, r] of requests.entries()) {
    t.same(runs[i]!.tokens, await alone(r), `request ${r.sequence}: same tokens as alone`);
    t.equal(results[i]!.completionTokens, r.maxTokens);
    t.equal(results[i]!.reason, 'LENGTH');
  }
  t.equal(runner.batches.length, 6, 'one step per token of the longest request');
  t.same(runner.batches[0]!.map((i) => [i.sequence, i.position, i.tokens!.length]), [[1, 0, 3], [2, 0, 3], [3, 0, 3]], 'prefills in one step');
  t.same(runner.batches[1]!.map((i) => [i.sequence, i.position, i.tokens!.length]), [[1, 3, 1], [2, 3, 1], [3, 3, 1]], 'then decode steps');
  t.same(runner.batches[4]!.map((i) => i.sequence), [1, 2], 'a finished request leaves the batch');
  t.same(runner.forwards, [], 'no lone forwards');
  t.same([...runner.released].sort(), [1, 2, 3]);
  t.equal(batcher.size, 0);
});

t.test('a request arriving mid-generation joins the next step and streams before the first ends', async (t) => {
  const runner = new FakeBatchRunner(true);
  const batcher = new ContinuousBatcher(runner, { maxBatchSize: 8 });
  const log: string[] = [];
  const first = start(batcher, request(1, { maxTokens: 8 }), (id, index) => void log.push(`1:${index}`));
  await runner.batchesStarted(1);
  runner.step();
  await runner.batchesStarted(2);
  runner.step();
  await runner.batchesStarted(3);
  const second = start(batcher, request(2, { maxTokens: 2 }), (id, index) => void log.push(`2:${index}`));
  runner.step();
  await runner.batchesStarted(4);
  t.same(runner.batches[3]!.map((i) => [i.sequence, i.position]), [[1, 5], [2, 0]], 'the newcomer prefills beside a decode step');
  runner.open();
  const [a, b] = await Promise.all([first.result, second.result]);
  t.equal(a.completionTokens, 8);
  t.equal(b.completionTokens, 2);
  t.ok(log.indexOf('2:0') < log.indexOf('1:7'), `the newcomer's first token came before the first request ended: ${log.join(' ')}`);
  t.ok(log.indexOf('2:1') < log.indexOf('1:7'), 'and it finished first');
  t.same(first.tokens, await alone(request(1, { maxTokens: 8 })));
  t.same(second.tokens, await alone(request(2, { maxTokens: 2 })));
});

t.test('maxBatchSize caps a step; the request left over takes the first free place', async (t) => {
  const runner = new FakeBatchRunner(false);
  const batcher = new ContinuousBatcher(runner, { maxBatchSize: 2 });
  const runs = [request(1, { maxTokens: 2 }), request(2, { maxTokens: 5 }), request(3, { maxTokens: 3 })].map((r) => start(batcher, r));
  await Promise.all(runs.map((r) => r.result));
  t.ok(runner.batches.every((b) => b.length <= 2), 'never more than 2 inputs');
  t.same(runner.batches[2]!.map((i) => [i.sequence, i.position]), [[2, 4], [3, 0]], 'request 3 starts as request 1 leaves');
  t.same(runs[2]!.tokens, await alone(request(3, { maxTokens: 3 })));
  t.throws(() => new ContinuousBatcher(runner, { maxBatchSize: 0 }), RangeError);
});

t.test('cancelling one request mid-batch frees its sequence; the others go on', async (t) => {
  const runner = new FakeBatchRunner(true);
  const batcher = new ContinuousBatcher(runner, { maxBatchSize: 8 });
  const keep = start(batcher, request(1, { maxTokens: 5 }));
  const cancel = start(batcher, request(2, { maxTokens: 50 }));
  const waiting = new ContinuousBatcher(runner, { maxBatchSize: 8 });
  for (let i = 1; i <= 2; i++) {
    await runner.batchesStarted(i);
    runner.step();
  }
  await runner.batchesStarted(3);
  cancel.abort.abort();
  runner.step();
  const cancelled = await cancel.result;
  t.equal(cancelled.reason, 'CANCELLED');
  t.equal(cancelled.completionTokens, 2, 'the token of the step in flight is not sampled');
  t.same(runner.released, [2], 'released as soon as it left');
  t.same(runner.batches.slice(3).map((b) => b.map((i) => i.sequence)), [[1]], 'the next step runs without it');
  runner.open();
  t.equal((await keep.result).reason, 'LENGTH');
  t.same(keep.tokens, await alone(request(1, { maxTokens: 5 })));

  const early = new AbortController();
  early.abort();
  const never = await waiting.generate(request(9), () => undefined, early.signal);
  t.equal(never.reason, 'CANCELLED');
  t.equal(never.completionTokens, 0);
  t.same(runner.released, [2, 1, 9], 'a request cancelled before it ran is released too');
});

t.test('a failing input fails only its own request, after being run alone', async (t) => {
  const runner = new FakeBatchRunner(false);
  runner.failSequence = 2;
  const batcher = new ContinuousBatcher(runner, { maxBatchSize: 8 });
  const runs = [1, 2, 3].map((s) => start(batcher, request(s)));
  await t.rejects(runs[1]!.result, { message: 'sequence 2 fell over' });
  await Promise.all([runs[0]!.result, runs[2]!.result]);
  t.same(runs[0]!.tokens, await alone(request(1)));
  t.same(runs[2]!.tokens, await alone(request(3)));
  t.same(runner.forwards.map((f) => f.sequence), [1, 2, 3], 'the failed step was rerun input by input');
  t.ok(runner.released.includes(2));

  const sinkFails = new ContinuousBatcher(new FakeBatchRunner(false), { maxBatchSize: 8 });
  const broken = sinkFails.generate(request(4), () => Promise.reject(new Error('client went away')), new AbortController().signal);
  await t.rejects(broken, { message: 'client went away' });
  await t.rejects(batcher.generate(request(5, { promptTokenIds: [] }), () => undefined, new AbortController().signal), GenerationError);
});

t.test('a request whose sink pushes back skips steps without stalling the others', async (t) => {
  const runner = new FakeBatchRunner(false);
  const batcher = new ContinuousBatcher(runner, { maxBatchSize: 8 });
  let unblock: () => void = () => undefined;
  const slow = start(batcher, request(1, { maxTokens: 3 }), (_id, index) =>
    index === 0 ? new Promise<void>((resolve) => (unblock = resolve)) : undefined,
  );
  const fast = start(batcher, request(2, { maxTokens: 6 }));
  t.equal((await fast.result).completionTokens, 6, 'the fast request finished while the slow one was blocked');
  t.equal(slow.tokens.length, 1);
  unblock();
  t.equal((await slow.result).completionTokens, 3);
  t.same(slow.tokens, await alone(request(1, { maxTokens: 3 })));
});
