// `paraserve up`: the whole cluster on one machine, for trying paraserve and for development.
// It generates the demo model on first run, serves <data-dir>/models from an in-process model
// store, starts the gateway and N workers as child processes (each exactly what
// `paraserve gateway` / `paraserve worker` run in production), registers the model, waits
// until the gateway sees every worker, and prints how to call it. Ctrl-C or SIGTERM stops it
// all in order — workers drain, then the gateway, then the store — and exits 0; a child that
// dies on its own stops the rest and exits 1.
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { Option, type Command } from 'commander';
import type { RunningStore } from '../../store/server.js';
import { AdminClient } from '../admin-client.js';
import { CliError, reportError } from '../errors.js';
import { digestModel } from '../model-files.js';
import { REPEAT_WINDOW_MS } from '../lifecycle.js';
import { collectList, dataDirOption, logLevelOption, jsonOption, parseIntIn, parsePort, resolvePath } from '../options.js';
import { formatFields, note, printText, startProgress } from '../output.js';
import { describeExit, Supervisor, type SupervisedChild } from '../supervisor.js';
import {
  curlLine,
  decideRegistration,
  gatewayArgs,
  READY_TIMEOUT_MS,
  STOP_GRACE_MS,
  workerArgs,
  workerId,
  type UpPlanInput,
} from '../up-plan.js';

interface UpFlags {
  host: string;
  port: number;
  workers: number;
  dataDir: string;
  modelPreset: string;
  backend: 'auto' | 'cpu' | 'cuda';
  apiKey: string[];
  adminToken?: string;
  logLevel: string;
  json?: boolean;
}

/** Thrown inside startup when a signal asked to stop; ends `up` with exit 0. */
class StopRequested extends Error {
  override name = 'StopRequested';
}

export function registerUpCommand(program: Command): void {
  program
    .command('up')
    .description('run a whole cluster on this machine: model store, gateway, workers and a demo model')
    .addOption(new Option('--host <host>', 'address the gateway listens on').default('127.0.0.1').env('PARASERVE_HOST'))
    .addOption(new Option('--port <port>', 'gateway port (0: any free port)').default(8080).argParser(parsePort).env('PARASERVE_PORT'))
    .addOption(new Option('--workers <n>', 'worker processes to start').default(2).argParser(parseIntIn(1, 64)).env('PARASERVE_WORKERS'))
    .addOption(dataDirOption())
    .addOption(new Option('--model-preset <preset>', 'make-model preset of the demo model, registered under its name').default('demo').env('PARASERVE_MODEL_PRESET'))
    .addOption(new Option('--backend <backend>', 'worker compute backend').choices(['auto', 'cpu', 'cuda']).default('auto').env('PARASERVE_BACKEND'))
    .addOption(
      new Option('--api-key <key...>', 'API key clients must send (repeatable, or comma-separated)')
        .default([], 'none')
        .argParser(collectList)
        .env('PARASERVE_API_KEY'),
    )
    .addOption(new Option('--admin-token <token>', 'bearer token the admin API requires').env('PARASERVE_ADMIN_TOKEN'))
    .addOption(logLevelOption())
    .addOption(jsonOption())
    .action(async (flags: UpFlags) => {
      process.exitCode = await runUp(flags);
    });
}

