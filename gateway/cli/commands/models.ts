// `paraserve models register|ls|rm`: the model registry, through the gateway's admin API.
// Registration inspects and hashes the checkpoint here, with a progress bar, unless --no-hash
// leaves both to the gateway.
import { Option, type Command } from 'commander';
import { AdminClient, type ModelRecord } from '../admin-client.js';
import { digestModel, toSourceUri } from '../model-files.js';
import { adminOptions, jsonOption, parseIntIn, type AdminFlags } from '../options.js';
import { formatBytes, formatCount, formatFields, formatTable, printJson, printText } from '../output.js';

interface RegisterFlags extends AdminFlags {
  ttftSloMs?: number;
  gpuKeepAliveMs?: number;
  hostKeepAliveMs?: number;
  hash: boolean;
  json?: boolean;
}

interface ListFlags extends AdminFlags {
  json?: boolean;
}

export function registerModelsCommands(program: Command): void {
  const models = program.command('models').description('register, list and remove models');

  const register = models
    .command('register')
    .description('register a model from a directory or a file://, http:// or https:// source')
    .argument('<name>', 'model name clients will ask for')
    .argument('<source>', 'model directory, or file:// / http(s):// URI of one')
    .addOption(new Option('--ttft-slo-ms <ms>', 'time-to-first-token objective for this model').argParser(parseIntIn(1, 3_600_000)))
    .addOption(new Option('--gpu-keep-alive-ms <ms>', 'idle time on a GPU before the model is swapped out to host memory (default: the gateway\'s)').argParser(parseIntIn(0, 86_400_000)))
    .addOption(new Option('--host-keep-alive-ms <ms>', 'idle time in host memory after the swap-out before the model is unloaded (default: the gateway\'s)').argParser(parseIntIn(0, 86_400_000)))
    .addOption(new Option('--no-hash', 'let the gateway inspect and hash the files instead of this machine'))
    .addOption(jsonOption());
  adminOptions().forEach((o) => register.addOption(o));
  register.action(async (name: string, sourceArg: string, flags: RegisterFlags) => {
    const client = new AdminClient(flags.gateway, flags.adminToken ?? null);
    const source = await toSourceUri(sourceArg);
    const files = flags.hash ? await digestModel(source) : null;
    const model = await client.registerModel({
      name,
      source,
      files,
      ttftSloMs: flags.ttftSloMs ?? null,
      gpuKeepAliveMs: flags.gpuKeepAliveMs ?? null,
      hostKeepAliveMs: flags.hostKeepAliveMs ?? null,
    });
    if (flags.json === true) {
      printJson(model);
    } else {
      printText(`registered ${model.name}\n\n` + formatFields(modelFields(model)));
    }
  });

  const ls = models.command('ls').description('list registered models').addOption(jsonOption());
  adminOptions().forEach((o) => ls.addOption(o));
  ls.action(async (flags: ListFlags) => {
    const list = await new AdminClient(flags.gateway, flags.adminToken ?? null).listModels();
    if (flags.json === true) {
      printJson(list);
    } else {
      printText(formatModelTable(list));
    }
  });

  const rm = models.command('rm').description('remove a model from the registry').argument('<name>').addOption(jsonOption());
  adminOptions().forEach((o) => rm.addOption(o));
  rm.action(async (name: string, flags: ListFlags) => {
    await new AdminClient(flags.gateway, flags.adminToken ?? null).deleteModel(name);
    if (flags.json === true) {
      printJson({ deleted: name });
    } else {
      printText(`removed ${name}\n`);
    }
  });
}

export function formatModelTable(list: ModelRecord[]): string {
  return formatTable(
    ['NAME', 'ARCH', 'PARAMS', 'SIZE', 'LAYERS', 'CONTEXT', 'TTFT SLO', 'SOURCE'],
    list.map((m) => [
      m.name,
      m.architecture,
      formatCount(m.parameters),
      formatBytes(m.bytes),
      String(m.layers),
      String(m.contextLength),
      m.ttftSloMs === null ? '-' : `${m.ttftSloMs} ms`,
      m.source,
    ]),
  );
}

function modelFields(m: ModelRecord): [string, string][] {
  return [
    ['name', m.name],
    ['source', m.source],
    ['architecture', m.architecture],
    ['parameters', formatCount(m.parameters)],
    ['size', `${formatBytes(m.bytes)} in ${m.files.length} files`],
    ['layers', String(m.layers)],
    ['context', `${m.contextLength} tokens`],
    ['ttft slo', m.ttftSloMs === null ? '-' : `${m.ttftSloMs} ms`],
    ['gpu keep-alive', m.gpuKeepAliveMs === null ? 'gateway default' : `${m.gpuKeepAliveMs} ms`],
    ['host keep-alive', m.hostKeepAliveMs === null ? 'gateway default' : `${m.hostKeepAliveMs} ms`],
  ];
}
