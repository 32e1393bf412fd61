// SHA-256 of fetched integrity chunks, off the event loop. A worker fetching a stage at link
// speed (10 Gbit/s and more) spends most of its main thread hashing when it hashes there
// (about 0.55 s per GB on the GPU machine's Xeon), which caps the fetch below the link and
// delays every other RPC the worker answers meanwhile. Chunks are handed whole to a few
// threads running Node's own crypto (OpenSSL): each chunk's bytes are moved, not copied, and
// moved back with the digest so that the caller can fill them again (allocating and zeroing
// a fresh 4 MiB buffer per chunk cost as much as the copy into it).
// The threads are started on first use and keep the process alive only while hashing.
import { Worker } from 'node:worker_threads';

/** Threads hashing for the whole process; a few cover several links' worth of fetching. */
const HASH_THREADS = 2;

const HASH_THREAD_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
parentPort.on('message', ({ id, bytes }) => {
  const digest = createHash('sha256').update(bytes).digest('hex');
  parentPort.postMessage({ id, digest, bytes }, [bytes.buffer]);
});
`;

/** A digest, and the bytes it was computed over, handed back. */
export interface Hashed {
  digest: string;
  bytes: Uint8Array;
}

interface HashReply extends Hashed {
  id: number;
}

class HashThread {
  private readonly worker: Worker;
  private readonly pending = new Map<number, { resolve: (hashed: Hashed) => void; reject: (e: unknown) => void }>();
  private nextId = 0;

  constructor() {
    this.worker = new Worker(HASH_THREAD_SOURCE, { eval: true });
    this.worker.on('message', ({ id, digest, bytes }: HashReply) => {
      this.pending.get(id)?.resolve({ digest, bytes });
      this.pending.delete(id);
      if (this.pending.size === 0) this.worker.unref();
    });
    this.worker.on('error', (e) => this.failAll(e));
    this.worker.on('exit', (code) => this.failAll(new Error(`a hashing thread exited (code ${code})`)));
    // Listening refs the thread; it holds the process open only while a hash is awaited.
    this.worker.unref();
  }

  get load(): number {
    return this.pending.size;
  }

  digest(bytes: Uint8Array): Promise<Hashed> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      if (this.pending.size === 0) this.worker.ref();
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, bytes }, [bytes.buffer as ArrayBuffer]);
    });
  }

  private failAll(e: unknown): void {
    for (const { reject } of this.pending.values()) reject(e);
    this.pending.clear();
    threads = threads.filter((t) => t !== this);
  }
}

let threads: HashThread[] = [];

/**
 * Hex SHA-256 of `bytes`, computed on another thread. `bytes` must span its whole ArrayBuffer,
 * which is moved to that thread and back: the caller's view is empty until the promise gives
 * the bytes back (same contents).
 */
export function sha256Off(bytes: Uint8Array): Promise<Hashed> {
  if (bytes.byteOffset !== 0 || bytes.byteLength !== bytes.buffer.byteLength) {
    return Promise.reject(new RangeError('sha256Off takes bytes that span their whole buffer'));
  }
  while (threads.length < HASH_THREADS) threads.push(new HashThread());
  const idlest = threads.reduce((a, b) => (b.load < a.load ? b : a));
  return idlest.digest(bytes);
}
