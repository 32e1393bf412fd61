// Writes the reference cases' checkpoints into a folder, to be carried to the GPU machine
// where scripts/reference/hf_reference.py runs transformers on them:
//   node dist/scripts/reference/make-models.js OUT_DIR         → OUT_DIR/<case name>/...
//   node dist/scripts/reference/make-models.js --gpu OUT_DIR   → the GPU test's cases
// A case whose folder already holds a config.json is kept (the bytes only depend on the case).
import { existsSync } from 'node:fs';
import path from 'node:path';
import { writeSyntheticModel } from '../../worker/models/synthetic.js';
import { GPU_REFERENCE_CASES, REFERENCE_CASES, REFERENCE_SEED } from './cases.js';

const gpu = process.argv[2] === '--gpu';
const outDir = process.argv[gpu ? 3 : 2];
if (outDir === undefined) {
  process.stderr.write('usage: make-models.js [--gpu] OUT_DIR\n');
  process.exit(2);
}
for (const c of gpu ? GPU_REFERENCE_CASES : REFERENCE_CASES) {
  const dir = path.join(outDir, c.name);
  if (!existsSync(path.join(dir, 'config.json'))) {
    await writeSyntheticModel({ dir, preset: c.preset, seed: REFERENCE_SEED, dtype: c.dtype, sharded: false }, null);
  }
  process.stdout.write(`${c.name}: ${c.preset} ${c.dtype}\n`);
}
