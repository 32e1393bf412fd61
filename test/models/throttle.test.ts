// The worker's fetch bandwidth cap: a capped fetch over a local HTTP server takes about
// bytes / cap, fetches running at once share the cap, the meter reports what was achieved,
// no cap means no pacing, aborts are prompt; the `--fetch-bandwidth` parser; and a worker
// with a cap reports its measured bandwidth in its snapshot after a load.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import t from 'tap';
import { parseBandwidth } from '../../gateway/cli/commands/worker.js';
import { startWorker } from '../../worker/daemon/main.js';
import { openModelSource } from '../../worker/models/source.js';
import { FetchLimiter, throttledSource } from '../../worker/models/throttle.js';
import { loadRequest, loadStage, makeModel, serveDirectory, tempDir, waitForSnapshot, workerClient } from '../worker/fixtures/harness.js';

const MB = 1_000_000;
const CAP = 4 * MB;
const SIZE = 2 * MB;

const scratch = await tempDir('throttle');
const blob = new Uint8Array(4 * SIZE).map((_, i) => (i * 31) & 0xff);
await writeFile(join(scratch.path, 'blob.bin'), blob);
const http = await serveDirectory(scratch.path);
t.teardown(async () => {
  await http.close();
  await scratch.remove();
});

async function timedStream(limiter: FetchLimiter, start: number, end: number): Promise<{ seconds: number; bytes: Uint8Array }> {
  const source = throttledSource(openModelSource(http.url), limiter);
  const out = new Uint8Array(end - start);
  const began = performance.now();
  await source.streamRange('blob.bin', start, end, (chunk, offset) => out.set(chunk, offset - start), null);
  return { seconds: (performance.now() - began) / 1000, bytes: out };
}

t.test('a capped fetch takes bytes / cap and the meter reports about the cap', async (t) => {
  const limiter = new FetchLimiter(CAP);
  t.equal(limiter.measuredBytesPerSecond(), 0, 'unknown before any fetch');
  const { seconds, bytes } = await timedStream(limiter, 1000, 1000 + SIZE);
  t.same(Buffer.from(bytes), Buffer.from(blob.subarray(1000, 1000 + SIZE)), 'bytes intact');
  t.ok(seconds >= (0.9 * SIZE) / CAP, `took ${seconds.toFixed(3)} s, floor ${(SIZE / CAP).toFixed(3)} s`);
  t.ok(seconds < (4 * SIZE) / CAP, `took ${seconds.toFixed(3)} s`);
  const measured = limiter.measuredBytesPerSecond();
  t.ok(Math.abs(measured - CAP) <= 0.3 * CAP, `measured ${(measured / MB).toFixed(2)} MB/s against a cap of ${CAP / MB} MB/s`);
});

t.test('fetches running at once share one cap', async (t) => {
  const limiter = new FetchLimiter(CAP);
  const began = performance.now();
  await Promise.all([timedStream(limiter, 0, SIZE / 2), timedStream(limiter, SIZE, SIZE + SIZE / 2)]);
  const seconds = (performance.now() - began) / 1000;
  t.ok(seconds >= (0.9 * SIZE) / CAP, `two halves took ${seconds.toFixed(3)} s together`);
  const measured = limiter.measuredBytesPerSecond();
  t.ok(Math.abs(measured - CAP) <= 0.3 * CAP, `measured ${(measured / MB).toFixed(2)} MB/s`);
});

t.test('readRange is paced too', async (t) => {
  const limiter = new FetchLimiter(CAP);
  const source = throttledSource(openModelSource(http.url), limiter);
  const began = performance.now();
  const bytes = await source.readRange('blob.bin', 0, SIZE);
  const seconds = (performance.now() - began) / 1000;
  t.equal(bytes.length, SIZE);
  t.ok(seconds >= (0.9 * SIZE) / CAP, `took ${seconds.toFixed(3)} s`);
});

