// Sampling is what makes a seeded request reproducible and a greedy one exact, so these tests
// pin the rules: argmax with lowest-id ties, the nucleus cut, seed determinism, a sane
// temperature distribution, and refusal of logits no token can be drawn from.
import t from 'tap';
import {
  argmax,
  nucleus,
  randomSeed,
  rngFromSeed,
  sampleToken,
  SamplingError,
  softmax,
  validateSamplingParams,
  type RandomGenerator,
  type SamplingParams,
} from '../../worker/engine/sampling.js';

const logits = (values: number[]): Float32Array => Float32Array.from(values);

function drawMany(values: Float32Array, params: SamplingParams, count: number, seed: number): number[] {
  let rng: RandomGenerator = rngFromSeed(seed);
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const [token, next] = sampleToken(values, params, rng);
    out.push(token);
    rng = next;
  }
  return out;
}

t.test('greedy picks the argmax, ties go to the lowest id', async (t) => {
  t.equal(argmax(logits([0.1, 3, -2, 3, 1])), 1);
  t.equal(argmax(logits([-Infinity, -5, -Infinity])), 1);
  const params = { temperature: 0, topP: 1, seed: null };
  const [token] = sampleToken(logits([2, 7, 7, 1]), params, rngFromSeed(1));
  t.equal(token, 1);
});

t.test('greedy consumes no randomness', async (t) => {
  const rng = rngFromSeed(5);
  const [, next] = sampleToken(logits([1, 2]), { temperature: 0, topP: 1, seed: 5 }, rng);
  t.equal(next, rng);
});

t.test('softmax is numerically safe and handles -Infinity', async (t) => {
  const p = softmax(logits([1000, 1000, -Infinity]), 1);
  t.ok(Math.abs(p[0]! - 0.5) < 1e-12);
  t.ok(Math.abs(p[1]! - 0.5) < 1e-12);
  t.equal(p[2], 0);
  const q = softmax(logits([0, Math.log(3)]), 1);
  t.ok(Math.abs(q[1]! - 0.75) < 1e-6);
});

t.test('NaN, +Infinity and all -Infinity logits are errors', async (t) => {
  const params = { temperature: 1, topP: 1, seed: 1 };
  t.throws(() => sampleToken(logits([0, NaN]), params, rngFromSeed(1)), SamplingError);
  t.throws(() => sampleToken(logits([0, NaN]), { ...params, temperature: 0 }, rngFromSeed(1)), SamplingError);
  t.throws(() => sampleToken(logits([0, Infinity]), params, rngFromSeed(1)), SamplingError);
  t.throws(() => sampleToken(logits([-Infinity, -Infinity]), params, rngFromSeed(1)), SamplingError);
  t.throws(() => sampleToken(logits([]), params, rngFromSeed(1)), SamplingError);
});

t.test('parameters are validated', async (t) => {
  t.equal(validateSamplingParams({ temperature: 0.7, topP: 0.9, seed: 3 }), null);
  t.match(validateSamplingParams({ temperature: -1, topP: 1, seed: null }), /temperature/);
  t.match(validateSamplingParams({ temperature: NaN, topP: 1, seed: null }), /temperature/);
  t.match(validateSamplingParams({ temperature: 1, topP: 0, seed: null }), /top_p/);
  t.match(validateSamplingParams({ temperature: 1, topP: 1.5, seed: null }), /top_p/);
  t.match(validateSamplingParams({ temperature: 1, topP: 1, seed: 1.5 }), /seed/);
  t.throws(() => sampleToken(logits([1]), { temperature: 1, topP: 2, seed: null }, rngFromSeed(1)), SamplingError);
});

t.test('nucleus keeps the smallest prefix reaching top_p, never empty', async (t) => {
  const probs = Float64Array.from([0.1, 0.5, 0.25, 0.15, 0]);
  t.same([...nucleus(probs, 0.5)], [1]);
  t.same([...nucleus(probs, 0.6)], [1, 2]);
  t.same([...nucleus(probs, 0.75)], [1, 2]);
  t.same([...nucleus(probs, 0.76)], [1, 2, 3]);
  t.same([...nucleus(probs, 1)], [1, 2, 3, 0]);
  t.same([...nucleus(probs, 1e-9)], [1]);
  t.same([...nucleus(Float64Array.from([0.25, 0.25, 0.25, 0.25]), 0.5)], [0, 1], 'ties ordered by id');
});

t.test('top_p cuts the tail: tokens outside the nucleus are never drawn', async (t) => {
  const values = logits([Math.log(0.6), Math.log(0.3), Math.log(0.1)]);
  const tokens = drawMany(values, { temperature: 1, topP: 0.8, seed: 11 }, 2000, 11);
  t.notOk(tokens.includes(2), 'token 2 (p=0.1) is outside the 0.8 nucleus');
  const ones = tokens.filter((x) => x === 1).length / tokens.length;
  t.ok(Math.abs(ones - 1 / 3) < 0.05, `token 1 renormalised to 1/3, got ${ones}`);
});

t.test('the same seed gives the same tokens; different seeds differ', async (t) => {
  const values = logits(Array.from({ length: 50 }, (_, i) => Math.sin(i) * 2));
  const params = { temperature: 0.9, topP: 0.95, seed: 1234 };
  const a = drawMany(values, params, 64, 1234);
  const b = drawMany(values, params, 64, 1234);
  const c = drawMany(values, params, 64, 1235);
  t.same(a, b);
  t.notSame(a, c);
  const big = drawMany(values, params, 64, 2 ** 40 + 7);
  t.notSame(big, drawMany(values, params, 64, 7), 'the high 32 bits of a seed matter');
});

t.test('temperature shapes the distribution (fixed seed)', async (t) => {
  const values = logits([Math.log(0.5), Math.log(0.3), Math.log(0.2)]);
  const n = 20000;
  const counts = (temperature: number): number[] => {
    const c = [0, 0, 0];
    for (const token of drawMany(values, { temperature, topP: 1, seed: 99 }, n, 99)) c[token]!++;
    return c.map((x) => x / n);
  };
  const at1 = counts(1);
  t.ok(Math.abs(at1[0]! - 0.5) < 0.02, `p0 ≈ 0.5, got ${at1[0]}`);
  t.ok(Math.abs(at1[1]! - 0.3) < 0.02, `p1 ≈ 0.3, got ${at1[1]}`);
  t.ok(Math.abs(at1[2]! - 0.2) < 0.02, `p2 ≈ 0.2, got ${at1[2]}`);
  const cold = counts(0.25);
  t.ok(cold[0]! > 0.85, `low temperature concentrates on the top token, got ${cold[0]}`);
  const hot = counts(10);
  t.ok(Math.max(...hot) - Math.min(...hot) < 0.06, `high temperature flattens, got ${hot.join(', ')}`);
});

t.test('random seeds are integers in range', async (t) => {
  const s = randomSeed();
  t.ok(Number.isSafeInteger(s) && s >= 0);
});
