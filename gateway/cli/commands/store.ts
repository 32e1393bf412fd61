// `paraserve store serve`: a model store over HTTP with Range, for workers to fetch
// checkpoints from (`http://HOST:PORT/<model dir>` is a model source). Runs until
// SIGTERM/SIGINT. With --json it prints one line {"url","root"} once listening.
// --processes N serves from N processes sharing the port (node:cluster hands connections out
// in turn): one Node process reads and sends about 2.5 GB/s (measured on the GPU machine),
// less than four workers fetching at 10 Gbit/s each ask of it in the cold-start benchmark.
// The first process only supervises: it announces the URL once every server listens and
// stops them all when it is told to stop.
import cluster, { type Worker as ClusterWorker } from 'node:cluster';
import { Option, type Command } from 'commander';
import { announceReady, isReadyMessage, waitForStop } from '../lifecycle.js';
import { DEFAULT_DATA_DIR, jsonOption, logLevelOption, parseIntIn, parsePort, resolvePath } from '../options.js';
import { note, printText } from '../output.js';

interface StoreServeFlags {
  root: string;
  host: string;
  port: number;
  logLevel: string;
  processes: number;
  json?: boolean;
}

/** Starts `count` serving processes; resolves with their URL once every one listens. */
async function startServers(count: number): Promise<{ url: string; servers: ClusterWorker[] }> {
  const servers = Array.from({ length: count }, () => cluster.fork());
  const urls = await Promise.all(
    servers.map(
      (server) =>
        new Promise<string>((resolve, reject) => {
          server.on('message', (m: unknown) => {
            if (isReadyMessage(m) && m.url !== null) resolve(m.url);
          });
          server.once('exit', (code) => reject(new Error(`a store process exited (code ${code}) before serving`)));
        }),
    ),
  ).catch((e: unknown) => {
    for (const server of servers) server.kill();
    throw e;
  });
  return { url: urls[0]!, servers };
}

async function stopServers(servers: ClusterWorker[]): Promise<void> {
  await Promise.all(
    servers.map(
      (server) =>
        new Promise<void>((resolve) => {
          if (server.isDead()) return resolve();
          server.once('exit', () => resolve());
          server.kill('SIGTERM');
        }),
    ),
  );
}

export function registerStoreCommands(program: Command): void {
  const store = program.command('store').description('the HTTP model store');
  store
    .command('serve')
    .description('serve a directory of models over HTTP with Range requests')
    .addOption(new Option('--root <dir>', 'directory to serve').default(`${DEFAULT_DATA_DIR}/models`).env('PARASERVE_ROOT'))
    .addOption(new Option('--host <host>', 'address to listen on').default('127.0.0.1').env('PARASERVE_HOST'))
    .addOption(new Option('--port <port>', 'port to listen on (0: any free port)').default(8090).argParser(parsePort).env('PARASERVE_PORT'))
    .addOption(logLevelOption().default('warn'))
    .addOption(
      new Option('--processes <n>', 'processes serving the port together (one sends about 2.5 GB/s)').default(1).argParser(parseIntIn(1, 64)).env('PARASERVE_PROCESSES'),
    )
    .addOption(jsonOption())
    .action(async (flags: StoreServeFlags) => {
      const root = resolvePath(flags.root);
      if (cluster.isWorker) {
        // One of the serving processes: the supervising one announces and prints.
        const { startStore } = await import('../../store/server.js');
        const running = await startStore({ root, host: flags.host, port: flags.port }, flags.logLevel);
        announceReady({ type: 'paraserve:ready', role: 'store', url: running.url, id: null, address: null });
        await waitForStop();
        await running.close();
        return;
      }
      let url: string;
      let close: () => Promise<void>;
      if (flags.processes > 1) {
        const started = await startServers(flags.processes);
        url = started.url;
        close = () => stopServers(started.servers);
      } else {
        const { startStore } = await import('../../store/server.js');
        const running = await startStore({ root, host: flags.host, port: flags.port }, flags.logLevel);
        url = running.url;
        close = running.close;
      }
      if (flags.json === true) {
        printText(JSON.stringify({ url, root }) + '\n');
      } else {
        printText(`serving ${root} at ${url}\nregister a model in it with: paraserve models register NAME ${url}/<dir>\n`);
      }
      announceReady({ type: 'paraserve:ready', role: 'store', url, id: null, address: null });
      const reason = await waitForStop();
      note(`store stopping (${reason})`);
      await close();
    });
}
