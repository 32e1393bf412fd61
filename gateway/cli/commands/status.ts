// `paraserve status`: one look at the cluster — is the gateway healthy, which workers and
// models does it have.
import type { Command } from 'commander';
import { AdminClient } from '../admin-client.js';
import { adminOptions, jsonOption, type AdminFlags } from '../options.js';
import { formatFields, printJson, printText } from '../output.js';
import { formatModelTable } from './models.js';
import { formatWorkerTable } from './workers.js';

interface StatusFlags extends AdminFlags {
  json?: boolean;
}

export function registerStatusCommand(program: Command): void {
  const status = program.command('status').description('gateway health, workers and models at a glance').addOption(jsonOption());
  adminOptions().forEach((o) => status.addOption(o));
  status.action(async (flags: StatusFlags) => {
    const client = new AdminClient(flags.gateway, flags.adminToken ?? null);
    const health = await client.health();
    const [workers, models] = await Promise.all([client.listWorkers(), client.listModels()]);
    if (flags.json === true) {
      printJson({ gateway: flags.gateway, health, workers, models });
      return;
    }
    const states = new Map<string, number>();
    for (const w of workers) states.set(w.state, (states.get(w.state) ?? 0) + 1);
    const stateSummary = [...states].map(([s, n]) => `${n} ${s}`).join(', ');
    printText(
      formatFields([
        ['gateway', `${flags.gateway} (healthy)`],
        ['workers', workers.length === 0 ? '0' : `${workers.length} (${stateSummary})`],
        ['models', String(models.length)],
      ]),
    );
    printText('\nWORKERS\n' + formatWorkerTable(workers, Date.now()));
    printText('\nMODELS\n' + formatModelTable(models));
  });
}
