// The promises the README makes at its top: the start line and the test line are the first
// commands in it, CI (.ci/run) runs exactly the test line, and scripts/setup-debian.sh is
// idempotent — it installs only missing packages, runs apt-get update once, and uses sudo
// only when not root, and while it installs a policy-rc.d keeps packages from starting
// services. The setup script runs against stub dpkg-query/apt-get/sudo/id.
import { spawnSync } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const root = fileURLToPath(new URL('../../', import.meta.url));
const START_LINE = 'bash scripts/setup-debian.sh && npm ci && npx paraserve up';
const TEST_LINE = 'bash scripts/setup-debian.sh && npm ci && npm test';

/** Command lines of the README's fenced sh blocks before its first section heading. */
async function quickStartLines(): Promise<string[]> {
  const readme = await readFile(join(root, 'README.md'), 'utf8');
  const top = readme.slice(0, readme.indexOf('\n## '));
  return [...top.matchAll(/```sh\n([\s\S]*?)```/g)].flatMap((m) => (m[1] ?? '').split('\n').filter((l) => l.trim() !== ''));
}

t.test('the README starts with the start line and the test line', async (t) => {
  t.same(await quickStartLines(), [START_LINE, TEST_LINE]);
});

t.test('.ci/run runs exactly the README test line', async (t) => {
  const script = await readFile(join(root, '.ci/run'), 'utf8');
  t.match(script, /^#!\/usr\/bin\/env bash\n/);
  t.match(script, /\nset -euo pipefail\n/);
  const commands = script.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('#') && !l.startsWith('set ') && !l.startsWith('cd '));
  t.same(commands, [TEST_LINE]);
  for (const file of ['.ci/run', 'scripts/setup-debian.sh']) {
    t.ok(((await stat(join(root, file))).mode & 0o111) !== 0, `${file} is executable`);
    t.equal(spawnSync('bash', ['-n', join(root, file)]).status, 0, `${file} parses`);
  }
});

interface SetupRun {
  status: number | null;
  calls: string[];
  stdout: string;
  /** The policy file after the run ('' when absent). */
  policyAfter: string;
}

/**
 * Runs setup-debian.sh with stubs: `installed` packages are present, uid is the caller's
 * choice, `policy` the policy-rc.d there before (null: none).
 */
async function runSetup(installed: string[], uid: number, policy: string | null = null): Promise<SetupRun> {
  const dir = await mkdtemp(join(tmpdir(), 'paraserve-setup-'));
  try {
    const log = join(dir, 'calls.log');
    const policyFile = join(dir, 'policy-rc.d');
    if (policy !== null) await writeFile(policyFile, policy);
    const stub = async (name: string, body: string): Promise<void> => {
      await writeFile(join(dir, name), `#!/usr/bin/env bash\n${body}\n`);
      await chmod(join(dir, name), 0o755);
    };
    await stub('dpkg-query', `for p in ${installed.join(' ')}; do [ "\${@: -1}" = "$p" ] && { printf 'install ok installed'; exit 0; }; done; exit 1`);
    await stub('apt-get', `echo "apt-get $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND policy=$(${policyFile} x start; echo $?)" >> ${log}`);
    await stub('sudo', `echo "sudo" >> ${log}; exec "$@"`);
    await stub('id', `echo ${uid}`);
    const r = spawnSync('bash', [join(root, 'scripts/setup-debian.sh')], {
      env: { ...process.env, PATH: `${dir}:${process.env.PATH ?? ''}`, PARASERVE_POLICY_RC_D: policyFile },
      encoding: 'utf8',
    });
    const calls = (await readFile(log, 'utf8').catch(() => '')).split('\n').filter((l) => l !== '');
    return { status: r.status, calls, stdout: r.stdout, policyAfter: await readFile(policyFile, 'utf8').catch(() => '') };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

t.test('setup-debian.sh installs only what is missing', async (t) => {
  const all = ['cmake', 'g++', 'make', 'python3', 'systemd', 'swift', 'swift-proxy', 'swift-account', 'swift-container', 'swift-object', 'memcached', 'curl'];
  const nothing = await runSetup(all, 0);
  t.equal(nothing.status, 0);
  t.same(nothing.calls, [], 'no apt-get when everything is installed');
  t.match(nothing.stdout, /already installed/);

  const asRoot = await runSetup(all.filter((p) => p !== 'python3' && p !== 'systemd'), 0);
  t.equal(asRoot.status, 0);
  t.same(asRoot.calls, [
    'apt-get update -q DEBIAN_FRONTEND=noninteractive policy=101',
    'apt-get install -y -q --no-install-recommends python3 systemd DEBIAN_FRONTEND=noninteractive policy=101',
  ], 'services are forbidden while installing');
  t.equal(asRoot.policyAfter, '', 'the temporary policy is removed');

  const kept = await runSetup(all.filter((p) => p !== 'memcached'), 0, '#!/bin/sh\nexit 0\n');
  t.equal(kept.status, 0);
  t.same(kept.calls, [
    'apt-get update -q DEBIAN_FRONTEND=noninteractive policy=101',
    'apt-get install -y -q --no-install-recommends memcached DEBIAN_FRONTEND=noninteractive policy=101',
  ]);
  t.equal(kept.policyAfter, '#!/bin/sh\nexit 0\n', 'an existing policy is put back');

  const asUser = await runSetup(all.filter((p) => p !== 'systemd'), 1000);
  t.equal(asUser.status, 0);
  t.same(asUser.calls, [
    'sudo',
    'apt-get update -q DEBIAN_FRONTEND=noninteractive policy=101',
    'apt-get install -y -q --no-install-recommends systemd DEBIAN_FRONTEND=noninteractive policy=101',
  ]);
});
