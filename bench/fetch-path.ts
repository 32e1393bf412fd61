// How fast a worker fetches a model, and how much of its main thread that costs, against the
// cheapest possible receive of the same bytes on one thread (issue 4: a worker reached
// 0.8–1.1 GB/s of a 1.25 GB/s cap while its main thread received, gathered and hashed every
// byte; now fetch threads receive and hash, fetch-threads.ts). A store process serves a
// synthetic model on loopback; an in-process CPU worker (no overlap, so its FETCH phase is the
// fetch alone) loads it whole with chunk verification, several times into the same host cache
// (the first load also pays first-touch page faults, so it is reported apart). The baseline
// receives the same file with as many ranged GETs at once as the worker uses, on the main
// thread, and drops the bytes. No bandwidth cap: both go as fast as the machine lets them.
// Reported per path: GB/s, the main thread's busy fraction (event-loop utilisation) and its
// busy milliseconds per GB, minor page faults per GB, and the ratios to the baseline. The
// fetch threads and the store are outside the main-thread figure but share the CPUs, so the
// figures mean something only on a machine with cores to spare (a GPU server), not on a
// 2-core VM.
//   npm run build && npm run bench:fetch-path -- [--preset llama-1b] [--loads 3]
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { Agent, request } from 'undici';
import type { LoadProgress__Output } from '../protos/generated/paraserve/v1/LoadProgress.js';
import { loadParaserveProto } from '../protos/load.js';
import { startWorker } from '../worker/daemon/main.js';
import { hashModelFiles } from '../worker/models/inspect.js';
import { openModelSource } from '../worker/models/source.js';
import { writeSyntheticModel } from '../worker/models/synthetic.js';
import { benchProcesses, splitRange } from './cluster.js';

const { values: flags } = parseArgs({
  options: {
    preset: { type: 'string', default: 'llama-1b' },
    loads: { type: 'string', default: '3' },
  },
});
const LOADS = Number(flags.loads);
if (!Number.isInteger(LOADS) || LOADS < 2) throw new Error(`--loads: expected an integer >= 2 (the first pays page faults), got ${flags.loads}`);
/** The worker's ranged requests in flight (worker/daemon/main.ts); the baseline uses as many. */
const CONCURRENCY = 4;
const CHUNK_BYTES = 4 * 1024 * 1024;
const MODEL = 'probe';

interface Measure {
  bytes: number;
  seconds: number;
  /** Fraction of the wall time the main thread was busy. */
  busy: number;
  /** Minor page faults of this process meanwhile (first touches of memory). */
  faults: number;
}

const minorFaults = (): number => process.resourceUsage().minorPageFault;

/** Runs `work` and measures it. */
async function measured(work: () => Promise<number>): Promise<Measure> {
  const before = performance.eventLoopUtilization();
  const faults = minorFaults();
  const started = performance.now();
  const bytes = await work();
  const seconds = (performance.now() - started) / 1000;
  return { bytes, seconds, busy: performance.eventLoopUtilization(before).utilization, faults: minorFaults() - faults };
}

/** The baseline: the file in CONCURRENCY ranged GETs at once, every byte dropped. */
async function receiveOnly(agent: Agent, url: string, size: number): Promise<number> {
  const got = await Promise.all(
    splitRange(size, CONCURRENCY).map(async ([from, to]) => {
      const res = await request(url, { dispatcher: agent, headers: { range: `bytes=${from}-${to - 1}` } });
      let n = 0;
      for await (const piece of res.body) n += (piece as Buffer).length;
      return n;
    }),
  );
  return got.reduce((a, b) => a + b, 0);
}

/**
 * One LoadStage of the whole model; the FETCH phase's main-thread busy fraction, sampled at the
 * first and last FETCH progress the worker streams (same process, so the same event loop).
 */
function loadOnce(client: InstanceType<ReturnType<typeof loadParaserveProto>['paraserve']['v1']['Worker']>, requestBody: object): Promise<Measure> {
  return new Promise((resolve, reject) => {
    type Sample = { at: number; faults: number; elu: ReturnType<typeof performance.eventLoopUtilization> };
    let first: Sample | null = null;
    let last: (Sample & { bytes: number }) | null = null;
    const call = client.LoadStage(requestBody);
    call.on('data', (p: LoadProgress__Output) => {
      if (p.phase !== 'FETCH') return;
      const now = { at: performance.now(), faults: minorFaults(), elu: performance.eventLoopUtilization() };
      first ??= now;
      last = { ...now, bytes: p.bytesDone };
    });
    call.on('error', reject);
    call.on('end', () => {
      if (first === null || last === null) return reject(new Error('no FETCH progress'));
      const l = last as Sample & { bytes: number };
      const f = first as Sample;
      resolve({ bytes: l.bytes, seconds: (l.at - f.at) / 1000, busy: performance.eventLoopUtilization(l.elu, f.elu).utilization, faults: l.faults - f.faults });
    });
  });
}

