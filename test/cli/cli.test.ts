// The CLI as operators meet it: a child process (`node dist/gateway/cli/main.js`, built by
// `npm test`). Every command has --help; bad arguments and unreachable gateways end in one
// line `paraserve: <reason>` and a non-zero exit, with nothing on stdout; make-model writes
// a deterministic checkpoint and describes it with --json.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import t, { type Test } from 'tap';
import { buildProgram } from '../../gateway/cli/program.js';
import { cliEnv, cliPath, missingBuild, runCli, type CliResult } from './run-cli.js';

/** Every command path: [], ['up'], ['models', 'register'], … */
function commandPaths(cmd: Command, prefix: string[] = []): string[][] {
  return [prefix, ...cmd.commands.flatMap((c) => commandPaths(c, [...prefix, c.name()]))];
}

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

function oneErrorLine(t: Test, r: CliResult, pattern: RegExp): void {
  t.not(r.code, 0, 'non-zero exit');
  t.equal(r.stdout, '', 'nothing on stdout');
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  t.equal(lines.length, 1, `one line on stderr: ${JSON.stringify(r.stderr)}`);
  t.match(lines[0] ?? '', /^paraserve: /);
  t.match(lines[0] ?? '', pattern);
}

if (!existsSync(cliPath)) {
  t.fail(missingBuild);
} else {
  t.test('--help on every command exits 0', async (t) => {
    const paths = commandPaths(buildProgram());
    t.ok(paths.length >= 18, `${paths.length} commands`);
    for (const name of ['up', 'gateway', 'worker', 'store serve', 'models register', 'models ls', 'models rm', 'workers ls', 'keys create', 'keys ls', 'keys rm', 'status', 'make-model']) {
      t.ok(paths.some((p) => p.join(' ') === name), `has ${name}`);
    }
    const results = await Promise.all(paths.map((p) => runCli([...p, '--help'])));
    paths.forEach((p, i) => {
      const r = results[i];
      t.equal(r?.code, 0, `paraserve ${p.join(' ')} --help`);
      t.match(r?.stdout ?? '', new RegExp(`^Usage: paraserve ${p.join(' ')}`.trimEnd()));
    });
  });

  t.test('bad arguments end in one line and a non-zero exit', async (t) => {
    const cases: [string[], RegExp][] = [
      [['frob'], /unknown command 'frob'/],
      [['models', 'ls', '--bogus'], /unknown option '--bogus'/],
      [['gateway', '--port', '70000'], /--port.*70000.*invalid/],
      [['worker', '--backend', 'gpu'], /Allowed choices are auto, cpu, cuda/],
      [['worker', '--host-cache-bytes', 'lots'], /--host-cache-bytes.*invalid/],
      [['worker', '--fetch-threads', '0'], /--fetch-threads.*invalid/],
      [['models', 'register', 'only-a-name'], /missing required argument 'source'/],
      [['make-model', '--out', 'x'], /--preset <name>.*not specified/],
      [['models', 'ls', '--gateway', 'ftp://x'], /http:\/\/ or https:\/\//],
      [['models', 'register', 'm', 'gs://bucket/m', '--no-hash'], /unsupported model source gs:\/\/bucket\/m/],
      [['models', 'register', 'm', join(tmpdir(), 'paraserve-no-such-model')], /is not a directory/],
    ];
    const results = await Promise.all(cases.map(([args]) => runCli(args)));
    cases.forEach(([args, pattern], i) => {
      t.test(args.join(' '), async (t) => oneErrorLine(t, results[i] ?? { code: null, stdout: '', stderr: '' }, pattern));
    });
  });

  t.test('an unreachable gateway is one line with a hint', async (t) => {
    const url = `http://127.0.0.1:${await closedPort()}`;
    const commands = [['models', 'ls'], ['workers', 'ls', '--json'], ['keys', 'create', 'k'], ['status']];
    const results = await Promise.all(commands.map((args) => runCli([...args, '--gateway', url])));
    for (const r of results) {
      oneErrorLine(t, r, new RegExp(`cannot reach the gateway at ${url} \\(is \`paraserve up\` running\\?\\)`));
    }
    const fromEnv = await runCli(['models', 'ls'], { PARASERVE_GATEWAY: url });
    oneErrorLine(t, fromEnv, new RegExp(`gateway at ${url}`));
  });

  t.test('make-model writes a seeded checkpoint and reports it', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'paraserve-make-model-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const r = await runCli(['make-model', '--preset', 'tiny-llama2', '--out', join(dir, 'a'), '--seed', '7', '--json']);
    t.equal(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout) as { dir: string; preset: string; seed: number; files: { path: string; size: number }[]; totalBytes: number };
    t.equal(report.dir, join(dir, 'a'));
    t.equal(report.preset, 'tiny-llama2');
    t.equal(report.seed, 7);
    const paths = report.files.map((f) => f.path);
    for (const name of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors']) {
      t.ok(paths.includes(name), `writes ${name}`);
    }
    for (const f of report.files) {
      t.equal((await stat(join(report.dir, f.path))).size, f.size, `${f.path} size as reported`);
    }
    t.equal(report.totalBytes, report.files.reduce((s, f) => s + f.size, 0));

    const again = await runCli(['make-model', '--preset', 'tiny-llama2', '--out', join(dir, 'b'), '--seed', '7']);
    t.equal(again.code, 0, again.stderr);
    t.match(again.stdout, /^wrote tiny-llama2 \(seed 7, f16\)/);
    t.match(again.stdout, /FILE\s+SIZE\n/);
    const digest = async (d: string): Promise<string> => createHash('sha256').update(await readFile(join(d, 'model.safetensors'))).digest('hex');
    t.equal(await digest(join(dir, 'b')), await digest(join(dir, 'a')), 'same seed, same bytes');

    oneErrorLine(t, await runCli(['make-model', '--preset', 'nope', '--out', join(dir, 'c')]), /unknown preset nope \(choose from: .*tiny-llama2/);
  });

  for (const processes of [1, 3]) t.test(`store serve --processes ${processes} serves ranges and stops on SIGTERM`, async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'paraserve-store-cli-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    await writeFile(join(dir, 'blob.bin'), Buffer.from('0123456789'));
    const child = spawn(process.execPath, [cliPath, 'store', 'serve', '--root', dir, '--port', '0', '--json', '--processes', String(processes)], { env: cliEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(() => child.kill('SIGKILL'));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.includes('\n')) resolve(out.split('\n')[0] ?? '');
      });
      child.on('close', () => reject(new Error('store serve exited before printing its URL')));
    });
    const { url, root } = JSON.parse(line) as { url: string; root: string };
    t.equal(root, dir);
    // Separate connections, so that with several processes each gets some.
    const answers = await Promise.all(
      Array.from({ length: 6 }, async () => {
        const res = await fetch(`${url}/blob.bin`, { headers: { range: 'bytes=2-4', connection: 'close' } });
        return `${res.status} ${await res.text()}`;
      }),
    );
    t.same(answers, Array(6).fill('206 234'));
    child.kill('SIGTERM');
    t.equal(await exited, 0, 'exit 0 on SIGTERM');
  });
}
