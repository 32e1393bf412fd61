// Checks the CPU backend and our tokenizer against Hugging Face transformers and the Rust
// `tokenizers` library. The fixtures were computed on the GPU machine by
// scripts/reference/hf_reference.py (transformers, float32, eager attention, on its CPU)
// from the very checkpoints this test regenerates (same preset, seed and dtype: same sha256).
//
// Tolerances, stated once: every logit within 5e-5 absolute of transformers' (both compute
// in float32 from the same weights; the differences come from summation order). Greedy
// tokens must equal transformers' step by step; where they differ, the reference's top-2
// logits must have been within 2 × the logit tolerance (a near-tie), and we stop comparing
// there since the continuations legitimately diverge.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { REFERENCE_CASES, REFERENCE_SEED } from '../../scripts/reference/cases.js';
import { loadNativeAddon } from '../../worker/native/addon.js';
import { compareGreedy, loadWholeModel, maxAbsDiff } from '../fixtures/whole-model.js';
import { writeSyntheticModel } from '../../worker/models/synthetic.js';
import { ModelTokenizer } from '../../worker/models/tokenizer.js';

const LOGIT_TOLERANCE = 5e-5;
const fixturesDir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');

interface Fixture {
  architecture: string;
  weights: Record<string, string>;
  tokens: number[];
  logits: number[][];
  greedy: { prompt: number[]; tokens: number[]; top2_gaps: number[] };
  tokenizer: { text: string; ids: number[] };
}

const addon = loadNativeAddon();

for (const c of REFERENCE_CASES) {
  const fixtureFile = path.join(fixturesDir, `${c.name}.json`);
  t.test(c.name, async (t) => {
    t.ok(existsSync(fixtureFile), `fixture ${c.name}.json is committed`);
    if (!existsSync(fixtureFile)) return;
    const fixture = JSON.parse(readFileSync(fixtureFile, 'utf8')) as Fixture;
    const dir = await mkdtemp(path.join(os.tmpdir(), `paraserve-ref-${c.name}-`));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    await writeSyntheticModel({ dir, preset: c.preset, seed: REFERENCE_SEED, dtype: c.dtype, sharded: false }, null);

    for (const [file, sha256] of Object.entries(fixture.weights)) {
      const actual = createHash('sha256').update(readFileSync(path.join(dir, file))).digest('hex');
      t.equal(actual, sha256, `${file} has the bytes transformers saw`);
    }

    const model = await loadWholeModel(addon, dir, 'cpu', 256);
    t.teardown(model.free);

    // One token at a time through the KV cache: logits at every position.
    let worst = 0;
    for (let pos = 0; pos < fixture.tokens.length; pos++) {
      const logits = await addon.forward(model.stage, { sequence: 1, position: pos, tokens: Int32Array.of(fixture.tokens[pos]!), hidden: null });
      worst = Math.max(worst, maxAbsDiff(logits, fixture.logits[pos]!));
    }
    t.ok(worst <= LOGIT_TOLERANCE, `decode step by step: max |Δlogit| ${worst.toExponential(2)} ≤ ${LOGIT_TOLERANCE}`);
    addon.releaseSequence(model.stage, 1);

    // One prefill of the whole sequence: logits of its last position.
    const last = await addon.forward(model.stage, { sequence: 2, position: 0, tokens: Int32Array.from(fixture.tokens), hidden: null });
    const prefillDiff = maxAbsDiff(last, fixture.logits[fixture.tokens.length - 1]!);
    t.ok(prefillDiff <= LOGIT_TOLERANCE, `prefill: max |Δlogit| ${prefillDiff.toExponential(2)} ≤ ${LOGIT_TOLERANCE}`);
    addon.releaseSequence(model.stage, 2);

    // Greedy decoding from the prompt.
    const { prompt, tokens: expected, top2_gaps: gaps } = fixture.greedy;
    const { matched, divergedAtTie } = await compareGreedy(addon, model.stage, 3, { prompt, tokens: expected, gaps }, 2 * LOGIT_TOLERANCE);
    t.ok(matched === expected.length || divergedAtTie, `greedy: ${matched}/${expected.length} tokens equal transformers'${divergedAtTie ? ' (then a near-tie)' : ''}`);

    const tokenizer = ModelTokenizer.fromJson(readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'), readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
    t.same(tokenizer.encode(fixture.tokenizer.text, false), fixture.tokenizer.ids, 'tokenizer ids equal the Rust tokenizers library');
  });
}
