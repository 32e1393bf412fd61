// `paraserve up` end to end, as an operator runs it: one command starts the model store, the
// gateway and two worker processes, generates and registers a model, and answers a chat
// completion; SIGINT stops everything with exit 0; a second run on the same data dir
// re-registers the model from its new store port; a worker killed under it makes `up` say
// which one died, stop the rest and exit 1.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { cliEnv, cliPath, missingBuild } from './run-cli.js';

interface UpReady {
  gateway: string;
  store: string;
  workers: string[];
  model: string;
  logs: string;
}

interface RunningUp {
  child: ChildProcessWithoutNullStreams;
  ready: UpReady;
  stderr: () => string;
  exited: Promise<number | null>;
}

async function startUp(dataDir: string): Promise<RunningUp> {
  const child = spawn(
    process.execPath,
    [cliPath, 'up', '--port', '0', '--workers', '2', '--data-dir', dataDir, '--model-preset', 'tiny-llama2', '--backend', 'cpu', '--log-level', 'warn', '--json'],
    { env: cliEnv(), stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const ready = await new Promise<UpReady>((resolve, reject) => {
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
      const line = stdout.split('\n')[0];
      if (stdout.includes('\n') && line !== undefined) resolve(JSON.parse(line) as UpReady);
    });
    void exited.then((code) => reject(new Error(`paraserve up exited (${code}) before it was ready: ${stderr}`)));
  });
  return { child, ready, stderr: () => stderr, exited };
}

async function chat(gateway: string, model: string): Promise<{ status: number; content: unknown; completionTokens: unknown }> {
  const res = await fetch(`${gateway}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Hello!' }], max_tokens: 8 }),
  });
  const body = (await res.json()) as { choices?: { message?: { content?: unknown } }[]; usage?: { completion_tokens?: unknown } };
  return { status: res.status, content: body.choices?.[0]?.message?.content, completionTokens: body.usage?.completion_tokens };
}

/** Child processes of pid whose command line contains word (Linux /proc). */
async function childrenOf(pid: number, word: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (ppid === pid && cmdline.split('\0').includes(word)) found.push(Number(entry));
  }
  return found;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function gatewayGone(url: string): Promise<boolean> {
  return fetch(`${url}/health`).then(
    () => false,
    () => true,
  );
}

if (!existsSync(cliPath)) {
  t.fail(missingBuild);
} else {
  const dataDir = await mkdtemp(join(tmpdir(), 'paraserve-up-'));
  t.teardown(() => rm(dataDir, { recursive: true, force: true }));

  t.test('up serves a chat completion and stops cleanly on SIGINT', async (t) => {
    const up = await startUp(dataDir);
    t.teardown(() => up.child.kill('SIGKILL'));
    t.same(up.ready.workers, ['worker-0', 'worker-1']);
    t.equal(up.ready.model, 'tiny-llama2');
    const workers = (await (await fetch(`${up.ready.gateway}/admin/workers`)).json()) as { data: { id: string; state: string }[] };
    t.same(workers.data.map((w) => `${w.id}:${w.state}`).sort(), ['worker-0:READY', 'worker-1:READY']);
    const reply = await chat(up.ready.gateway, 'tiny-llama2');
    t.equal(reply.status, 200);
    t.type(reply.content, 'string');
    t.ok(typeof reply.completionTokens === 'number' && reply.completionTokens <= 8, 'max_tokens respected');
    up.child.kill('SIGINT');
    t.equal(await up.exited, 0, 'exit 0');
    t.match(up.stderr(), /stopped\n$/);
    t.ok(await gatewayGone(up.ready.gateway), 'the gateway is gone');
    t.ok(existsSync(join(dataDir, 'logs', 'worker-1.log')), 'each child has a log file');
  });

  t.test('a second run re-registers the model; a dead worker stops the cluster', { skip: process.platform !== 'linux' ? 'reads /proc' : false }, async (t) => {
    const up = await startUp(dataDir);
    t.teardown(() => up.child.kill('SIGKILL'));
    const models = (await (await fetch(`${up.ready.gateway}/admin/models`)).json()) as { data: { name: string; source: string }[] };
    t.same(models.data.map((m) => m.source), [`${up.ready.store}/tiny-llama2`], 'registered from this run\'s store');
    t.equal((await chat(up.ready.gateway, 'tiny-llama2')).status, 200);

    const workerPids = await childrenOf(up.child.pid ?? -1, 'worker');
    t.equal(workerPids.length, 2, 'two worker processes');
    process.kill(workerPids[0] ?? -1, 'SIGKILL');
    t.equal(await up.exited, 1, 'exit 1');
    const lines = up.stderr().trim().split('\n');
    t.match(lines[lines.length - 1] ?? '', /^paraserve: worker-[01] exited unexpectedly \(signal SIGKILL\) \(log: .*worker-[01]\.log\)$/);
    t.ok(await gatewayGone(up.ready.gateway), 'the gateway was stopped too');
    t.notOk(alive(workerPids[1] ?? -1), 'the other worker was stopped');
  });
}
