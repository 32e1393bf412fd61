// The body of a fetch thread (fetch-threads.ts starts them). Receiving a stage at link speed
// costs a JavaScript thread about a second per GB (HTTP parsing, a buffer per socket read,
// SHA-256 of every integrity chunk), which held a worker's main thread, and with it the
// fetch, below a 10 Gbit/s link. Here each job streams one ranged request from the model
// source under the worker's shared bandwidth cap, hashes its chunks as the bytes pass, and
// gathers the bytes into slots: buffers moved (not copied) to the main thread, which copies
// them into the host buffer and moves them back. (Slots of a SharedArrayBuffer cost four times
// more: V8 copies into shared memory byte by byte when the offsets are not word-aligned, and
// socket reads seldom are.) A job waits for a free slot before it reads on, so a slow main
// thread slows the socket instead of piling bytes up.
import { createHash, type Hash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import { openModelSource } from '../models/source.js';
import { FetchLimiter } from '../models/throttle.js';
import type { FetchThreadData, ToFetchThread, FromFetchThread, FetchJob } from './fetch-threads.js';

const port = parentPort!;
const { slots, slotBytes } = workerData as FetchThreadData;
const freeSlots = Array.from({ length: slots }, () => new Uint8Array(slotBytes));
const slotWaiters: ((slot: Uint8Array<ArrayBuffer>) => void)[] = [];
const running = new Map<number, AbortController>();

const post = (message: FromFetchThread): void => port.postMessage(message);

function releaseSlot(slot: Uint8Array<ArrayBuffer>): void {
  const waiter = slotWaiters.shift();
  if (waiter !== undefined) waiter(slot);
  else freeSlots.push(slot);
}

function takeSlot(signal: AbortSignal): Promise<Uint8Array<ArrayBuffer>> {
  const slot = freeSlots.pop();
  if (slot !== undefined) return Promise.resolve(slot);
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      slotWaiters.splice(slotWaiters.indexOf(waiter), 1);
      reject(signal.reason as Error);
    };
    const waiter = (given: Uint8Array<ArrayBuffer>): void => {
      signal.removeEventListener('abort', onAbort);
      resolve(given);
    };
    slotWaiters.push(waiter);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Hashes [begin, chunkEnds[0]), [chunkEnds[0], chunkEnds[1]), ... of the bytes streamed through it. */
class ChunkDigests {
  readonly digests: string[] = [];
  private hash: Hash | null;

  constructor(private readonly chunkEnds: readonly number[]) {
    this.hash = chunkEnds.length > 0 ? createHash('sha256') : null;
  }

  update(piece: Uint8Array, offset: number): void {
    for (let at = 0; at < piece.length && this.hash !== null; ) {
      const chunkEnd = this.chunkEnds[this.digests.length]!;
      const take = Math.min(piece.length - at, chunkEnd - (offset + at));
      this.hash.update(piece.subarray(at, at + take));
      at += take;
      if (offset + at === chunkEnd) {
        this.digests.push(this.hash.digest('hex'));
        this.hash = this.digests.length < this.chunkEnds.length ? createHash('sha256') : null;
      }
    }
  }
}

async function run(job: FetchJob, signal: AbortSignal): Promise<void> {
  const source = openModelSource(job.uri, { timeoutMs: job.timeoutMs });
  const limiter = new FetchLimiter(job.limit.bytesPerSecond, job.limit.state);
  const chunks = new ChunkDigests(job.chunkEnds);
  let slot: Uint8Array<ArrayBuffer> | null = null;
  let slotOffset = 0;
  let filled = 0;
  const handOver = (): void => {
    if (slot === null) return;
    port.postMessage({ type: 'bytes', job: job.id, slot, offset: slotOffset, length: filled } satisfies FromFetchThread, [slot.buffer]);
    slot = null;
  };
  try {
    await source.streamRange(
      job.file,
      job.begin,
      job.end,
      async (piece, offset) => {
        await limiter.take(piece.length, signal);
        limiter.delivered(piece.length);
        chunks.update(piece, offset);
        for (let at = 0; at < piece.length; ) {
          if (slot === null) {
            slot = await takeSlot(signal);
            slotOffset = offset + at;
            filled = 0;
          }
          const take = Math.min(piece.length - at, slotBytes - filled);
          slot.set(piece.subarray(at, at + take), filled);
          filled += take;
          at += take;
          if (filled === slotBytes) handOver();
        }
      },
      signal,
    );
    handOver();
    post({ type: 'done', job: job.id, digests: chunks.digests });
  } catch (e) {
    if (slot !== null) releaseSlot(slot);
    const error = e instanceof Error ? e : new Error(String(e));
    const code = (error as { code?: unknown }).code;
    post({ type: 'failed', job: job.id, error: { name: error.name, message: error.message, code: typeof code === 'string' ? code : null } });
  }
}

port.on('message', (message: ToFetchThread) => {
  switch (message.type) {
    case 'prepare':
      try {
        // Opening starts what the source needs before its first read (the S3 client); its
        // problems surface again in the jobs, which report them.
        openModelSource(message.uri, { timeoutMs: message.timeoutMs });
      } catch {
        // Reported by the load's own header reads and jobs.
      }
      break;
    case 'fetch': {
      const abort = new AbortController();
      running.set(message.job.id, abort);
      void run(message.job, abort.signal).finally(() => running.delete(message.job.id));
      break;
    }
    case 'free':
      releaseSlot(message.slot);
      break;
    case 'cancel':
      running.get(message.job)?.abort(new Error('fetch cancelled'));
      break;
  }
});
post({ type: 'ready' });