async function runUp(flags: UpFlags): Promise<number> {
  const dataDir = resolvePath(flags.dataDir);
  const modelsDir = join(dataDir, 'models');
  const logsDir = join(dataDir, 'logs');
  await mkdir(modelsDir, { recursive: true });
  await mkdir(logsDir, { recursive: true });
  const plan: UpPlanInput = { host: flags.host, port: flags.port, workers: flags.workers, dataDir, backend: flags.backend, logLevel: flags.logLevel };

  // Children get secrets through the environment, not argv (visible in ps).
  const childEnv: NodeJS.ProcessEnv = { ...process.env };
  delete childEnv.PARASERVE_API_KEY;
  delete childEnv.PARASERVE_ADMIN_TOKEN;
  if (flags.apiKey.length > 0) childEnv.PARASERVE_API_KEY = flags.apiKey.join(',');
  if (flags.adminToken !== undefined) childEnv.PARASERVE_ADMIN_TOKEN = flags.adminToken;

  // Stopping: the first signal (or a child's unexpected death) settles `stopped`; the
  // startup sequence and the serving wait both race against it.
  let failure: string | null = null;
  let resolveStop: (reason: string) => void = () => undefined;
  const stopped = new Promise<string>((resolve) => {
    resolveStop = resolve;
  });
  const abortStartup = new AbortController();
  const requestStop = (reason: string): void => {
    abortStartup.abort();
    resolveStop(reason);
  };
  const supervisor = new Supervisor(cliArgs(), (child, exit) => {
    if (failure === null) {
      const why = child.lastWords();
      failure = `${child.name} exited unexpectedly (${describeExit(exit)})${why === null ? '' : `: ${why}`} (log: ${child.logFile})`;
    }
    requestStop('child exited');
  });
  let firstSignalAt: number | null = null;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (firstSignalAt === null) {
      firstSignalAt = Date.now();
    } else if (Date.now() - firstSignalAt >= REPEAT_WINDOW_MS) {
      note(`${signal} again: killing everything`);
      supervisor.killAll();
      process.exit(1);
    }
    requestStop(signal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  let store: RunningStore | null = null;
  let gateway: SupervisedChild | null = null;
  const workers: SupervisedChild[] = [];
  try {
    const generated = await untilStopped(ensureModel(modelsDir, flags.modelPreset), stopped);
    const { startStore } = await import('../../store/server.js');
    store = await startStore({ root: modelsDir, host: '127.0.0.1', port: 0 });

    note('starting the gateway…');
    gateway = supervisor.start({ name: 'gateway', args: gatewayArgs(plan), env: childEnv, logFile: join(logsDir, 'gateway.log') });
    const gatewayReady = await untilStopped(gateway.ready(READY_TIMEOUT_MS.gateway), stopped);
    if (gatewayReady.url === null) throw new CliError('the gateway did not report its URL');
    const gatewayUrl = gatewayReady.url;

    note(`starting ${flags.workers} worker${flags.workers === 1 ? '' : 's'}…`);
    for (let i = 0; i < flags.workers; i++) {
      workers.push(
        supervisor.start({ name: workerId(i), args: workerArgs(plan, i, gatewayUrl), env: childEnv, logFile: join(logsDir, `${workerId(i)}.log`) }),
      );
    }
    const client = new AdminClient(gatewayUrl, flags.adminToken ?? null);
    const source = `${store.url}/${encodeURIComponent(flags.modelPreset)}`;
    await untilStopped(registerDemoModel(client, flags.modelPreset, source, join(modelsDir, flags.modelPreset), generated), stopped);
    await untilStopped(Promise.all(workers.map((w) => w.ready(READY_TIMEOUT_MS.worker))), stopped);
    await untilStopped(waitForWorkers(client, workers.map((w) => w.name), abortStartup.signal), stopped);

    const needsKey = flags.apiKey.length > 0 || (await client.listKeys()).length > 0;
    printReady(flags, gatewayUrl, store.url, workers, logsDir, needsKey);
    await stopped;
  } catch (e) {
    if (!(e instanceof StopRequested) && failure === null) {
      failure = reportError(e).line;
    }
  }

  note('stopping: workers drain, then the gateway, then the store…');
  await Promise.all(workers.map((w) => supervisor.stop(w, STOP_GRACE_MS.worker)));
  if (gateway !== null) await supervisor.stop(gateway, STOP_GRACE_MS.gateway);
  if (store !== null) await store.close();
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  if (failure !== null) {
    process.stderr.write(`paraserve: ${failure}\n`);
    return 1;
  }
  note('stopped');
  return 0;
}

/** Node flags and script path to start this CLI again (without debugger flags, whose port would clash). */
function cliArgs(): string[] {
  const script = process.argv[1];
  if (script === undefined) throw new CliError('cannot tell where the paraserve CLI script is');
  return [...process.execArgv.filter((a) => !a.startsWith('--inspect')), script];
}

/** Waits for work unless a stop comes first. */
async function untilStopped<T>(work: Promise<T>, stopped: Promise<string>): Promise<T> {
  work.catch(() => undefined);
  return Promise.race([
    work,
    stopped.then((): never => {
      throw new StopRequested('stop requested');
    }),
  ]);
}

/** Generates the model into a hidden temp folder and renames it, so a crash never leaves half a model. */
async function ensureModel(modelsDir: string, preset: string): Promise<boolean> {
  const dir = join(modelsDir, preset);
  const complete = await stat(join(dir, 'config.json')).then(
    () => true,
    () => false,
  );
  if (complete) return false;
  const { MODEL_PRESETS, writeSyntheticModel } = await import('../../../worker/models/synthetic.js');
  if (!Object.hasOwn(MODEL_PRESETS, preset)) {
    throw new CliError(`unknown preset ${preset} (choose from: ${Object.keys(MODEL_PRESETS).join(', ')})`);
  }
  const tmpPrefix = `.${preset}.tmp-`;
  for (const entry of await readdir(modelsDir)) {
    if (entry.startsWith(tmpPrefix)) await rm(join(modelsDir, entry), { recursive: true, force: true });
  }
  const tmp = join(modelsDir, `${tmpPrefix}${process.pid}`);
  note(`generating the ${preset} model (first run only)…`);
  const progress = startProgress('generating', 'bytes');
  try {
    await writeSyntheticModel({ dir: tmp, preset, seed: 0, dtype: null, sharded: false }, (done, total) => progress.update(done, total));
  } finally {
    progress.stop();
  }
  await rm(dir, { recursive: true, force: true });
  await rename(tmp, dir);
  return true;
}

async function registerDemoModel(client: AdminClient, name: string, source: string, dir: string, generated: boolean): Promise<void> {
  const existing = (await client.listModels()).find((m) => m.name === name) ?? null;
  const decision = decideRegistration(existing, source, generated);
  switch (decision.kind) {
    case 'keep':
      return;
    case 'foreign':
      note(`model ${name} is registered from ${decision.source}; leaving it as it is`);
      return;
    case 'replace': {
      note(`re-registering model ${name} from ${source}…`);
      const files = decision.reuseDigests && existing !== null ? existing.files : await digestModel(pathToFileURL(dir).href);
      await client.deleteModel(name);
      await client.registerModel({
        name,
        source,
        files,
        ttftSloMs: existing?.ttftSloMs ?? null,
        gpuKeepAliveMs: existing?.gpuKeepAliveMs ?? null,
        hostKeepAliveMs: existing?.hostKeepAliveMs ?? null,
      });
      return;
    }
    case 'register': {
      note(`registering model ${name}…`);
      const files = await digestModel(pathToFileURL(dir).href);
      await client.registerModel({ name, source, files, ttftSloMs: null, gpuKeepAliveMs: null, hostKeepAliveMs: null });
      return;
    }
  }
}

/** Polls the admin API until the gateway lists every worker READY (workers register asynchronously). */
async function waitForWorkers(client: AdminClient, ids: string[], signal: AbortSignal): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS.worker;
  for (;;) {
    const listed = new Set((await client.listWorkers()).filter((w) => w.state === 'READY').map((w) => w.id));
    const missing = ids.filter((id) => !listed.has(id));
    if (missing.length === 0) return;
    if (Date.now() > deadline) {
      throw new CliError(`the gateway did not see ${missing.join(', ')} ready in time`);
    }
    await sleep(200, undefined, { signal });
  }
}

function printReady(flags: UpFlags, gatewayUrl: string, storeUrl: string, workers: SupervisedChild[], logsDir: string, needsKey: boolean): void {
  if (flags.json === true) {
    printText(
      JSON.stringify({ gateway: gatewayUrl, store: storeUrl, workers: workers.map((w) => w.name), model: flags.modelPreset, logs: logsDir }) + '\n',
    );
    return;
  }
  printText(
    '\nparaserve is up\n\n' +
      formatFields([
        ['gateway', `${gatewayUrl}  (OpenAI API under /v1)`],
        ['workers', `${workers.length} (${workers.map((w) => w.name).join(', ')})`],
        ['model', `${flags.modelPreset}  (from ${storeUrl}/${flags.modelPreset})`],
        ['logs', logsDir],
      ]) +
      `\nTry it:\n\n  ${curlLine(gatewayUrl, flags.modelPreset, needsKey)}\n\nCtrl-C stops the cluster.\n`,
  );
}
