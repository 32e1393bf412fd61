// The CUDA backend against Hugging Face transformers on the same GPU and checkpoints.
// `npm run test:gpu` (scripts/test-gpu.mjs) writes the checkpoints and runs
// scripts/reference/hf_gpu_reference.py first, then this test with
// PARASERVE_GPU_REFERENCE_DIR pointing at both; without a CUDA build or that folder it skips.
//
// How we judge, per checkpoint (bf16 and fp16 weights): transformers in the checkpoint's own
// dtype differs from transformers upcast to float32 by some e_hf — the rounding error of half
// precision in that model. Our logits (every position, decoded one token at a time through
// the KV cache) must lie within 2·e_hf + 1e-3 of the float32 reference: no worse than twice
// transformers' own half-precision error. Greedy tokens must equal transformers' (half
// precision) step by step; a first difference is accepted only where transformers' top-2
// logits were within that same tolerance (a near-tie at this precision), and comparison
// stops there, since the continuations legitimately diverge.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { GPU_REFERENCE_CASES } from '../../scripts/reference/cases.js';
import { loadNativeAddon } from '../../worker/native/addon.js';
import { compareGreedy, loadWholeModel, maxAbsDiff } from '../fixtures/whole-model.js';

interface Reference {
  dtype: string;
  vocab: number;
  tokens: number[];
  halfMaxError: number;
  greedy: { prompt: number[]; tokens: number[]; top2Gaps: number[] };
}

const addon = loadNativeAddon();
const info = addon.buildInfo();
const referenceDir = process.env['PARASERVE_GPU_REFERENCE_DIR'] ?? '';
const skip = !info.stageBackends.includes('cuda')
  ? `no CUDA backend in this build: ${info.cudaSkippedReason}`
  : referenceDir === '' || !existsSync(referenceDir)
    ? 'PARASERVE_GPU_REFERENCE_DIR is not set: run npm run test:gpu, which computes the transformers references first'
    : false;

function readLogits(file: string, vocab: number): Float32Array[] {
  const bytes = readFileSync(file);
  const all = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const rows: Float32Array[] = [];
  for (let offset = 0; offset < all.length; offset += vocab) rows.push(all.slice(offset, offset + vocab));
  return rows;
}

for (const c of GPU_REFERENCE_CASES) {
  t.test(c.name, { skip }, async (t) => {
    const reference = JSON.parse(readFileSync(path.join(referenceDir, 'hf', `${c.name}.json`), 'utf8')) as Reference;
    const exact = readLogits(path.join(referenceDir, 'hf', `${c.name}.exact.f32`), reference.vocab);
    const half = readLogits(path.join(referenceDir, 'hf', `${c.name}.half.f32`), reference.vocab);
    const tolerance = 2 * reference.halfMaxError + 1e-3;
    const model = await loadWholeModel(addon, path.join(referenceDir, 'models', c.name), 'cuda', 64);
    t.teardown(model.free);

    let worstExact = 0;
    let worstHalf = 0;
    for (let pos = 0; pos < reference.tokens.length; pos++) {
      const logits = await addon.forward(model.stage, { sequence: 1, position: pos, tokens: Int32Array.of(reference.tokens[pos]!), hidden: null });
      worstExact = Math.max(worstExact, maxAbsDiff(logits, exact[pos]!));
      worstHalf = Math.max(worstHalf, maxAbsDiff(logits, half[pos]!));
    }
    addon.releaseSequence(model.stage, 1);
    t.ok(
      worstExact <= tolerance,
      `decode: max |Δ| vs float32 ${worstExact.toExponential(2)} ≤ ${tolerance.toExponential(2)} (transformers ${reference.dtype}: ${reference.halfMaxError.toExponential(2)}; ours vs transformers ${reference.dtype}: ${worstHalf.toExponential(2)})`,
    );

    const last = await addon.forward(model.stage, { sequence: 2, position: 0, tokens: Int32Array.from(reference.tokens), hidden: null });
    addon.releaseSequence(model.stage, 2);
    const prefillDiff = maxAbsDiff(last, exact[reference.tokens.length - 1]!);
    t.ok(prefillDiff <= tolerance, `prefill: max |Δ| vs float32 ${prefillDiff.toExponential(2)} ≤ ${tolerance.toExponential(2)}`);

    const { prompt, tokens: expected, top2Gaps: gaps } = reference.greedy;
    const { matched, divergedAtTie } = await compareGreedy(addon, model.stage, 3, { prompt, tokens: expected, gaps }, tolerance);
    t.ok(matched === expected.length || divergedAtTie, `greedy: ${matched}/${expected.length} tokens equal transformers'${matched < expected.length ? ', then a near-tie' : ''}`);
  });
}

