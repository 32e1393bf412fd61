// The admin commands against a real gateway started in-process (startGateway on port 0 with a
// temp data dir): models register (local directory, file:// and http:// through the model
// store, with the CLI's hashes or the gateway's), ls, rm; keys; workers; status; and the
// errors an operator meets — a taken name, a broken checkpoint, an unknown model, a missing
// admin token — each as one line with the gateway's message.
import { existsSync } from 'node:fs';
import { cp, mkdtemp, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { startStore } from '../../gateway/store/server.js';
import { startGateway } from '../../gateway/server.js';
import type { ModelRecord } from '../../gateway/registry/registry.js';
import { writeSyntheticModel } from '../../worker/models/synthetic.js';
import { cliPath, missingBuild, runCli, type CliResult } from './run-cli.js';

function errorLine(r: CliResult): string {
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  return lines.length === 1 && r.code !== 0 && r.stdout === '' ? (lines[0] ?? '') : `not one error line: ${JSON.stringify(r)}`;
}

if (!existsSync(cliPath)) {
  t.fail(missingBuild);
} else {
  const base = await mkdtemp(join(tmpdir(), 'paraserve-cli-models-'));
  t.teardown(() => rm(base, { recursive: true, force: true }));
  const modelsDir = join(base, 'models');
  await writeSyntheticModel({ dir: join(modelsDir, 'tiny'), preset: 'tiny-llama2', seed: 1, dtype: null, sharded: false }, null);

  const gateway = await startGateway({
    host: '127.0.0.1',
    port: 0,
    dataDir: join(base, 'gateway'),
    apiKeys: [],
    adminToken: null,
    logLevel: 'silent',
    requestTimeoutMs: 10_000,
  });
  t.teardown(() => gateway.close());
  const g = ['--gateway', gateway.url];

  t.test('models register, ls and rm', async (t) => {
    const reg = await runCli(['models', 'register', 'tiny', join(modelsDir, 'tiny'), '--ttft-slo-ms', '500', '--json', ...g]);
    t.equal(reg.code, 0, reg.stderr);
    const model = JSON.parse(reg.stdout) as ModelRecord;
    t.equal(model.name, 'tiny');
    t.equal(model.source, pathToFileURL(join(modelsDir, 'tiny')).href, 'a directory becomes a file:// source');
    t.equal(model.architecture, 'llama');
    t.equal(model.layers, 2);
    t.equal(model.ttftSloMs, 500);
    t.ok(model.files.length >= 4);
    t.ok(model.files.every((f) => /^[0-9a-f]{64}$/.test(f.sha256)), 'the CLI sent sha256 digests');

    const store = await startStore({ root: modelsDir, host: '127.0.0.1', port: 0 });
    t.teardown(() => store.close());
    const viaHttp = await runCli(['models', 'register', 'tiny-http', `${store.url}/tiny`, '--json', ...g]);
    t.equal(viaHttp.code, 0, viaHttp.stderr);
    t.same((JSON.parse(viaHttp.stdout) as ModelRecord).files, model.files, 'hashing over HTTP ranges gives the same digests');

    const gatewayHashed = await runCli(['models', 'register', 'tiny-gw', pathToFileURL(join(modelsDir, 'tiny')).href, '--no-hash', ...g]);
    t.equal(gatewayHashed.code, 0, gatewayHashed.stderr);
    t.match(gatewayHashed.stdout, /^registered tiny-gw\n/);
    t.match(gatewayHashed.stdout, /architecture\s+llama/);

    const ls = await runCli(['models', 'ls', ...g]);
    t.equal(ls.code, 0);
    t.match(ls.stdout, /^NAME\s+ARCH\s+PARAMS\s+SIZE\s+LAYERS\s+CONTEXT\s+TTFT SLO\s+SOURCE\n/);
    t.match(ls.stdout, /\ntiny\s+llama\s+\S+\s+\S+ \S+\s+2\s+4096\s+500 ms\s+file:\/\//);
    const lsJson = JSON.parse((await runCli(['models', 'ls', '--json', ...g])).stdout) as ModelRecord[];
    t.same(lsJson.map((m) => m.name).sort(), ['tiny', 'tiny-gw', 'tiny-http']);
    const gw = lsJson.find((m) => m.name === 'tiny-gw');
    t.same(gw?.files, model.files, 'the gateway hashes to the same digests');

    t.match(errorLine(await runCli(['models', 'register', 'tiny', join(modelsDir, 'tiny'), ...g])), /^paraserve: .*already registered.*\(HTTP 409\)$/);

    const rmd = await runCli(['models', 'rm', 'tiny-gw', '--json', ...g]);
    t.equal(rmd.code, 0, rmd.stderr);
    t.same(JSON.parse(rmd.stdout), { deleted: 'tiny-gw' });
    t.match(errorLine(await runCli(['models', 'rm', 'tiny-gw', ...g])), /^paraserve: model 'tiny-gw' is not registered \(HTTP 404\)$/);
  });

  t.test('a broken checkpoint is refused with what is wrong', async (t) => {
    const broken = join(base, 'broken');
    await cp(join(modelsDir, 'tiny'), broken, { recursive: true });
    await truncate(join(broken, 'model.safetensors'), 1000);
    const local = errorLine(await runCli(['models', 'register', 'broken', broken, ...g]));
    t.match(local, /^paraserve: .*model\.safetensors/, 'the CLI names the bad file');
    const remote = errorLine(await runCli(['models', 'register', 'broken', broken, '--no-hash', ...g]));
    t.match(remote, /^paraserve: .*model\.safetensors.*\(HTTP 400\)$/, 'so does the gateway');
    const ls = JSON.parse((await runCli(['models', 'ls', '--json', ...g])).stdout) as ModelRecord[];
    t.notOk(ls.some((m) => m.name === 'broken'));
  });

  t.test('keys create, ls and rm', async (t) => {
    const created = await runCli(['keys', 'create', 'ci', ...g]);
    t.equal(created.code, 0, created.stderr);
    const key = created.stdout.trim();
    t.match(key, /^\S{20,}$/, 'stdout is just the key');
    t.match(created.stderr, /shown only now/);
    const models = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
    t.equal(models.status, 200, 'the key works');
    const ls = JSON.parse((await runCli(['keys', 'ls', '--json', ...g])).stdout) as { name: string }[];
    t.same(ls.map((k) => k.name), ['ci']);
    t.match((await runCli(['keys', 'ls', ...g])).stdout, /^NAME\s+CREATED\nci\s+\S+/);
    t.equal((await runCli(['keys', 'rm', 'ci', ...g])).code, 0);
    t.same(JSON.parse((await runCli(['keys', 'ls', '--json', ...g])).stdout), []);
  });

  t.test('workers ls and status with no workers', async (t) => {
    t.same(JSON.parse((await runCli(['workers', 'ls', '--json', ...g])).stdout), []);
    t.equal((await runCli(['workers', 'ls', ...g])).stdout, '(none)\n');
    const status = JSON.parse((await runCli(['status', '--json', ...g])).stdout) as { health: { status: string }; workers: unknown[]; models: unknown[] };
    t.equal(status.health.status, 'ok');
    t.same(status.workers, []);
    t.equal(status.models.length, 2);
    const human = await runCli(['status', ...g]);
    t.match(human.stdout, new RegExp(`^gateway\\s+${gateway.url} \\(healthy\\)\\nworkers\\s+0\\nmodels\\s+2\\n`));
  });

  t.test('an admin token is required when the gateway has one', async (t) => {
    const locked = await startGateway({
      host: '127.0.0.1',
      port: 0,
      dataDir: join(base, 'locked'),
      apiKeys: [],
      adminToken: 'sekret',
      logLevel: 'silent',
      requestTimeoutMs: 10_000,
    });
    t.teardown(() => locked.close());
    t.match(errorLine(await runCli(['models', 'ls', '--gateway', locked.url])), /^paraserve: .*\(HTTP 401\) \(pass --admin-token or set PARASERVE_ADMIN_TOKEN\)$/);
    t.match(errorLine(await runCli(['models', 'ls', '--gateway', locked.url, '--admin-token', 'wrong'])), /\(HTTP 401\)/);
    const flag = await runCli(['models', 'ls', '--json', '--gateway', locked.url, '--admin-token', 'sekret']);
    t.equal(flag.code, 0, flag.stderr);
    const env = await runCli(['models', 'ls', '--json'], { PARASERVE_GATEWAY: locked.url, PARASERVE_ADMIN_TOKEN: 'sekret' });
    t.equal(env.code, 0, env.stderr);
    t.same(JSON.parse(env.stdout), []);
  });
}
