// Seeded draws for the trace generator: one xoroshiro128+ stream per purpose (the project's
// rngFromSeed), consumed in place, so that a seed always gives the same trace and adding a
// draw to one purpose does not shift another's.
import { rngFromSeed, type RandomGenerator } from '../../worker/engine/sampling.js';

export class Draws {
  private readonly rng: RandomGenerator;

  /** `stream` separates purposes under one seed. */
  constructor(seed: number, stream: number) {
    this.rng = rngFromSeed((seed * 7919 + stream * 104729) % 2 ** 52);
  }

  /** Uniform in [0, 1), 53 bits. */
  uniform(): number {
    const a = this.rng.unsafeNext() >>> 5;
    const b = this.rng.unsafeNext() >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  }

  /** Exponential with the given mean. */
  exponential(mean: number): number {
    return -Math.log(1 - this.uniform()) * mean;
  }

  /** Log-normal with the given median and log-space standard deviation. */
  logNormal(median: number, sigma: number): number {
    const u1 = 1 - this.uniform();
    const u2 = this.uniform();
    return median * Math.exp(sigma * Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2));
  }

  /** An index drawn with probability proportional to `cumulative` steps (a nondecreasing prefix sum). */
  pick(cumulative: Float64Array): number {
    const total = cumulative[cumulative.length - 1] ?? 0;
    const x = this.uniform() * total;
    let lo = 0;
    let hi = cumulative.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((cumulative[mid] as number) > x) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }
}
