// A worker's cap on fetch bandwidth, and its measure of the bandwidth it achieves. The cap
// protects serving traffic on a shared link, and in experiments it makes one machine's workers
// behave like servers with their own network links of a given speed. The measure is what the
// gateway's scheduler uses to predict how long a cold start's fetch will take. The pacing state
// and the byte count live in a SharedArrayBuffer, so the worker's fetch threads
// (fetch-threads.ts) draw on the same cap as its main thread.
import { setTimeout as sleep } from 'node:timers/promises';
import type { ModelSourceReader } from './source.js';

/** How much unused allowance may pile up while no fetch runs, in seconds of the cap. */
const BURST_SECONDS = 0.05;
/** The measure covers the most recent busy periods adding up to at least this much time. */
const MEASURE_WINDOW_MS = 30_000;
/** Slots of the shared state: the pacing clock (ns), then the bytes delivered so far. */
const PACED_UNTIL = 0;
const DELIVERED = 1;

interface BusyPeriod {
  bytes: number;
  ms: number;
}

/** What another thread needs to draw on the same cap (it can be posted to a thread). */
export interface SharedFetchLimit {
  bytesPerSecond: number | null;
  state: SharedArrayBuffer;
}

/** A monotonic clock shared by every thread of the process, in nanoseconds. */
const nowNs = (): bigint => process.hrtime.bigint();

/**
 * A token bucket shared by every fetch of one worker, plus a bandwidth meter. `take` paces
 * bytes to `bytesPerSecond` (null: no cap); `begin`/`delivered` record what the fetches
 * achieve: bytes delivered over the time at least one fetch was running. The bucket is kept
 * as the time its debt is paid off (a generic cell rate algorithm), one atomic value that any
 * thread holding `shared` may advance; the meter's periods are the creating thread's.
 */
export class FetchLimiter {
  private readonly state: BigInt64Array;
  private readonly burstNs: bigint;
  private active = 0;
  private busySince = 0;
  private deliveredAtBusyStart = 0;
  private readonly past: BusyPeriod[] = [];

  /** A new cap; its bucket starts empty. `from` attaches to another thread's instead. */
  constructor(
    readonly bytesPerSecond: number | null,
    from: SharedArrayBuffer | null = null,
  ) {
    if (bytesPerSecond !== null && !(bytesPerSecond > 0 && Number.isFinite(bytesPerSecond))) {
      throw new RangeError(`fetch bandwidth must be a positive number of bytes per second, not ${bytesPerSecond}`);
    }
    this.state = new BigInt64Array(from ?? new SharedArrayBuffer(2 * BigInt64Array.BYTES_PER_ELEMENT));
    this.burstNs = BigInt(Math.round(BURST_SECONDS * 1e9));
    if (from === null) Atomics.store(this.state, PACED_UNTIL, nowNs() + this.burstNs);
  }

  /** For another thread: `new FetchLimiter(shared.bytesPerSecond, shared.state)` draws on this cap. */
  get shared(): SharedFetchLimit {
    return { bytesPerSecond: this.bytesPerSecond, state: this.state.buffer as SharedArrayBuffer };
  }

  /** Waits until `bytes` more may pass under the cap; an aborted signal rejects with its reason. */
  async take(bytes: number, signal: AbortSignal | null): Promise<void> {
    if (this.bytesPerSecond === null) return;
    const costNs = BigInt(Math.round((bytes * 1e9) / this.bytesPerSecond));
    let now: bigint;
    let pacedUntil: bigint;
    for (;;) {
      now = nowNs();
      const before = Atomics.load(this.state, PACED_UNTIL);
      // A bucket cannot hold more than full: time before now is not owed.
      pacedUntil = (before > now ? before : now) + costNs;
      if (Atomics.compareExchange(this.state, PACED_UNTIL, before, pacedUntil) === before) break;
    }
    const waitNs = pacedUntil - now - this.burstNs;
    if (waitNs <= 0n) return;
    try {
      await sleep(Number(waitNs) / 1e6, undefined, signal === null ? {} : { signal });
    } catch (e) {
      throw signal?.aborted ? signal.reason : e;
    }
  }

  /** A fetch starts; call the returned function once when it ends, however it ends. */
  begin(): () => void {
    if (this.active === 0) {
      this.busySince = performance.now();
      this.deliveredAtBusyStart = this.deliveredTotal();
    }
    this.active++;
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      this.active--;
      if (this.active === 0) this.closePeriod();
    };
  }

  /** Bytes a running fetch delivered (on any thread sharing this cap). */
  delivered(bytes: number): void {
    Atomics.add(this.state, DELIVERED, BigInt(bytes));
  }

  /** Bytes per second achieved by recent fetches (their bytes over their busy time); 0 when unknown. */
  measuredBytesPerSecond(): number {
    let bytes = this.active > 0 ? this.deliveredTotal() - this.deliveredAtBusyStart : 0;
    let ms = this.active > 0 ? performance.now() - this.busySince : 0;
    for (let i = this.past.length - 1; i >= 0 && ms < MEASURE_WINDOW_MS; i--) {
      const period = this.past[i] as BusyPeriod;
      bytes += period.bytes;
      ms += period.ms;
    }
    return ms > 0 && bytes > 0 ? (bytes * 1000) / ms : 0;
  }

  private deliveredTotal(): number {
    return Number(Atomics.load(this.state, DELIVERED));
  }

  private closePeriod(): void {
    this.past.push({ bytes: this.deliveredTotal() - this.deliveredAtBusyStart, ms: performance.now() - this.busySince });
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