async function main(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'paraserve-fetch-path-'));
  const processes = benchProcesses(dir);
  const agent = new Agent({ connections: CONCURRENCY });
  try {
    const modelDir = path.join(dir, MODEL);
    const written = await writeSyntheticModel({ dir: modelDir, preset: flags.preset!, seed: 0, dtype: null, sharded: false }, null);
    const files = await hashModelFiles(openModelSource(pathToFileURL(modelDir).href), written.files, null, CHUNK_BYTES);
    const store = processes.start('store', ['store', 'serve', '--root', dir, '--port', '0'], {});
    const storeUrl = (await store.ready(30_000)).url!;
    const weights = written.files.reduce((a, b) => (b.size > a.size ? b : a));
    const modelBytes = written.files.reduce((sum, f) => sum + f.size, 0);

    const worker = await startWorker({
      id: 'fetch-path', host: '127.0.0.1', port: 0, gatewayUrl: null, backend: 'cpu', hostCacheBytes: 2 * modelBytes + (64 << 20),
      maxContext: 64, drainTimeoutMs: 1_000, logLevel: 'warn', fetchBandwidthBytesPerS: null, loadOverlap: false, fetchStallTimeoutMs: 30_000, deviceMemoryBytes: null,
    });
    const { Worker } = loadParaserveProto().paraserve.v1;
    const client = new Worker(worker.address, grpc.credentials.createInsecure());
    const configJson = await readFile(path.join(modelDir, 'config.json'), 'utf8');
    const rows: [string, Measure][] = [];
    try {
      for (let i = 0; i < LOADS; i++) {
        rows.push([`baseline #${i + 1}`, await measured(() => receiveOnly(agent, `${storeUrl}/${MODEL}/${weights.path}`, weights.size))]);
        const instanceId = `load-${i}`;
        const load = await loadOnce(client, { instanceId, model: MODEL, source: { uri: `${storeUrl}/${MODEL}`, files }, configJson, device: -1, maxContext: 64 });
        rows.push([`worker #${i + 1}${i === 0 ? ' (page faults)' : ''}`, load]);
        await new Promise<void>((resolve, reject) => client.UnloadStage({ instanceId }, (e) => (e ? reject(e) : resolve())));
      }
    } finally {
      client.close();
      await worker.close();
    }

    const gbPerS = (m: Measure): number => m.bytes / m.seconds / 1e9;
    const msPerGb = (m: Measure): number => (m.busy * m.seconds * 1000) / (m.bytes / 1e9);
    const steady = (label: string): Measure[] => rows.filter(([l]) => l.startsWith(label) && !l.includes('page faults')).map(([, m]) => m);
    const mean = (ms: Measure[], of: (m: Measure) => number): number => ms.reduce((sum, m) => sum + of(m), 0) / ms.length;
    console.log(`fetch path — preset ${flags.preset}, ${(weights.size / 1e9).toFixed(2)} GB weights file, ${CONCURRENCY} requests in flight, chunks ${CHUNK_BYTES} B, ${os.cpus().length} CPUs (${os.cpus()[0]?.model})`);
    console.log('baseline: ranged GETs on the main thread that drop every byte; worker: LoadStage FETCH phase (fetch threads receive and hash 4 MiB chunks, the main thread writes into the host cache)');
    console.log(`${'run'.padEnd(26)}${'GB/s'.padStart(8)}${'main busy'.padStart(11)}${'busy ms/GB'.padStart(12)}${'faults/GB'.padStart(11)}`);
    for (const [label, m] of rows) {
      const faultsPerGb = (m.faults / (m.bytes / 1e9)).toFixed(0);
      console.log(`${label.padEnd(26)}${gbPerS(m).toFixed(2).padStart(8)}${`${(m.busy * 100).toFixed(0)} %`.padStart(11)}${msPerGb(m).toFixed(0).padStart(12)}${faultsPerGb.padStart(11)}`);
    }
    const base = mean(steady('baseline'), msPerGb);
    const ours = mean(steady('worker'), msPerGb);
    const baseRate = mean(steady('baseline'), gbPerS);
    const ourRate = mean(steady('worker'), gbPerS);
    console.log(`main-thread busy ms per GB, steady loads: worker ${ours.toFixed(0)} vs baseline ${base.toFixed(0)} → ×${(ours / base).toFixed(2)}`);
    console.log(`GB/s, steady loads: worker ${ourRate.toFixed(2)} vs baseline ${baseRate.toFixed(2)} → ×${(ourRate / baseRate).toFixed(2)}`);
  } finally {
    await agent.close();
    await processes.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
