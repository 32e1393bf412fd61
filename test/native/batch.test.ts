// forwardBatch on the CPU stage: a batch of distinct sequences — prefills of different lengths
// mixed with decode steps — gives bit-identical outputs to running each input alone with
// forward (the kernels compute rows independently and without FMA contraction), on head and
// non-head stages; bad batches reject before anything runs; batches that share sequences in
// opposite orders do not deadlock.
import t from 'tap';

import { loadNativeAddon } from '../../worker/native/addon.js';
import type { ForwardInput, StageHandle } from '../../worker/native/addon-types.js';
import { BIAS_TIED_LINEAR, GQA_LLAMA3, MEDIUM_GQA, loadStage, makeRandom, makeTinyModel, wholeRange } from './tiny-model.js';

const addon = loadNativeAddon();
const MAX_CONTEXT = 48;

function randomTokens(seed: number, count: number, vocab: number): number[] {
  const random = makeRandom(seed);
  return Array.from({ length: count }, () => Math.floor(random() * vocab));
}

function tokensInput(sequence: number, position: number, tokens: readonly number[]): ForwardInput {
  return { sequence, position, tokens: Int32Array.from(tokens), hidden: null };
}

/** Exact equality of every float (Object.is would also separate 0 and -0; the bits must match). */
function sameBits(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return x.every((bits, i) => bits === y[i]);
}

/**
 * Steps of a batch over 4 sequences: step 0 prefills two of them, step 1 decodes those two
 * while the other two prefill (joining mid-way), then all four decode together.
 */
function schedule(vocab: number): ForwardInput[][] {
  const prompts = [5, 9, 3, 14].map((length, i) => randomTokens(30 + i, length, vocab));
  const positions = [0, 0, 0, 0];
  const step = (sequences: number[], decodeToken: number): ForwardInput[] =>
    sequences.map((s) => {
      const tokens = positions[s] === 0 ? prompts[s]! : [(decodeToken + s) % vocab];
      const input = tokensInput(s, positions[s]!, tokens);
      positions[s]! += tokens.length;
      return input;
    });
  const steps = [step([0, 1], 0), step([1, 0, 3, 2], 1)];
  for (let i = 2; i < 6; i++) steps.push(step([2, 0, 3, 1], i));
  return steps;
}

for (const [label, config] of [
  ['GQA + llama3 rope', GQA_LLAMA3],
  ['q/k/v bias + tied head', BIAS_TIED_LINEAR],
  ['medium GQA (multi-threaded kernels)', MEDIUM_GQA],
] as const) {
  t.test(`${label}: a batch gives bit-identical logits to forward per input`, async (t) => {
    const model = makeTinyModel(config, 77);
    const alone = loadStage(addon, model, wholeRange(config), 'bf16', MAX_CONTEXT);
    const batched = loadStage(addon, model, wholeRange(config), 'bf16', MAX_CONTEXT);
    for (const [index, inputs] of schedule(config.vocabSize).entries()) {
      const outputs = await addon.forwardBatch(batched, inputs);
      t.equal(outputs.length, inputs.length);
      for (const [i, input] of inputs.entries()) {
        const expected = await addon.forward(alone, input);
        t.equal(outputs[i]!.length, config.vocabSize);
        t.ok(sameBits(outputs[i]!, expected), `step ${index}, sequence ${input.sequence}: identical logits`);
      }
    }
    t.equal(addon.stageDeviceBytes(batched), addon.stageDeviceBytes(alone), 'same KV cache allocated');
    addon.disposeStage(alone);
    addon.disposeStage(batched);
  });
}

t.test('non-head stages: hidden rows per input, in input order, on both sides of a split', async (t) => {
  const config = GQA_LLAMA3;
  const model = makeTinyModel(config, 5);
  const firstRange = { layerStart: 0, layerEnd: 1, hasEmbeddings: true, hasHead: false };
  const lastRange = { layerStart: 1, layerEnd: 2, hasEmbeddings: false, hasHead: true };
  const first = [loadStage(addon, model, firstRange, 'f32', MAX_CONTEXT), loadStage(addon, model, firstRange, 'f32', MAX_CONTEXT)];
  const last = [loadStage(addon, model, lastRange, 'f32', MAX_CONTEXT), loadStage(addon, model, lastRange, 'f32', MAX_CONTEXT)];
  for (const inputs of schedule(config.vocabSize)) {
    const hidden = await addon.forwardBatch(first[1]!, inputs);
    const logits = await addon.forwardBatch(
      last[1]!,
      inputs.map((input, i) => ({ sequence: input.sequence, position: input.position, tokens: null, hidden: hidden[i]! })),
    );
    for (const [i, input] of inputs.entries()) {
      const expectedHidden = await addon.forward(first[0]!, input);
      t.equal(hidden[i]!.length, input.tokens!.length * config.hiddenSize, 'every token of the input');
      t.ok(sameBits(hidden[i]!, expectedHidden), `hidden of sequence ${input.sequence}`);
      const expectedLogits = await addon.forward(last[0]!, { ...input, tokens: null, hidden: expectedHidden });
      t.ok(sameBits(logits[i]!, expectedLogits), `logits of sequence ${input.sequence}`);
    }
  }
  for (const stage of [...first, ...last]) addon.disposeStage(stage);
});

