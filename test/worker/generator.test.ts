// The generation loop against a fake stage (no native code): the scripted logits decide
// which token is sampled, so each test drives the loop into one way of ending and checks the
// forwards it made, the tokens it emitted, and that the sequence was released every time.
import t from 'tap';
import type { ForwardInput } from '../../worker/native/addon-types.js';
import {
  finishReasonAfter,
  generate,
  GenerationError,
  type GenerationRequest,
  type StageRunner,
} from '../../worker/engine/generator.js';

const VOCAB = 16;

/** A StageRunner whose logits make `next(position)` the greedy choice; records every call. */
class FakeRunner implements StageRunner {
  readonly forwards: ForwardInput[] = [];
  readonly released: number[] = [];
  constructor(
    private readonly next: (position: number) => number,
    private readonly failAt: number | null = null,
  ) {}

  async forward(input: ForwardInput): Promise<Float32Array> {
    this.forwards.push(input);
    const count = input.tokens?.length ?? 0;
    const last = input.position + count - 1;
    if (this.failAt !== null && this.forwards.length === this.failAt) throw new Error('device fell over');
    const logits = new Float32Array(VOCAB).fill(-5);
    logits[this.next(last)] = 5;
    return logits;
  }

  releaseSequence(sequence: number): void {
    this.released.push(sequence);
  }
}

function request(overrides: Partial<GenerationRequest>): GenerationRequest {
  return {
    sequence: 7,
    promptTokenIds: [1, 2, 3],
    maxTokens: 10,
    stopTokenIds: [],
    sampling: { temperature: 0, topP: 1, seed: null },
    maxContext: 64,
    arrivedAt: performance.now(),
    ...overrides,
  };
}

async function run(runner: StageRunner, req: GenerationRequest, signal = new AbortController().signal) {
  const tokens: [number, number][] = [];
  const result = await generate(runner, req, (id, index) => void tokens.push([id, index]), signal);
  return { tokens, result };
}

t.test('prefill once with the whole prompt, then one token per forward', async (t) => {
  const runner = new FakeRunner((pos) => (pos + 5) % VOCAB);
  const { tokens, result } = await run(runner, request({ maxTokens: 4 }));
  t.same(tokens, [
    [7, 0],
    [8, 1],
    [9, 2],
    [10, 3],
  ]);
  t.same([...runner.forwards[0]!.tokens!], [1, 2, 3]);
  t.equal(runner.forwards[0]!.position, 0);
  t.same(
    runner.forwards.slice(1).map((f) => [f.position, [...f.tokens!]]),
    [
      [3, [7]],
      [4, [8]],
      [5, [9]],
    ],
  );
  t.equal(runner.forwards.length, 4, 'no forward after the last token');
  t.ok(runner.forwards.every((f) => f.sequence === 7 && f.hidden === null));
  t.equal(result.reason, 'LENGTH');
  t.equal(result.promptTokens, 3);
  t.equal(result.completionTokens, 4);
  t.ok(result.queueMs >= 0 && result.prefillMs >= 0 && result.decodeMs >= 0);
  t.same(runner.released, [7]);
});

t.test('a stop token ends generation and is emitted with reason STOP', async (t) => {
  const runner = new FakeRunner((pos) => (pos === 5 ? 2 : 9));
  const { tokens, result } = await run(runner, request({ stopTokenIds: [2, 15] }));
  t.same(
    tokens.map(([id]) => id),
    [9, 9, 9, 2],
  );
  t.equal(result.reason, 'STOP');
  t.equal(result.completionTokens, 4);
  t.same(runner.released, [7]);
});

t.test('a full context ends generation with LENGTH', async (t) => {
  const runner = new FakeRunner(() => 4);
  const { tokens, result } = await run(runner, request({ maxTokens: null, maxContext: 8 }));
  t.equal(tokens.length, 5, 'prompt 3 + 5 generated = context 8');
  t.equal(result.reason, 'LENGTH');
  t.ok(runner.forwards.every((f) => f.position + (f.tokens?.length ?? 0) <= 8), 'never writes past the KV cache');
  t.same(runner.released, [7]);
});

t.test('cancellation stops between forwards and frees the sequence', async (t) => {
  const controller = new AbortController();
  const runner = new FakeRunner(() => 3);
  const tokens: number[] = [];
  const result = await generate(
    runner,
    request({ maxTokens: null }),
    (id) => {
      tokens.push(id);
      if (tokens.length === 2) controller.abort();
    },
    controller.signal,
  );
  t.equal(result.reason, 'CANCELLED');
  t.equal(result.completionTokens, 2);
  t.equal(runner.forwards.length, 2);
  t.same(runner.released, [7]);
});

t.test('an already aborted request runs no forward and still releases', async (t) => {
  const controller = new AbortController();
  controller.abort();
  const runner = new FakeRunner(() => 3);
  const { tokens, result } = await run(runner, request({}), controller.signal);
  t.equal(result.reason, 'CANCELLED');
  t.same(tokens, []);
  t.equal(runner.forwards.length, 0);
  t.same(runner.released, [7]);
});

t.test('a failing forward rejects and frees the sequence', async (t) => {
  const runner = new FakeRunner(() => 3, 2);
  await t.rejects(run(runner, request({})), /device fell over/);
  t.same(runner.released, [7]);
});

t.test('bad requests are refused before any forward', async (t) => {
  const runner = new FakeRunner(() => 3);
  await t.rejects(run(runner, request({ promptTokenIds: [] })), GenerationError);
  await t.rejects(run(runner, request({ promptTokenIds: [1, 2, 3, 4], maxContext: 4 })), /no room/);
  await t.rejects(run(runner, request({ promptTokenIds: [1, -2] })), GenerationError);
  await t.rejects(run(runner, request({ maxTokens: 0 })), /max_tokens/);
  await t.rejects(run(runner, request({ sampling: { temperature: -1, topP: 1, seed: null } })), /temperature/);
  t.equal(runner.forwards.length, 0);
  t.same(runner.released, []);
});

t.test('seeded sampling through the loop is reproducible', async (t) => {
  const noisy: StageRunner = {
    async forward(input) {
      const l = new Float32Array(VOCAB);
      for (let i = 0; i < VOCAB; i++) l[i] = Math.cos(i * 1.7 + input.position);
      return l;
    },
    releaseSequence() {},
  };
  const sampling = { temperature: 1, topP: 0.9, seed: 42 };
  const a = await run(noisy, request({ sampling, maxTokens: 20 }));
  const b = await run(noisy, request({ sampling, maxTokens: 20 }));
  t.same(a.tokens, b.tokens);
});

t.test('finishReasonAfter: stop wins over length limits', async (t) => {
  const req = { promptTokenIds: [1, 2], maxTokens: 3, stopTokenIds: [9], maxContext: 10 };
  t.equal(finishReasonAfter(req, 1, 4), null);
  t.equal(finishReasonAfter(req, 3, 9), 'STOP');
  t.equal(finishReasonAfter(req, 3, 4), 'LENGTH');
  t.equal(finishReasonAfter({ ...req, maxTokens: null }, 8, 4), 'LENGTH');
  t.equal(finishReasonAfter({ ...req, maxTokens: null }, 7, 4), null);
});
