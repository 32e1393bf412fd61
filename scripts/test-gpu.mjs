#!/usr/bin/env node
// `npm run test:gpu`, on a machine with an NVIDIA GPU: rebuilds the addon with the CUDA
// backend required (PARASERVE_CUDA=ON fails the build when CUDA, cuBLAS or NCCL is missing,
// instead of quietly building CPU only), writes the GPU reference checkpoints, has
// transformers compute their references on the same GPU (python3 with torch and
// transformers), then runs the GPU tests (test/gpu/), which skip elsewhere.
// PARASERVE_GPU_REFERENCE_DIR (default: a folder in the temp dir) keeps checkpoints and
// references between runs. Exit status: the first failing step's.
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const referenceDir = process.env.PARASERVE_GPU_REFERENCE_DIR ?? path.join(os.tmpdir(), 'paraserve-gpu-reference');
const { GPU_REFERENCE_CASES } = await import(path.join(root, 'dist', 'scripts', 'reference', 'cases.js'));
const modelsDir = path.join(referenceDir, 'models');
const steps = [
  ['node', ['scripts/build-native.mjs'], { PARASERVE_CUDA: 'ON' }],
  ['node', ['dist/scripts/reference/make-models.js', '--gpu', modelsDir], {}],
  [
    'python3',
    ['scripts/reference/hf_gpu_reference.py', path.join(referenceDir, 'hf'), ...GPU_REFERENCE_CASES.map((c) => `${path.join(modelsDir, c.name)}:${c.name}`)],
    {},
  ],
  ['npx', ['tap', 'test/gpu/'], { PARASERVE_GPU_REFERENCE_DIR: referenceDir }],
];
for (const [command, args, env] of steps) {
  const run = spawnSync(command, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
  if (run.status !== 0) process.exit(run.status ?? 1);
}