t.test('no cap: not paced, still measured', async (t) => {
  const limiter = new FetchLimiter(null);
  t.equal(limiter.bytesPerSecond, null);
  const { seconds, bytes } = await timedStream(limiter, 0, 4 * SIZE);
  t.equal(bytes.length, 4 * SIZE);
  t.ok(seconds < (4 * SIZE) / CAP / 2, `4 × ${SIZE} bytes unpaced in ${seconds.toFixed(3)} s`);
  t.ok(limiter.measuredBytesPerSecond() > CAP, 'measured above the cap the others use');
});

t.test('an abort ends a paced fetch at once with the reason', async (t) => {
  const limiter = new FetchLimiter(MB / 4);
  const source = throttledSource(openModelSource(http.url), limiter);
  const abort = new AbortController();
  const reason = new Error('stop now');
  const began = performance.now();
  const fetching = source.streamRange(
    'blob.bin',
    0,
    SIZE,
    () => {
      if (!abort.signal.aborted) setTimeout(() => abort.abort(reason), 50);
    },
    abort.signal,
  );
  await t.rejects(fetching, reason);
  t.ok(performance.now() - began < 2_000, 'did not wait for the remaining allowance');
});

t.test('invalid caps are refused', async (t) => {
  t.throws(() => new FetchLimiter(0), RangeError);
  t.throws(() => new FetchLimiter(-5), RangeError);
  t.throws(() => new FetchLimiter(Number.POSITIVE_INFINITY), RangeError);
});

t.test('--fetch-bandwidth parses bits and bytes per second', async (t) => {
  t.equal(parseBandwidth('10Gbit'), 1_250_000_000);
  t.equal(parseBandwidth('10Gbit/s'), 1_250_000_000);
  t.equal(parseBandwidth('800Mbps'), 100_000_000);
  t.equal(parseBandwidth('8Mb'), 1_000_000, 'a lowercase b is bits');
  t.equal(parseBandwidth('8MB'), 8_000_000);
  t.equal(parseBandwidth('100MB'), 100_000_000);
  t.equal(parseBandwidth('1.25GB'), 1_250_000_000);
  t.equal(parseBandwidth('1.25GB/s'), 1_250_000_000);
  t.equal(parseBandwidth('512MiB'), 512 * 1024 * 1024);
  t.equal(parseBandwidth('4000000'), 4_000_000);
  t.equal(parseBandwidth('unlimited'), null);
  t.equal(parseBandwidth('0'), null);
  for (const bad of ['', 'fast', '10 parsecs', '-1MB', '1e9']) {
    t.throws(() => parseBandwidth(bad), { code: 'commander.invalidArgument' }, bad);
  }
});

t.test('a capped worker loads at about its cap and reports the measured bandwidth', async (t) => {
  const model = await makeModel(join(scratch.path, 'model'));
  const bytes = model.files.reduce((sum, f) => sum + f.size, 0);
  const cap = Math.max(MB / 2, Math.round(bytes * 2));
  const worker = await startWorker({
    id: 'capped',
    host: '127.0.0.1',
    port: 0,
    gatewayUrl: null,
    backend: 'cpu',
    hostCacheBytes: 64 * 1024 * 1024,
    maxContext: 64,
    drainTimeoutMs: 2_000,
    logLevel: 'silent',
    fetchBandwidthBytesPerS: cap,
    loadOverlap: true,
    fetchThreads: 1,
  });
  const client = workerClient(worker.address);
  t.teardown(async () => {
    client.close();
    await worker.close();
  });
  const began = performance.now();
  const outcome = await loadStage(client, loadRequest(model, 'capped-1'));
  const seconds = (performance.now() - began) / 1000;
  t.equal(outcome.code, grpc.status.OK, outcome.details);
  const fetched = outcome.messages.filter((m) => m.phase === 'FETCH').at(-1)?.bytesTotal ?? 0;
  t.ok(fetched > 0);
  t.ok(seconds >= (0.8 * fetched) / cap, `${fetched} bytes loaded in ${seconds.toFixed(3)} s under a cap of ${cap} B/s`);
  const snapshot = await waitForSnapshot(client, (s) => s.fetchBytesPerS > 0);
  t.ok(snapshot.fetchBytesPerS <= 1.3 * cap, `snapshot reports ${Math.round(snapshot.fetchBytesPerS)} B/s under a cap of ${cap} B/s`);
});
