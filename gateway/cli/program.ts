// The `paraserve` command tree, apart from running it (main.ts), so tests can walk every
// command. Each command group lives in commands/; heavy modules (native addon, gateway,
// worker) load only when a command runs, so `--help` is instant and works before the addon
// is built.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { registerGatewayCommand } from './commands/gateway.js';
import { registerKeysCommands } from './commands/keys.js';
import { registerMakeModelCommand } from './commands/make-model.js';
import { registerModelsCommands } from './commands/models.js';
import { registerStatusCommand } from './commands/status.js';
import { registerStoreCommands } from './commands/store.js';
import { registerUpCommand } from './commands/up.js';
import { registerWorkerCommand } from './commands/worker.js';
import { registerWorkersCommands } from './commands/workers.js';
import { formatCommanderError } from './errors.js';

/** The package version, from the nearest package.json above this file (src or dist layout). */
function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, 'package.json');
    if (existsSync(candidate)) {
      const pkg = JSON.parse(readFileSync(candidate, 'utf8')) as { name?: unknown; version?: unknown };
      if (pkg.name === 'paraserve' && typeof pkg.version === 'string') return pkg.version;
    }
    const parent = dirname(dir);
    if (parent === dir) return '0.0.0';
    dir = parent;
  }
}

export function buildProgram(): Command {
  const program = new Command('paraserve')
    .description('serverless LLM serving: pipeline-parallel cold starts and GPU sharing by model swapping')
    .version(packageVersion())
    .configureOutput({ outputError: (message, write) => write(formatCommanderError(message)) })
    .showSuggestionAfterError(true);
  registerUpCommand(program);
  registerGatewayCommand(program);
  registerWorkerCommand(program);
  registerStoreCommands(program);
  registerModelsCommands(program);
  registerWorkersCommands(program);
  registerKeysCommands(program);
  registerStatusCommand(program);
  registerMakeModelCommand(program);
  return program;
}
