// `paraserve workers ls`: the workers the gateway knows, with their state and load.
import type { Command } from 'commander';
import { AdminClient, type WorkerView } from '../admin-client.js';
import { adminOptions, jsonOption, type AdminFlags } from '../options.js';
import { formatAge, formatBytes, formatTable, printJson, printText } from '../output.js';

interface ListFlags extends AdminFlags {
  json?: boolean;
}

export function registerWorkersCommands(program: Command): void {
  const workers = program.command('workers').description('inspect the workers registered with the gateway');
  const ls = workers.command('ls').description('list workers').addOption(jsonOption());
  adminOptions().forEach((o) => ls.addOption(o));
  ls.action(async (flags: ListFlags) => {
    const list = await new AdminClient(flags.gateway, flags.adminToken ?? null).listWorkers();
    if (flags.json === true) {
      printJson(list);
    } else {
      printText(formatWorkerTable(list, Date.now()));
    }
  });
}

export function formatWorkerTable(list: WorkerView[], nowMs: number): string {
  return formatTable(
    ['ID', 'ADDRESS', 'BACKEND', 'STATE', 'DEVICES', 'MODELS', 'ACTIVE', 'HOST CACHE', 'LAST SEEN'],
    list.map((w) => [
      w.id,
      w.address,
      w.backend,
      w.state,
      String(w.devices.length),
      w.instances.length === 0 ? '-' : [...new Set(w.instances.map((i) => i.model))].join(','),
      String(w.activeRequests),
      `${formatBytes(w.hostCacheBytes)} / ${formatBytes(w.hostCacheLimit)}`,
      formatAge(w.lastSeenMs, nowMs),
    ]),
  );
}
