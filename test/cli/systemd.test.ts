// The unit files are checked by systemd itself (`systemd-analyze verify`: unknown keys, bad
// values, an ExecStart binary it cannot find), plus the properties the deployment relies on:
// Type=notify readiness, the env files, drain on SIGTERM, a dedicated user and hardening.
// systemd-analyze exits 0 on warnings, so the test fails on any line it prints about a unit.
import { spawnSync } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const unitsDir = fileURLToPath(new URL('../../deploy/systemd/', import.meta.url));
const units = ['paraserve-gateway.service', 'paraserve-worker.service'];

const probe = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' });
const absent = probe.error !== undefined || probe.status !== 0;
if (absent) {
  console.log('# systemd-analyze not found (install systemd: bash scripts/setup-debian.sh); skipping unit verification');
}

/** Lines systemd-analyze prints about the named unit (its warnings and errors). */
function verify(dir: string, unit: string): { status: number | null; complaints: string[] } {
  const r = spawnSync('systemd-analyze', ['verify', '--man=no', join(dir, unit)], { encoding: 'utf8', cwd: dir });
  const lines = `${r.stdout}\n${r.stderr}`.split('\n').filter((l) => l.trim() !== '');
  return { status: r.status, complaints: lines.filter((l) => l.includes(unit)) };
}

/** key → values of one section of a unit file. */
function section(text: string, name: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header !== null) {
      current = header[1] ?? '';
      continue;
    }
    const eq = line.indexOf('=');
    if (current !== name || eq < 0) continue;
    const key = line.slice(0, eq);
    out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1)]);
  }
  return out;
}

for (const unit of units) {
  t.test(`${unit} passes systemd-analyze verify`, { skip: absent ? 'systemd-analyze is not installed' : false }, async (t) => {
    const result = verify(unitsDir, unit);
    t.equal(result.status, 0, 'systemd-analyze verify exits 0');
    t.same(result.complaints, [], 'no warnings about the unit');
  });

  t.test(`${unit} declares what the deployment relies on`, async (t) => {
    const text = await readFile(join(unitsDir, unit), 'utf8');
    const service = section(text, 'Service');
    const role = unit.includes('gateway') ? 'gateway' : 'worker';
    t.same(service.get('Type'), ['notify']);
    t.same(service.get('ExecStart'), [`/usr/bin/env paraserve ${role}`]);
    t.same(service.get('EnvironmentFile'), [`-/etc/paraserve/${role}.env`]);
    t.same(service.get('Restart'), ['on-failure']);
    t.same(service.get('KillSignal'), ['SIGTERM']);
    t.match(service.get('TimeoutStopSec')?.[0] ?? '', /^\d+s$/);
    t.same(service.get('User'), ['paraserve']);
    t.same(service.get('NoNewPrivileges'), ['yes']);
    t.same(service.get('ProtectSystem'), ['strict']);
    t.same(service.get('PrivateTmp'), ['yes']);
    t.ok(service.get('ReadWritePaths')?.includes('/var/lib/paraserve'), 'data dir writable');
    t.ok(section(text, 'Unit').get('After')?.includes('network-online.target'), 'after network-online');
    const example = await readFile(join(unitsDir, `${role}.env.example`), 'utf8');
    t.match(example, /^PARASERVE_[A-Z_]+=/m, 'example env file sets PARASERVE_ variables');
  });
}

t.test('the warning filter sees a broken unit', { skip: absent ? 'systemd-analyze is not installed' : false }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'paraserve-units-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const unit = 'paraserve-broken.service';
  await copyFile(join(unitsDir, 'paraserve-worker.service'), join(dir, unit));
  const text = await readFile(join(dir, unit), 'utf8');
  await writeFile(join(dir, unit), text.replace('[Service]\n', '[Service]\nTimeoutStopSecs=5\n'));
  t.not(verify(dir, unit).complaints.length, 0, 'an unknown key is reported');
});
