// Ranged requests run on fetch threads, off the worker's main thread. Receiving and hashing a
// stage at link speed takes about a second of one thread per GB; on the main thread that
// work, and the garbage collection it causes, held a worker at 0.7–1.1 GB/s under a
// 1.25 GB/s cap and delayed every RPC it answered meanwhile (bench/RESULTS.md). A few
// threads serve the whole process (every worker in it: they share nothing but the code);
// each receives and hashes (fetch-thread.ts) and moves the bytes over in reused buffers,
// so the main thread only copies them to their place in the host buffer. A worker starts the
// threads with itself (startFetchThreads), so no cold start waits for one; they keep the
// process alive only while a fetch runs.
import { Worker } from 'node:worker_threads';
import type { SharedFetchLimit } from '../models/throttle.js';

/**
 * Fetch threads a worker starts unless told otherwise (--fetch-threads). Receiving and hashing
 * take about 1.3 s of one thread per GB on the GPU machine's Xeon (SHA-256 alone 0.65–0.9 s),
 * so a 10 Gbit/s link keeps two threads busy; four leave room for faster links and bursts.
 */
export const DEFAULT_FETCH_THREADS = 4;
/** Bytes pass to the main thread in slots of this size, SLOTS_PER_THREAD per thread. */
const SLOT_BYTES = 1 << 20;
const SLOTS_PER_THREAD = 16;

/** One ranged request: file bytes [begin, end), hashed in chunks ending at chunkEnds (empty: not hashed). */
export interface FetchJob {
  id: number;
  uri: string;
  timeoutMs: number;
  limit: SharedFetchLimit;
  file: string;
  begin: number;
  end: number;
  chunkEnds: number[];
}

export interface FetchThreadData {
  /** How many buffers the thread passes bytes in, of slotBytes each. */
  slots: number;
  slotBytes: number;
}

export type ToFetchThread =
  | { type: 'prepare'; uri: string; timeoutMs: number }
  | { type: 'fetch'; job: FetchJob }
  | { type: 'free'; slot: Uint8Array<ArrayBuffer> }
  | { type: 'cancel'; job: number };

/** An error as it crosses threads: what toStatus (errors.ts) reads of it. */
export interface PostedError {
  name: string;
  message: string;
  code: string | null;
}

export type FromFetchThread =
  | { type: 'ready' }
  | { type: 'bytes'; job: number; slot: Uint8Array<ArrayBuffer>; offset: number; length: number }
  | { type: 'done'; job: number; digests: string[] }
  | { type: 'failed'; job: number; error: PostedError };

/** Receives the bytes at file offset `offset`; they are valid only during the call. */
export type BytesSink = (offset: number, bytes: Uint8Array) => void;

interface RunningJob {
  onBytes: BytesSink;
  resolve: (digests: string[]) => void;
  reject: (e: unknown) => void;
  signal: AbortSignal;
  /** The first error onBytes threw; the job is cancelled and fails with it. */
  sinkError: { error: unknown } | null;
}

/** The thread's own code: the compiled module, or its TypeScript source when tests run from source. */
const THREAD_MODULE = new URL(import.meta.url.endsWith('.ts') ? './fetch-thread.ts' : './fetch-thread.js', import.meta.url);

let nextJobId = 0;

function revive(posted: PostedError): Error {
  const error = new Error(posted.message) as Error & { code?: string };
  error.name = posted.name;
  if (posted.code !== null) error.code = posted.code;
  return error;
}

class FetchThread {
  private readonly worker: Worker;
  private readonly jobs = new Map<number, RunningJob>();
  private markReady: () => void = () => undefined;
  /** Settles once the thread has loaded its code (or is gone). */
  readonly ready = new Promise<void>((resolve) => (this.markReady = resolve));

  constructor(private readonly onGone: (thread: FetchThread) => void) {
    const data: FetchThreadData = { slots: SLOTS_PER_THREAD, slotBytes: SLOT_BYTES };
    this.worker = new Worker(THREAD_MODULE, { workerData: data });
    this.worker.on('message', (message: FromFetchThread) => this.receive(message));
    this.worker.on('error', (e) => this.failAll(e));
    this.worker.on('exit', (code) => this.failAll(new Error(`a fetch thread exited (code ${code})`)));
  }

