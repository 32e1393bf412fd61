// What the binary reports about itself (build info, devices), how a worker picks its
// backend, the error mapping of the loader, and sd_notify.
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';

import t from 'tap';

import { chooseBackend, decideBackend, loadNativeAddon, testLoadInChild } from '../../worker/native/addon.js';
import type { BuildInfo } from '../../worker/native/addon-types.js';
import { BackendUnavailableError, InvalidArgumentError, NativeError, mapNativeError } from '../../worker/native/errors.js';

const addon = loadNativeAddon();

t.test('buildInfo and listDevices', async (t) => {
  t.equal(loadNativeAddon(), addon, 'loaded once per process');
  const info = addon.buildInfo();
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  t.equal(info.version, pkg.version);
  t.equal(info.backends[0], 'cpu');
  t.ok(info.stageBackends.includes('cpu'));
  t.notOk(info.stageBackends.includes('cuda'), 'CUDA cannot run stages yet (issue 3)');
  if (info.backends.includes('cuda')) {
    t.equal(info.cudaSkippedReason, null);
  } else {
    t.type(info.cudaSkippedReason, 'string');
    t.ok((info.cudaSkippedReason ?? '').length > 0, `skipped because: ${info.cudaSkippedReason}`);
    t.same(addon.listDevices('cuda'), []);
  }
  const [cpu, ...others] = addon.listDevices('cpu');
  t.same(others, []);
  t.match(cpu, { index: 0, kind: 'cpu', name: String });
  t.ok((cpu?.totalBytes ?? 0) >= (cpu?.freeBytes ?? 0) && (cpu?.freeBytes ?? 0) > 0);
  t.throws(() => addon.listDevices('gpu' as 'cpu'), { name: 'InvalidArgumentError', message: /backend must be 'cpu' or 'cuda'/ });
});

t.test('decideBackend', async (t) => {
  const cpuOnly: BuildInfo = { backends: ['cpu'], stageBackends: ['cpu'], cudaSkippedReason: 'nvcc not found', version: '0' };
  const cudaListsOnly: BuildInfo = { backends: ['cpu', 'cuda'], stageBackends: ['cpu'], cudaSkippedReason: null, version: '0' };
  const cudaFull: BuildInfo = { backends: ['cpu', 'cuda'], stageBackends: ['cpu', 'cuda'], cudaSkippedReason: null, version: '0' };

  t.same(decideBackend('cpu', cudaFull, 8, null), { backend: 'cpu', reason: 'cpu backend requested' });
  t.same(decideBackend('auto', cudaFull, 2, null), { backend: 'cuda', reason: '2 CUDA device(s) found' });
  t.same(decideBackend('auto', cpuOnly, 0, null), { backend: 'cpu', reason: 'CUDA backend not compiled in: nvcc not found' });
  t.equal(decideBackend('auto', cudaListsOnly, 4, null).backend, 'cpu');
  t.same(decideBackend('auto', cudaFull, 0, null), { backend: 'cpu', reason: 'no CUDA device found' });
  t.match(decideBackend('auto', cudaFull, 0, 'cudaGetDeviceCount failed'), { backend: 'cpu', reason: /listing CUDA devices failed/ });
  t.same(decideBackend('cuda', cudaFull, 1, null).backend, 'cuda');
  t.throws(() => decideBackend('cuda', cpuOnly, 0, null), { name: 'BackendUnavailableError', message: /nvcc not found/ });
  t.throws(() => decideBackend('cuda', cudaFull, 0, null), BackendUnavailableError);
});

t.test('chooseBackend on this machine', async (t) => {
  t.same(chooseBackend('cpu'), { backend: 'cpu', reason: 'cpu backend requested' });
  const auto = chooseBackend('auto');
  t.equal(auto.backend, 'cpu', `auto: ${auto.reason}`);
  t.throws(() => chooseBackend('cuda'), BackendUnavailableError);
});

t.test('a binary is test-loaded in a child first', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'paraserve-native-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const garbage = path.join(dir, 'garbage.node');
  writeFileSync(garbage, 'not an ELF file');
  t.throws(() => testLoadInChild(garbage), { name: 'NativeError', message: /garbage\.node is broken: loading it in a child process exited with 1/ });
  const crashing = path.join(dir, 'crash.js');
  writeFileSync(crashing, "process.kill(process.pid, 'SIGSEGV');");
  t.throws(() => testLoadInChild(crashing), { name: 'NativeError', message: /was killed by SIGSEGV/ });
});

t.test('mapNativeError', async (t) => {
  const named = new Error('bad shape');
  named.name = 'InvalidArgumentError';
  const mapped = mapNativeError(named);
  t.ok(mapped instanceof InvalidArgumentError && mapped instanceof NativeError);
  t.equal(mapped.message, 'bad shape');
  t.equal(mapped.cause, named);
  const range = new RangeError('past the end');
  t.equal(mapNativeError(range), range, 'other errors pass through');
  const odd = new Error('x');
  odd.name = 'constructor';
  t.equal(mapNativeError(odd), odd);
  t.ok(mapNativeError('boom') instanceof NativeError);
  t.throws(() => addon.allocHostBuffer(0, false), InvalidArgumentError, 'the loaded addon maps its errors');
});

t.test('notifySystemd', async (t) => {
  const saved = process.env['NOTIFY_SOCKET'];
  t.teardown(() => {
    if (saved === undefined) delete process.env['NOTIFY_SOCKET'];
    else process.env['NOTIFY_SOCKET'] = saved;
  });
  delete process.env['NOTIFY_SOCKET'];
  t.equal(addon.notifySystemd('READY=1'), false, 'false when NOTIFY_SOCKET is unset');
  process.env['NOTIFY_SOCKET'] = 'relative/socket';
  t.throws(() => addon.notifySystemd('READY=1'), { name: 'InvalidArgumentError', message: /absolute path or start with '@'/ });
  process.env['NOTIFY_SOCKET'] = `/nonexistent-dir-${process.pid}/notify`;
  t.throws(() => addon.notifySystemd('READY=1'), { name: 'NativeError', message: /sending to NOTIFY_SOCKET=.* failed/ });
  t.throws(() => addon.notifySystemd(''), InvalidArgumentError);
});

// Node has no AF_UNIX datagram sockets, so python listens on the abstract socket.
const hasPython = spawnSync('python3', ['--version']).error === undefined;

t.test('notifySystemd delivers to an abstract socket', { skip: hasPython ? false : 'python3 not available' }, async (t) => {
  const saved = process.env['NOTIFY_SOCKET'];
  t.teardown(() => {
    if (saved === undefined) delete process.env['NOTIFY_SOCKET'];
    else process.env['NOTIFY_SOCKET'] = saved;
  });
  const name = `paraserve-test-${process.pid}`;
  const listener = spawn('python3', ['-c', [
    'import socket',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
    `s.bind("\\0${name}")`,
    'print("ready", flush=True)',
    'print(s.recv(4096).decode(), flush=True)',
  ].join('\n')], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: listener.stdout })[Symbol.asyncIterator]();
  t.equal((await lines.next()).value, 'ready');
  process.env['NOTIFY_SOCKET'] = `@${name}`;
  t.equal(addon.notifySystemd('READY=1\nSTATUS=serving'), true);
  t.equal((await lines.next()).value, 'READY=1');
  t.equal((await lines.next()).value, 'STATUS=serving');
  await once(listener, 'exit');
});
