// `paraserve worker`: runs a worker daemon (gRPC service, model loading, the native backend)
// that registers with a gateway, until SIGTERM/SIGINT; then it drains — in-flight requests
// finish, new ones are refused — and exits 0. The daemon itself reports READY=1 to systemd
// once its port is bound and its backend is up; under `paraserve up` this command reports
// the worker's id and address over IPC.
import { InvalidArgumentError, Option, type Command } from 'commander';
import { announceReady, waitForStop } from '../lifecycle.js';
import { DEFAULT_GATEWAY_URL, logLevelOption, parseBytes, parseHttpUrl, parseIntIn, parsePort } from '../options.js';
import { note } from '../output.js';
import { DEFAULT_FETCH_THREADS } from '../../../worker/daemon/fetch-threads.js';

interface WorkerFlags {
  id?: string;
  gateway: string;
  host: string;
  port: number;
  backend: 'auto' | 'cpu' | 'cuda';
  hostCacheBytes: number;
  maxContext: number;
  drainTimeoutMs: number;
  logLevel: string;
  fetchBandwidth: number | null;
  fetchStallTimeout: number;
  fetchThreads: number;
  deviceMemory?: number;
  loadOverlap: boolean;
}

const BIT_SCALES: Record<string, number> = { '': 1, k: 1e3, m: 1e6, g: 1e9, t: 1e12 };
const BANDWIDTH_HINT = 'expected a bandwidth such as 10Gbit, 100MB or 1.25GB (per second), or unlimited';

/**
 * A fetch bandwidth in bytes per second: bits ("10Gbit", "800Mbit/s", "1Gbps"; a lowercase b
 * is bits) or bytes as parseBytes reads them ("100MB", "1.25GB/s", "512MiB"); "unlimited" or
 * "0": no cap (null).
 */
export function parseBandwidth(value: string): number | null {
  const rate = value.trim().replace(/\/s$|ps$/i, '');
  if (/^(unlimited|none|0)$/i.test(rate)) return null;
  const bits = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:bit|b)$/.exec(rate.toLowerCase());
  let bytes: number;
  if (bits !== null && !rate.endsWith('B')) {
    bytes = Math.floor((Number(bits[1]) * (BIT_SCALES[bits[2] ?? ''] ?? Number.NaN)) / 8);
  } else {
    try {
      bytes = parseBytes(rate);
    } catch {
      throw new InvalidArgumentError(BANDWIDTH_HINT);
    }
  }
  if (!(bytes > 0) || !Number.isSafeInteger(bytes)) throw new InvalidArgumentError(BANDWIDTH_HINT);
  return bytes;
}

/**
 * PARASERVE_LOAD_OVERLAP: unset or empty, 1/true/yes/on → overlap; 0/false/no/off → one phase
 * after another. (Commander's env support would turn any value of a --no- flag's variable off.)
 */
export function parseLoadOverlapEnv(value: string | undefined): boolean {
  const v = (value ?? '').trim().toLowerCase();
  if (v === '' || ['1', 'true', 'yes', 'on'].includes(v)) return true;
  if (['0', 'false', 'no', 'off'].includes(v)) return false;
  throw new InvalidArgumentError(`PARASERVE_LOAD_OVERLAP: expected 0/false or 1/true, got ${JSON.stringify(value)}`);
}

