// Writes the reference cases' checkpoints into a folder, to be carried to the GPU machine
// where scripts/reference/hf_reference.py runs transformers on them:
//   node dist/scripts/reference/make-models.js OUT_DIR   → OUT_DIR/<case name>/...
import path from 'node:path';
import { writeSyntheticModel } from '../../worker/models/synthetic.js';
import { REFERENCE_CASES, REFERENCE_SEED } from './cases.js';

const outDir = process.argv[2];
if (outDir === undefined) {
  process.stderr.write('usage: make-models.js OUT_DIR\n');
  process.exit(2);
}
for (const c of REFERENCE_CASES) {
  await writeSyntheticModel({ dir: path.join(outDir, c.name), preset: c.preset, seed: REFERENCE_SEED, dtype: c.dtype, sharded: false }, null);
  process.stdout.write(`${c.name}: ${c.preset} ${c.dtype}\n`);
}