  get load(): number {
    return this.jobs.size;
  }

  prepare(uri: string, timeoutMs: number): void {
    this.post({ type: 'prepare', uri, timeoutMs });
  }

  run(job: FetchJob, onBytes: BytesSink, signal: AbortSignal): Promise<string[]> {
    return new Promise((resolve, reject) => {
      const cancel = (): void => this.post({ type: 'cancel', job: job.id });
      const settle = <A extends unknown[]>(then: (...args: A) => void) => (...args: A): void => {
        signal.removeEventListener('abort', cancel);
        this.jobs.delete(job.id);
        if (this.jobs.size === 0) this.worker.unref();
        then(...args);
      };
      if (this.jobs.size === 0) this.worker.ref();
      this.jobs.set(job.id, { onBytes, resolve: settle(resolve), reject: settle(reject), signal, sinkError: null });
      signal.addEventListener('abort', cancel, { once: true });
      this.post({ type: 'fetch', job });
    });
  }

  private post(message: ToFetchThread): void {
    this.worker.postMessage(message);
  }

  private receive(message: FromFetchThread): void {
    if (message.type === 'ready') {
      // Until now the thread held the process open, for whoever awaits `ready`.
      if (this.jobs.size === 0) this.worker.unref();
      this.markReady();
      return;
    }
    const job = this.jobs.get(message.job);
    switch (message.type) {
      case 'bytes':
        if (job !== undefined && !job.signal.aborted && job.sinkError === null) {
          try {
            job.onBytes(message.offset, message.slot.subarray(0, message.length));
          } catch (e) {
            job.sinkError = { error: e };
            this.post({ type: 'cancel', job: message.job });
          }
        }
        this.worker.postMessage({ type: 'free', slot: message.slot } satisfies ToFetchThread, [message.slot.buffer]);
        break;
      case 'done':
      case 'failed': {
        if (job === undefined) break;
        if (job.signal.aborted) job.reject(job.signal.reason);
        else if (job.sinkError !== null) job.reject(job.sinkError.error);
        else if (message.type === 'failed') job.reject(revive(message.error));
        else job.resolve(message.digests);
        break;
      }
    }
  }

  private failAll(e: unknown): void {
    for (const job of [...this.jobs.values()]) job.reject(e);
    this.markReady();
    this.onGone(this);
  }
}

let threads: FetchThread[] = [];
/** The most threads any worker of the process asked for. */
let poolSize = 1;

function fillPool(): void {
  while (threads.length < poolSize) {
    threads.push(new FetchThread((gone) => (threads = threads.filter((t) => t !== gone))));
  }
}

/**
 * Makes the process's fetch threads at least `count` (replacing any that died); resolves once
 * they run. Workers in one process share the threads.
 */
export async function startFetchThreads(count: number): Promise<void> {
  if (!Number.isInteger(count) || count < 1) throw new RangeError(`fetch threads must be a positive integer, not ${count}`);
  poolSize = Math.max(poolSize, count);
  fillPool();
  await Promise.all(threads.map((t) => t.ready));
}

/**
 * Lets every fetch thread open the source before the load's first job arrives, while the main
 * thread reads the checkpoint's headers: an s3:// source loads the AWS SDK and makes its
 * client then (≈ 0.15 s per thread, once per process), not on the cold start's critical path.
 * Problems with the source are left for the jobs to report.
 */
export function prepareFetchThreads(uri: string, timeoutMs: number): void {
  fillPool();
  for (const thread of threads) thread.prepare(uri, timeoutMs);
}

/**
 * Runs `job` (its id is assigned here) on the least busy fetch thread: onBytes gets every byte
 * of [begin, end) in order; resolves to the hex SHA-256 of each chunk that was completed. Fails
 * with the source's error as toStatus reads it, with onBytes's own error, or, once `signal`
 * aborts, with its reason once the thread has stopped the request.
 */
export function fetchOnThread(job: Omit<FetchJob, 'id'>, onBytes: BytesSink, signal: AbortSignal): Promise<string[]> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  fillPool();
  const idlest = threads.reduce((a, b) => (b.load < a.load ? b : a));
  return idlest.run({ ...job, id: nextJobId++ }, onBytes, signal);
}