export function registerWorkerCommand(program: Command): void {
  program
    .command('worker')
    .description('run a worker daemon: serves model stages over gRPC and registers with a gateway')
    .addOption(new Option('--gateway <url>', 'gateway to register with').default(DEFAULT_GATEWAY_URL).argParser(parseHttpUrl).env('PARASERVE_GATEWAY'))
    .addOption(new Option('--id <id>', 'worker id (default: chosen by the worker)').env('PARASERVE_ID'))
    .addOption(new Option('--host <host>', 'address to bind and to advertise to the gateway').default('127.0.0.1').env('PARASERVE_HOST'))
    .addOption(new Option('--port <port>', 'gRPC port (0: any free port)').default(7070).argParser(parsePort).env('PARASERVE_PORT'))
    .addOption(new Option('--backend <backend>', 'compute backend').choices(['auto', 'cpu', 'cuda']).default('auto').env('PARASERVE_BACKEND'))
    .addOption(
      new Option('--host-cache-bytes <size>', 'size of the host-memory model cache (allocated at start, pinned on GPUs), e.g. 8GiB')
        .default(4 * 1024 ** 3, '4GiB')
        .argParser(parseBytes)
        .env('PARASERVE_HOST_CACHE_BYTES'),
    )
    .addOption(
      new Option('--device-memory <size>', 'memory budget of each device (GPU) for models, e.g. 20GiB (default: the device size less 2GiB; on the CPU backend the free RAM)')
        .argParser(parseBytes)
        .env('PARASERVE_DEVICE_MEMORY'),
    )
    .addOption(
      new Option('--max-context <tokens>', 'KV cache capacity per sequence')
        .default(4096)
        .argParser(parseIntIn(16, 1_048_576))
        .env('PARASERVE_MAX_CONTEXT'),
    )
    .addOption(
      new Option('--drain-timeout-ms <ms>', 'longest a drain waits for in-flight requests on SIGTERM')
        .default(30_000)
        .argParser(parseIntIn(0, 3_600_000))
        .env('PARASERVE_DRAIN_TIMEOUT_MS'),
    )
    .addOption(
      new Option('--fetch-bandwidth <rate>', 'cap on the bytes per second of all model fetches, e.g. 10Gbit, 100MB or 1.25GB (per second)')
        .default(null, 'unlimited')
        .argParser(parseBandwidth)
        .env('PARASERVE_FETCH_BANDWIDTH'),
    )
    .addOption(
      new Option('--fetch-stall-timeout <ms>', 'fail a model fetch when its source sends nothing for this long')
        .default(30_000)
        .argParser(parseIntIn(100, 3_600_000))
        .env('PARASERVE_FETCH_STALL_TIMEOUT_MS'),
    )
    .addOption(
      new Option('--fetch-threads <n>', 'threads that receive and hash model fetches')
        .default(DEFAULT_FETCH_THREADS)
        .argParser(parseIntIn(1, 64))
        .env('PARASERVE_FETCH_THREADS'),
    )
    .addOption(
      new Option(
        '--no-load-overlap',
        'load models one phase after another (fetch, then runtime init, then copy), a baseline; also PARASERVE_LOAD_OVERLAP=0',
      ),
    )
    .addOption(logLevelOption())
    .action(async (flags: WorkerFlags, command: Command) => {
      let envOverlap: boolean;
      try {
        envOverlap = parseLoadOverlapEnv(process.env.PARASERVE_LOAD_OVERLAP);
      } catch (e) {
        command.error(`error: ${e instanceof Error ? e.message : String(e)}`);
      }
      const { startWorker } = await import('../../../worker/daemon/main.js');
      const worker = await startWorker({
        id: flags.id ?? null,
        host: flags.host,
        port: flags.port,
        gatewayUrl: flags.gateway,
        backend: flags.backend,
        hostCacheBytes: flags.hostCacheBytes,
        maxContext: flags.maxContext,
        drainTimeoutMs: flags.drainTimeoutMs,
        logLevel: flags.logLevel,
        fetchBandwidthBytesPerS: flags.fetchBandwidth,
        fetchStallTimeoutMs: flags.fetchStallTimeout,
        fetchThreads: flags.fetchThreads,
        deviceMemoryBytes: flags.deviceMemory ?? null,
        loadOverlap: flags.loadOverlap && envOverlap,
      });
      announceReady({ type: 'paraserve:ready', role: 'worker', url: null, id: worker.id, address: worker.address });
      const reason = await waitForStop();
      note(`worker ${worker.id} draining (${reason})`);
      await worker.close();
    });
}
