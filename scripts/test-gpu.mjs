#!/usr/bin/env node
// `npm run test:gpu`, on a machine with an NVIDIA GPU: rebuilds the addon with the CUDA
// backend required (PARASERVE_CUDA=ON fails the build when CUDA, cuBLAS or NCCL is missing,
// instead of quietly building CPU only), then runs the GPU tests (test/gpu/), which skip
// elsewhere. Exit status: the first failing step's.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const steps = [
  ['node', ['scripts/build-native.mjs'], { PARASERVE_CUDA: 'ON' }],
  ['npx', ['tap', 'test/gpu/'], {}],
];
for (const [command, args, env] of steps) {
  const run = spawnSync(command, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
  if (run.status !== 0) process.exit(run.status ?? 1);
}