t.test('a forward started while weights are still being copied waits for each layer', { skip }, async (t) => {
  const c = GPU_REFERENCE_CASES.find((x) => x.preset === 'llama-1b')!;
  const dir = path.join(referenceDir, 'models', c.name);
  const tokens = Int32Array.of(1, 2, 3, 4, 5, 6, 7, 8);
  const settled = await loadWholeModel(addon, dir, 'cuda', 64);
  await addon.awaitStageCopies(settled.stage);
  const expected = await addon.forward(settled.stage, { sequence: 1, position: 0, tokens, hidden: null });
  settled.free();
  const racing = await loadWholeModel(addon, dir, 'cuda', 64);
  t.teardown(racing.free);
  const actual = await addon.forward(racing.stage, { sequence: 1, position: 0, tokens, hidden: null });
  t.equal(maxAbsDiff(actual, expected), 0, 'identical logits whether or not the copies had landed');
});

t.test('a batch of sequences gives each sequence its own logits', { skip }, async (t) => {
  const c = GPU_REFERENCE_CASES.find((x) => x.name === 'tiny-llama3-bf16')!;
  const model = await loadWholeModel(addon, path.join(referenceDir, 'models', c.name), 'cuda', 64);
  t.teardown(model.free);
  const prompts = [Int32Array.of(5, 9, 13), Int32Array.of(2, 4), Int32Array.of(7, 1, 1, 8, 3)];
  const alone = [];
  for (const [i, tokens] of prompts.entries()) {
    alone.push(await addon.forward(model.stage, { sequence: 10 + i, position: 0, tokens, hidden: null }));
    addon.releaseSequence(model.stage, 10 + i);
  }
  const together = await addon.forwardBatch(model.stage, prompts.map((tokens, i) => ({ sequence: 20 + i, position: 0, tokens, hidden: null })));
  for (const [i, logits] of together.entries()) {
    t.ok(maxAbsDiff(logits, alone[i]!) < 1e-2, `sequence ${i}: batched logits match (max |Δ| ${maxAbsDiff(logits, alone[i]!).toExponential(2)})`);
  }
});

const gpuCount = skip === false ? addon.listDevices('cuda').length : 0;
t.test('a stage moved to another GPU gives the same logits', { skip: skip === false && gpuCount < 2 ? `one GPU here (${gpuCount}): a move needs two` : skip }, async (t) => {
  const c = GPU_REFERENCE_CASES.find((x) => x.name === 'llama-1b-bf16')!;
  const model = await loadWholeModel(addon, path.join(referenceDir, 'models', c.name), 'cuda', 64);
  t.teardown(model.free);
  const tokens = Int32Array.of(11, 12, 13, 14);
  const before = await addon.forward(model.stage, { sequence: 1, position: 0, tokens, hidden: null });
  const moved = addon.cloneStage(model.stage, 1);
  t.teardown(() => addon.disposeStage(moved));
  t.comment(`peer access 0 → 1: ${addon.peerAccess('cuda', 0, 1)}`);
  const after = await addon.forward(moved, { sequence: 1, position: 0, tokens, hidden: null });
  t.equal(maxAbsDiff(after, before), 0, 'identical logits on device 1');
});
