// Turning a stage's logits into the next token id: greedy, temperature and top-p (nucleus)
// sampling, with a seedable generator so that the same seed, prompt and model give the same
// tokens on every worker. Everything here is pure (the generator state is a value passed in
// and returned); only randomSeed() reads the OS entropy source. Policy lives in TypeScript,
// the native stage only produces logits (STYLE.md).
import { randomInt } from 'node:crypto';
import { xoroshiro128plus, type RandomGenerator } from 'pure-rand';

export type { RandomGenerator };

/** How one request samples; validated by validateSamplingParams before use. */
export interface SamplingParams {
  /** 0 = greedy (argmax); otherwise logits are divided by it before the softmax. */
  temperature: number;
  /** Nucleus mass in (0, 1]; 1 keeps every token. */
  topP: number;
  /** Seed of the generator; null draws a random one per request. */
  seed: number | null;
}

/** Bad parameters or logits a token cannot be drawn from (NaN, +Infinity, all -Infinity). */
export class SamplingError extends Error {
  override name = 'SamplingError';
}

/** Why the parameters are unusable, or null when they are fine. */
export function validateSamplingParams(params: SamplingParams): string | null {
  if (!Number.isFinite(params.temperature) || params.temperature < 0) {
    return `temperature must be a finite number >= 0, got ${params.temperature}`;
  }
  if (!Number.isFinite(params.topP) || params.topP <= 0 || params.topP > 1) {
    return `top_p must be in (0, 1], got ${params.topP}`;
  }
  if (params.seed !== null && (!Number.isInteger(params.seed) || params.seed < 0)) {
    return `seed must be a non-negative integer, got ${params.seed}`;
  }
  return null;
}

/** Throws unless the logits hold at least one finite value and no NaN or +Infinity. */
function checkLogits(logits: Float32Array): void {
  if (logits.length === 0) throw new SamplingError('logits are empty');
  let finite = 0;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i]!;
    if (Number.isNaN(v)) throw new SamplingError(`logit ${i} is NaN`);
    if (v === Infinity) throw new SamplingError(`logit ${i} is +Infinity`);
    if (v !== -Infinity) finite++;
  }
  if (finite === 0) throw new SamplingError('every logit is -Infinity');
}

/** Index of the largest logit; ties go to the lowest id. */
export function argmax(logits: Float32Array): number {
  checkLogits(logits);
  let best = 0;
  let bestValue = logits[0]!;
  for (let i = 1; i < logits.length; i++) {
    const v = logits[i]!;
    if (v > bestValue) {
      best = i;
      bestValue = v;
    }
  }
  return best;
}

/**
 * Probabilities of softmax(logits / temperature), computed in float64 after subtracting the
 * maximum so that no exponent overflows; -Infinity logits get probability 0.
 * temperature must be > 0.
 */
export function softmax(logits: Float32Array, temperature: number): Float64Array {
  checkLogits(logits);
  if (!(temperature > 0)) throw new SamplingError(`softmax needs temperature > 0, got ${temperature}`);
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  const probs = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i]!;
    const p = v === -Infinity ? 0 : Math.exp((v - max) / temperature);
    probs[i] = p;
    sum += p;
  }
  for (let i = 0; i < probs.length; i++) probs[i] = probs[i]! / sum;
  return probs;
}

/**
 * The nucleus: token ids sorted by probability (descending, ties by lower id), cut to the
 * smallest prefix whose cumulative probability reaches topP; never empty.
 * Tokens of probability 0 are never part of it.
 */
export function nucleus(probs: Float64Array, topP: number): Uint32Array {
  const candidates: number[] = [];
  for (let i = 0; i < probs.length; i++) if (probs[i]! > 0) candidates.push(i);
  candidates.sort((a, b) => probs[b]! - probs[a]! || a - b);
  let total = 0;
  for (const id of candidates) total += probs[id]!;
  const target = topP * total;
  let cumulative = 0;
  let kept = 0;
  while (kept < candidates.length) {
    cumulative += probs[candidates[kept]!]!;
    kept++;
    if (cumulative >= target) break;
  }
  return Uint32Array.from(candidates.slice(0, Math.max(kept, 1)));
}

/**
 * The generator for a seed: any integer in [0, 2^53) (proto uint64 seeds arrive as numbers).
 * Both 32-bit halves of the seed feed the 128-bit state through splitmix32, so nearby
 * seeds give unrelated streams.
 */
export function rngFromSeed(seed: number): RandomGenerator {
  const lo = seed % 0x1_0000_0000 >>> 0;
  const hi = Math.floor(seed / 0x1_0000_0000) >>> 0;
  let x = (lo ^ Math.imul(hi, 0x9e3779b9)) >>> 0;
  const state: number[] = [];
  for (let i = 0; i < 4; i++) {
    x = (x + 0x9e3779b9) | 0;
    let z = x;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    state.push((z ^ (z >>> 16)) | 0);
  }
  if ((state[0]! | state[1]! | state[2]! | state[3]!) === 0) state[0] = 1;
  return xoroshiro128plus.fromState(state);
}

/** A fresh seed from the OS entropy source, for requests that did not give one. */
export function randomSeed(): number {
  return randomInt(0, 2 ** 48 - 1);
}

/** A uniform double in [0, 1) from 53 random bits (two 32-bit draws). */
export function nextUniform(rng: RandomGenerator): [number, RandomGenerator] {
  const [a, rng1] = rng.next();
  const [b, rng2] = rng1.next();
  return [((a >>> 5) * 67108864 + (b >>> 6)) / 9007199254740992, rng2];
}

/**
 * Draws the next token. Greedy (temperature 0) consumes no randomness; otherwise one uniform
 * draw picks a token within the nucleus in proportion to its probability.
 */
export function sampleToken(
  logits: Float32Array,
  params: SamplingParams,
  rng: RandomGenerator,
): [number, RandomGenerator] {
  const invalid = validateSamplingParams(params);
  if (invalid !== null) throw new SamplingError(invalid);
  if (params.temperature === 0) return [argmax(logits), rng];
  const probs = softmax(logits, params.temperature);
  const [u, next] = nextUniform(rng);
  if (params.topP >= 1) return [pickByMass(probs, null, u), next];
  return [pickByMass(probs, nucleus(probs, params.topP), u), next];
}

/**
 * The token at cumulative mass u·(total mass) over `ids` (all ids in order when null).
 * Falls back to the last token with positive mass when rounding leaves u past the end.
 */
function pickByMass(probs: Float64Array, ids: Uint32Array | null, u: number): number {
  const count = ids === null ? probs.length : ids.length;
  const idAt = (k: number): number => (ids === null ? k : ids[k]!);
  let total = 0;
  for (let k = 0; k < count; k++) total += probs[idAt(k)]!;
  const target = u * total;
  let cumulative = 0;
  let last = idAt(0);
  for (let k = 0; k < count; k++) {
    const id = idAt(k);
    const p = probs[id]!;
    if (p <= 0) continue;
    cumulative += p;
    last = id;
    if (target < cumulative) return id;
  }
  return last;
}
