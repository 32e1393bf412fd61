// `paraserve keys create|ls|rm`: API keys clients send as Bearer tokens. The gateway stores
// only their sha256; `create` shows the key once.
import type { Command } from 'commander';
import { AdminClient } from '../admin-client.js';
import { adminOptions, jsonOption, type AdminFlags } from '../options.js';
import { formatTable, note, printJson, printText } from '../output.js';

interface KeyFlags extends AdminFlags {
  json?: boolean;
}

export function registerKeysCommands(program: Command): void {
  const keys = program.command('keys').description('manage API keys');

  const create = keys.command('create').description('create an API key (printed once)').argument('<name>').addOption(jsonOption());
  adminOptions().forEach((o) => create.addOption(o));
  create.action(async (name: string, flags: KeyFlags) => {
    const created = await new AdminClient(flags.gateway, flags.adminToken ?? null).createKey(name);
    if (flags.json === true) {
      printJson(created);
    } else {
      note(`API key ${created.name} (shown only now; clients send it as "authorization: Bearer <key>"):`);
      printText(created.key + '\n');
    }
  });

  const ls = keys.command('ls').description('list API keys (names only)').addOption(jsonOption());
  adminOptions().forEach((o) => ls.addOption(o));
  ls.action(async (flags: KeyFlags) => {
    const list = await new AdminClient(flags.gateway, flags.adminToken ?? null).listKeys();
    if (flags.json === true) {
      printJson(list);
    } else {
      printText(formatTable(['NAME', 'CREATED'], list.map((k) => [k.name, k.createdAt])));
    }
  });

  const rm = keys.command('rm').description('revoke an API key').argument('<name>').addOption(jsonOption());
  adminOptions().forEach((o) => rm.addOption(o));
  rm.action(async (name: string, flags: KeyFlags) => {
    await new AdminClient(flags.gateway, flags.adminToken ?? null).deleteKey(name);
    if (flags.json === true) {
      printJson({ deleted: name });
    } else {
      printText(`revoked ${name}\n`);
    }
  });
}
