// A worker's cap on fetch bandwidth, and its measure of the bandwidth it achieves. The cap
// protects serving traffic on a shared link, and in experiments it makes one machine's workers
// behave like servers with their own network links of a given speed. The measure is what the
// gateway's scheduler uses to predict how long a cold start's fetch will take.
import { setTimeout as sleep } from 'node:timers/promises';
import type { ModelSourceReader } from './source.js';

/** How much unused allowance may pile up while no fetch runs, in seconds of the cap. */
const BURST_SECONDS = 0.05;
/** The measure covers the most recent busy periods adding up to at least this much time. */
const MEASURE_WINDOW_MS = 30_000;

interface BusyPeriod {
  bytes: number;
  ms: number;
}

/**
 * A token bucket shared by every fetch of one worker, plus a bandwidth meter. `take` paces
 * bytes to `bytesPerSecond` (null: no cap); `begin`/`delivered` record what the fetches
 * achieve: bytes delivered over the time at least one fetch was running.
 */
export class FetchLimiter {
  private tokens = 0;
  private refilledAt = performance.now();
  private active = 0;
  private busySince = 0;
  private current: BusyPeriod = { bytes: 0, ms: 0 };
  private readonly past: BusyPeriod[] = [];

  constructor(readonly bytesPerSecond: number | null) {
    if (bytesPerSecond !== null && !(bytesPerSecond > 0 && Number.isFinite(bytesPerSecond))) {
      throw new RangeError(`fetch bandwidth must be a positive number of bytes per second, not ${bytesPerSecond}`);
    }
  }

  /** Waits until `bytes` more may pass under the cap; an aborted signal rejects with its reason. */
  async take(bytes: number, signal: AbortSignal | null): Promise<void> {
    if (this.bytesPerSecond === null) return;
    const now = performance.now();
    const burst = this.bytesPerSecond * BURST_SECONDS;
    this.tokens = Math.min(burst, this.tokens + ((now - this.refilledAt) * this.bytesPerSecond) / 1000);
    this.refilledAt = now;
    this.tokens -= bytes;
    if (this.tokens >= 0) return;
    const waitMs = (-this.tokens * 1000) / this.bytesPerSecond;
    try {
      await sleep(waitMs, undefined, signal === null ? {} : { signal });
    } catch (e) {
      throw signal?.aborted ? signal.reason : e;
    }
  }

  /** A fetch starts; call the returned function once when it ends, however it ends. */
  begin(): () => void {
    if (this.active === 0) this.busySince = performance.now();
    this.active++;
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      this.active--;
      if (this.active === 0) this.closePeriod();
    };
  }

  /** Bytes a running fetch delivered. */
  delivered(bytes: number): void {
    this.current.bytes += bytes;
  }

  /** Bytes per second achieved by recent fetches (their bytes over their busy time); 0 when unknown. */
  measuredBytesPerSecond(): number {
    let bytes = this.current.bytes;
    let ms = this.active > 0 ? performance.now() - this.busySince : 0;
    for (let i = this.past.length - 1; i >= 0 && ms < MEASURE_WINDOW_MS; i--) {
      const period = this.past[i] as BusyPeriod;
      bytes += period.bytes;
      ms += period.ms;
    }
    return ms > 0 && bytes > 0 ? (bytes * 1000) / ms : 0;
  }

  private closePeriod(): void {
    this.current.ms = performance.now() - this.busySince;
    this.past.push(this.current);
    this.current = { bytes: 0, ms: 0 };
    let ms = 0;
    let keep = 0;
    for (let i = this.past.length - 1; i >= 0 && ms < MEASURE_WINDOW_MS; i--) {
      ms += (this.past[i] as BusyPeriod).ms;
      keep++;
    }
    this.past.splice(0, this.past.length - keep);
  }
}

/**
 * `reader` with its reads paced by `limiter` and counted by its meter. Streams are paced chunk
 * by chunk before each chunk is handed on, so a capped stream also stops reading from the
 * network (backpressure) instead of buffering ahead.
 */
export function throttledSource(reader: ModelSourceReader, limiter: FetchLimiter): ModelSourceReader {
  const counted = async <T>(run: () => Promise<T>): Promise<T> => {
    const end = limiter.begin();
    try {
      return await run();
    } finally {
      end();
    }
  };
  const paced = async (bytes: Uint8Array): Promise<Uint8Array> => {
    await limiter.take(bytes.length, null);
    limiter.delivered(bytes.length);
    return bytes;
  };
  return {
    uri: reader.uri,
    size: (path) => reader.size(path),
    readFile: (path) => counted(async () => paced(await reader.readFile(path))),
    readRange: (path, start, end) => counted(async () => paced(await reader.readRange(path, start, end))),
    streamRange: (path, start, end, onChunk, signal) =>
      counted(() =>
        reader.streamRange(
          path,
          start,
          end,
          async (chunk, offset) => {
            await limiter.take(chunk.length, signal);
            limiter.delivered(chunk.length);
            await onChunk(chunk, offset);
          },
          signal,
        ),
      ),
  };
}
