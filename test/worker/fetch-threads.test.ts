// Ranged requests on the fetch threads, over a local HTTP server: every byte reaches the main
// thread in order through the shared slots (more bytes than the slots hold at once), chunk
// digests equal node:crypto's, several jobs at once share one bandwidth cap across threads,
// an abort stops a job promptly with its reason, a failing sink fails its job, the source's
// errors arrive as toStatus reads them, and preparing the threads for any source, even one
// that cannot be opened, leaves them working.
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import t from 'tap';
import { toStatus } from '../../worker/daemon/errors.js';
import { fetchOnThread, prepareFetchThreads, startFetchThreads, type FetchJob } from '../../worker/daemon/fetch-threads.js';
import { FetchLimiter } from '../../worker/models/throttle.js';
import { heldDirectory, serveDirectory, tempDir } from './fixtures/harness.js';

const MB = 1_000_000;
/** Larger than the 16 MiB of slots one thread passes bytes through. */
const SIZE = 40 * MB + 123;
const CHUNK = 4 * MB;

const scratch = await tempDir('fetch-threads');
const blob = new Uint8Array(SIZE);
for (let i = 0; i < SIZE; i++) blob[i] = (i * 2654435761) >>> 24;
await writeFile(join(scratch.path, 'blob.bin'), blob);
const http = await serveDirectory(scratch.path);
t.teardown(async () => {
  await http.close();
  await scratch.remove();
});
await startFetchThreads(2);

function job(begin: number, end: number, limiter = new FetchLimiter(null), chunkBytes = CHUNK): Omit<FetchJob, 'id'> {
  const chunkEnds: number[] = [];
  for (let at = begin; at < end; at += chunkBytes) chunkEnds.push(Math.min(end, at + chunkBytes));
  return { uri: http.url, timeoutMs: 10_000, limit: limiter.shared, file: 'blob.bin', begin, end, chunkEnds };
}

/** Collects what a job hands over, checking it comes in order. */
function collector(begin: number, end: number): { out: Uint8Array; sink: (offset: number, bytes: Uint8Array) => void; received: () => number } {
  const out = new Uint8Array(end - begin);
  let next = begin;
  return {
    out,
    sink: (offset, bytes) => {
      if (offset !== next) throw new Error(`bytes at ${offset}, expected ${next}`);
      out.set(bytes, offset - begin);
      next += bytes.length;
    },
    received: () => next - begin,
  };
}

const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

t.test('every byte arrives in order and each chunk digest is the sha256 of its bytes', async (t) => {
  const begin = 777;
  const { out, sink } = collector(begin, SIZE);
  const digests = await fetchOnThread(job(begin, SIZE), sink, new AbortController().signal);
  t.ok(Buffer.from(out).equals(Buffer.from(blob.subarray(begin))), 'bytes intact');
  const expected: string[] = [];
  for (let at = begin; at < SIZE; at += CHUNK) expected.push(sha256(blob.subarray(at, Math.min(SIZE, at + CHUNK))));
  t.same(digests, expected);
  t.same(await fetchOnThread({ ...job(0, 1000), chunkEnds: [] }, () => undefined, new AbortController().signal), [], 'no chunks: no digests');
});

t.test('jobs on several threads at once share one cap, and the meter counts their bytes', async (t) => {
  const cap = 40 * MB;
  const limiter = new FetchLimiter(cap);
  const ended = limiter.begin();
  const began = performance.now();
  const parts = [0, 1, 2, 3].map((i) => [i * 10 * MB, (i + 1) * 10 * MB] as const);
  await Promise.all(parts.map(([from, to]) => fetchOnThread(job(from, to, limiter), () => undefined, new AbortController().signal)));
  const seconds = (performance.now() - began) / 1000;
  ended();
  t.ok(seconds >= (0.9 * 40 * MB) / cap, `40 MB under a ${cap / MB} MB/s cap took ${seconds.toFixed(2)} s`);
  const measured = limiter.measuredBytesPerSecond();
  t.ok(measured > 0.6 * cap && measured < 1.2 * cap, `measured ${(measured / MB).toFixed(1)} MB/s`);
});

t.test('an abort stops a job at once with its reason, and the threads go on working', async (t) => {
  const held = await heldDirectory(scratch.path);
  t.teardown(() => held.close());
  const abort = new AbortController();
  const reason = new Error('load cancelled');
  const running = fetchOnThread({ ...job(0, SIZE), uri: held.url }, () => undefined, abort.signal);
  setTimeout(() => abort.abort(reason), 100);
  const began = performance.now();
  await t.rejects(running, reason);
  t.ok(performance.now() - began < 5_000, 'did not wait for the held request');
  await t.rejects(fetchOnThread(job(0, 10), () => undefined, abort.signal), reason, 'an aborted signal fails a new job at once');
  const { out, sink } = collector(0, MB);
  await fetchOnThread(job(0, MB), sink, new AbortController().signal);
  t.ok(Buffer.from(out).equals(Buffer.from(blob.subarray(0, MB))), 'a later job gets its bytes');
});

t.test('a sink that throws fails its job with that error', async (t) => {
  const broken = new RangeError('host buffer too small');
  await t.rejects(
    fetchOnThread(job(0, 8 * MB), () => {
      throw broken;
    }, new AbortController().signal),
    broken,
  );
});

t.test("the source's errors keep the name and code toStatus maps", async (t) => {
  const missing = await fetchOnThread({ ...job(0, 10), file: 'absent.bin' }, () => undefined, new AbortController().signal).catch((e: unknown) => e);
  t.match(missing, { name: 'ModelFormatError', code: 'missing_file' });
  t.equal(toStatus(missing).code, status.NOT_FOUND);
  const short = await fetchOnThread(job(SIZE - 10, SIZE + 10), () => undefined, new AbortController().signal).catch((e: unknown) => e);
  t.match(short, { name: 'ModelFormatError', message: /short read/ });
  const refused = await fetchOnThread({ ...job(0, 10), uri: 'http://127.0.0.1:1' }, () => undefined, new AbortController().signal).catch((e: unknown) => e);
  t.equal(toStatus(refused).code, status.UNAVAILABLE, String(refused));
});

t.test('preparing the threads for a source, even one that cannot be opened, leaves them working', async (t) => {
  for (const uri of ['gopher://nowhere/model', 'not a uri', 's3://bucket/model', http.url]) prepareFetchThreads(uri, 10_000);
  const jobs = [0, 1, 2, 3].map((i) => {
    const { out, sink } = collector(i * MB, (i + 1) * MB);
    return fetchOnThread(job(i * MB, (i + 1) * MB), sink, new AbortController().signal).then(() => out);
  });
  const parts = await Promise.all(jobs);
  parts.forEach((out, i) => t.ok(Buffer.from(out).equals(Buffer.from(blob.subarray(i * MB, (i + 1) * MB))), `job ${i} on a prepared thread`));
});
