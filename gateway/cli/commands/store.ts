// `paraserve store serve`: a model store over HTTP with Range, for workers to fetch
// checkpoints from (`http://HOST:PORT/<model dir>` is a model source). Runs until
// SIGTERM/SIGINT. With --json it prints one line {"url","root"} once listening.
import { Option, type Command } from 'commander';
import { announceReady, waitForStop } from '../lifecycle.js';
import { DEFAULT_DATA_DIR, jsonOption, logLevelOption, parsePort, resolvePath } from '../options.js';
import { note, printText } from '../output.js';

interface StoreServeFlags {
  root: string;
  host: string;
  port: number;
  logLevel: string;
  json?: boolean;
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
    .addOption(jsonOption())
    .action(async (flags: StoreServeFlags) => {
      const { startStore } = await import('../../store/server.js');
      const root = resolvePath(flags.root);
      const running = await startStore({ root, host: flags.host, port: flags.port }, flags.logLevel);
      if (flags.json === true) {
        printText(JSON.stringify({ url: running.url, root }) + '\n');
      } else {
        printText(`serving ${root} at ${running.url}\nregister a model in it with: paraserve models register NAME ${running.url}/<dir>\n`);
      }
      announceReady({ type: 'paraserve:ready', role: 'store', url: running.url, id: null, address: null });
      const reason = await waitForStop();
      note(`store stopping (${reason})`);
      await running.close();
    });
}
