// `paraserve gateway`: runs the gateway daemon (OpenAI API, admin API, registry, scheduler)
// until SIGTERM/SIGINT, then closes it and exits 0. Under systemd (Type=notify) the gateway
// reports READY=1 once listening; under `paraserve up` this command reports its URL over IPC.
import { Option, type Command } from 'commander';
import { announceReady, waitForStop } from '../lifecycle.js';
import { collectList, dataDirOption, logLevelOption, parseIntIn, parsePort, resolvePath } from '../options.js';
import { note } from '../output.js';
import { DEFAULT_QUEUE_CAPACITY, DEFAULT_SHARING } from '../../scheduler/sharing.js';

interface GatewayFlags {
  host: string;
  port: number;
  dataDir: string;
  apiKey: string[];
  adminToken?: string;
  requestTimeoutMs: number;
  pipelineDegree?: number;
  consolidate: boolean;
  queueCapacity: number;
  gpuKeepAliveMs: number;
  hostKeepAliveMs: number;
  swapping: boolean;
  logLevel: string;
}

export function registerGatewayCommand(program: Command): void {
  program
    .command('gateway')
    .description('run the gateway: OpenAI-compatible API, admin API, model registry, scheduler')
    .addOption(new Option('--host <host>', 'address to listen on').default('127.0.0.1').env('PARASERVE_HOST'))
    .addOption(new Option('--port <port>', 'port to listen on (0: any free port)').default(8080).argParser(parsePort).env('PARASERVE_PORT'))
    .addOption(dataDirOption())
    .addOption(
      new Option('--api-key <key...>', 'API key clients must send as a Bearer token (repeatable, or comma-separated)')
        .default([], 'none')
        .argParser(collectList)
        .env('PARASERVE_API_KEY'),
    )
    .addOption(new Option('--admin-token <token>', 'bearer token the admin API requires').env('PARASERVE_ADMIN_TOKEN'))
    .addOption(
      new Option('--request-timeout-ms <ms>', 'longest a client request may take')
        .default(600_000)
        .argParser(parseIntIn(1, 86_400_000))
        .env('PARASERVE_REQUEST_TIMEOUT_MS'),
    )
    .addOption(
      new Option('--pipeline-degree <k>', 'serve cold starts as a pipeline of k stages on k workers (default: whole models)')
        .argParser(parseIntIn(1, 64))
        .env('PARASERVE_PIPELINE_DEGREE'),
    )
    .addOption(
      new Option('--no-consolidate', 'keep serving a pipelined cold start as a pipeline (default: load the model whole in the background, then dissolve the pipeline)'),
    )
    .addOption(
      new Option('--queue-capacity <n>', "requests each model's queue holds before answering 429 with Retry-After")
        .default(DEFAULT_QUEUE_CAPACITY)
        .argParser(parseIntIn(1, 1_000_000))
        .env('PARASERVE_QUEUE_CAPACITY'),
    )
    .addOption(
      new Option('--gpu-keep-alive-ms <ms>', 'idle time on a GPU before a model is swapped out to host memory (models registered without their own)')
        .default(DEFAULT_SHARING.gpuKeepAliveMs)
        .argParser(parseIntIn(0, 86_400_000))
        .env('PARASERVE_GPU_KEEP_ALIVE_MS'),
    )
    .addOption(
      new Option('--host-keep-alive-ms <ms>', 'idle time since its last use before a model leaves host memory too (scale to zero)')
        .default(DEFAULT_SHARING.hostKeepAliveMs)
        .argParser(parseIntIn(0, 86_400_000))
        .env('PARASERVE_HOST_KEEP_ALIVE_MS'),
    )
    .addOption(new Option('--no-swapping', 'never swap host-cached models in: a model that left the GPU starts cold (a baseline)'))
    .addOption(logLevelOption())
    .action(async (flags: GatewayFlags) => {
      const { startGateway } = await import('../../server.js');
      const gateway = await startGateway({
        host: flags.host,
        port: flags.port,
        dataDir: resolvePath(flags.dataDir),
        apiKeys: flags.apiKey,
        adminToken: flags.adminToken ?? null,
        logLevel: flags.logLevel,
        requestTimeoutMs: flags.requestTimeoutMs,
        pipelineDegree: flags.pipelineDegree ?? null,
        consolidate: flags.consolidate,
        queueCapacity: flags.queueCapacity,
        gpuKeepAliveMs: flags.gpuKeepAliveMs,
        hostKeepAliveMs: flags.hostKeepAliveMs,
        swapping: flags.swapping,
      });
      announceReady({ type: 'paraserve:ready', role: 'gateway', url: gateway.url, id: null, address: null });
      const reason = await waitForStop();
      note(`gateway stopping (${reason})`);
      await gateway.close();
    });
}