t.test('bad batches reject, never throw, and leave the sequences as they were', async (t) => {
  const model = makeTinyModel(GQA_LLAMA3, 3);
  const stage = loadStage(addon, model, wholeRange(GQA_LLAMA3), 'f32', 8);
  await addon.forward(stage, tokensInput(1, 0, [1, 2, 3]));
  const bytes = addon.stageDeviceBytes(stage);
  const rejects = async (inputs: unknown, pattern: RegExp, what: string): Promise<void> => {
    let promise: Promise<Float32Array[]> | null = null;
    t.doesNotThrow(() => {
      promise = addon.forwardBatch(stage, inputs as ForwardInput[]);
    }, `${what}: no synchronous throw`);
    await t.rejects(promise!, { name: 'InvalidArgumentError', message: pattern }, what);
  };
  await rejects([], /inputs is empty/, 'empty batch');
  await rejects('nope', /inputs must be an array/, 'not an array');
  await rejects([tokensInput(1, 3, [4]), tokensInput(1, 3, [5])], /inputs\[1\]: sequence 1 appears more than once/, 'duplicate');
  await rejects([tokensInput(2, 0, [4]), tokensInput(3, 0, [64])], /inputs\[1\]: input\.tokens\[0\] = 64 is outside the vocabulary/, 'bad token');
  await rejects([tokensInput(2, 0, [4]), { sequence: 3, position: 0, tokens: null, hidden: null }], /inputs\[1\]: exactly one/, 'no tokens');
  await rejects([tokensInput(2, 0, [1, 2, 3, 4, 5, 6, 7, 8, 9])], /inputs\[0\]: .*maxContext/, 'past maxContext');
  await t.rejects(addon.forwardBatch(stage, [tokensInput(4, 0, [4]), tokensInput(1, 5, [4])]), { name: 'InvalidArgumentError', message: /gap/ });
  t.equal(addon.stageDeviceBytes(stage), bytes, 'no KV cache was allocated by a rejected batch');
  const again = await addon.forwardBatch(stage, [tokensInput(1, 3, [4])]);
  t.ok(sameBits(again[0]!, await addon.forward(stage, tokensInput(1, 3, [4]))), 'sequence 1 still holds its 3 tokens');

  addon.disposeStage(stage);
  await t.rejects(addon.forwardBatch(stage, [tokensInput(1, 0, [1])]), { name: 'DisposedError' });
  await t.rejects(addon.forwardBatch({} as StageHandle, [tokensInput(1, 0, [1])]), { name: 'InvalidArgumentError', message: /StageHandle/ });
});

t.test('concurrent batches over the same sequences in opposite orders all complete', async (t) => {
  const model = makeTinyModel(MEDIUM_GQA, 9);
  const stage = loadStage(addon, model, wholeRange(MEDIUM_GQA), 'f32', MAX_CONTEXT);
  const sequences = [10, 11, 12];
  const prompts = sequences.map((s) => randomTokens(s, 6, MEDIUM_GQA.vocabSize));
  await addon.forwardBatch(stage, sequences.map((s, i) => tokensInput(s, 0, prompts[i]!)));
  const step = (order: number[]): Promise<Float32Array[]> =>
    addon.forwardBatch(stage, order.map((s) => tokensInput(s, 6, [s])));
  const results = await Promise.all(Array.from({ length: 16 }, (_, i) => step(i % 2 === 0 ? sequences : [...sequences].reverse())));
  const forward = results[0]!;
  const reversed = results[1]!;
  for (const [i, result] of results.entries()) {
    const expected = i % 2 === 0 ? forward : reversed;
    t.ok(result.every((logits, j) => sameBits(logits, expected[j]!)), `batch ${i} matches`);
  }
  sequences.forEach((_, j) => t.ok(sameBits(forward[j]!, reversed[sequences.length - 1 - j]!), `sequence ${sequences[j]} alike in both orders`));
  addon.disposeStage(stage);
});
