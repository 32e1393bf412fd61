// Issue 3's GPU benchmarks of the CUDA backend, each against a baseline measured in the same
// run (bench/RESULTS.md has the results and how to read them):
//   swap-in      the whole model from pinned host memory onto the GPU (create the stage, bind
//                every tensor, wait for the copies) vs one plain cudaMemcpyAsync of a pinned
//                buffer of the same size, in this process            target ≥ 95 %
//   host → TTFT  the model only in host memory, a 16-token prompt arrives: time to its first
//                token vs copy time + warm time to first token        target ≤ 1.15 ×
//   decode       batch 1, 128 greedy steps: tokens/s vs transformers generate() on the same
//                GPU and checkpoint, and vs the roofline weight bytes ÷ device memory
//                bandwidth (device-to-device copy measured here)      target ≥ 70 % of roofline
//   prefill      a 1,000-token prompt: tokens/s vs transformers
// Usage (GPU machine; transformers' figures from scripts/reference/hf_speed.py):
//   node dist/bench/gpu-model.js --model DIR [--hf hf.json] [--ttft-model DIR8B] [--out result.json]
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { argmax } from '../worker/engine/sampling.js';
import { loadNativeAddon } from '../worker/native/addon.js';
import type { HostBufferHandle, StageHandle, StageSpec, TensorBinding } from '../worker/native/addon-types.js';
import { parseModelConfig } from '../worker/models/config.js';
import { readCheckpointTensors } from '../worker/models/safetensors.js';
import { openModelSource } from '../worker/models/source.js';
import { planStageTensors, stageSpecFor, wholeModelRange } from '../worker/models/stage-plan.js';
import { percentile } from './cluster.js';

const { values: flags } = parseArgs({
  options: {
    model: { type: 'string' },
    'ttft-model': { type: 'string' },
    hf: { type: 'string' },
    out: { type: 'string' },
    repeats: { type: 'string', default: '3' },
  },
});
if (flags.model === undefined) {
  process.stderr.write('usage: gpu-model.js --model DIR [--hf hf.json] [--ttft-model DIR] [--out FILE]\n');
  process.exit(2);
}
const REPEATS = Number(flags.repeats);
const PROMPT = Int32Array.from({ length: 16 }, (_, i) => (7 + 131 * i * i) % 32000);
const DECODE_STEPS = 128;
const PREFILL_TOKENS = 1000;
const addon = loadNativeAddon();

interface HostModel {
  name: string;
  spec: StageSpec;
  bindings: TensorBinding[];
  buffer: HostBufferHandle;
  bytes: number;
}

/** Reads a checkpoint into one pinned host buffer: the model "in the host cache". */
async function loadIntoHost(dir: string): Promise<HostModel> {
  const source = openModelSource(pathToFileURL(dir).href);
  const config = parseModelConfig(JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8')));
  const range = wholeModelRange(config);
  const plan = planStageTensors(await readCheckpointTensors(source), config, range);
  const bytes = plan.reduce((sum, tensor) => sum + (tensor.end - tensor.begin), 0);
  const buffer = addon.allocHostBuffer(bytes, true);
  const bindings: TensorBinding[] = [];
  let offset = 0;
  for (const tensor of plan) {
    addon.writeHostBuffer(buffer, offset, await source.readRange(tensor.file, tensor.begin, tensor.end));
    bindings.push({ name: tensor.name, dtype: tensor.dtype, shape: tensor.shape, buffer, offset });
    offset += tensor.end - tensor.begin;
  }
  return { name: path.basename(dir), spec: stageSpecFor(config, range, 'cuda', 0, 2048), bindings, buffer, bytes };
}

function swapIn(model: HostModel): StageHandle {
  const stage = addon.createStage(model.spec);
  for (const binding of model.bindings) addon.bindTensor(stage, binding);
  return stage;
}

async function seconds(work: () => Promise<unknown>): Promise<number> {
  const start = process.hrtime.bigint();
  await work();
  return Number(process.hrtime.bigint() - start) / 1e9;
}

interface TtftResult {
  copySeconds: number;
  warmTtftSeconds: number;
  hostTtftSeconds: number;
}

async function hostToFirstToken(model: HostModel, copySeconds: number): Promise<TtftResult> {
  const cold: number[] = [];
  let resident: StageHandle | null = null;
  for (let r = 0; r < REPEATS; r++) {
    if (resident !== null) addon.disposeStage(resident);
    let stage: StageHandle | null = null;
    cold.push(await seconds(async () => {
      stage = swapIn(model);
      await addon.forward(stage, { sequence: 1, position: 0, tokens: PROMPT, hidden: null });
    }));
    resident = stage;
  }
  const warm: number[] = [];
  for (let r = 0; r < 5; r++) {
    warm.push(await seconds(() => addon.forward(resident!, { sequence: 100 + r, position: 0, tokens: PROMPT, hidden: null })));
    addon.releaseSequence(resident!, 100 + r);
  }
  addon.disposeStage(resident!);
  return { copySeconds, warmTtftSeconds: percentile(warm, 0.5)!, hostTtftSeconds: percentile(cold, 0.5)! };
}

const model = await loadIntoHost(flags.model);
const gb = (bytes: number): string => (bytes / 1e9).toFixed(2);
process.stdout.write(`${model.name}: ${gb(model.bytes)} GB of weights in pinned host memory\n`);

// Swap-in against one plain copy.
const copySeconds = await addon.measureHostToDevice('cuda', model.buffer, 0);
const swaps: number[] = [];
for (let r = 0; r < REPEATS; r++) {
  let stage: StageHandle | null = null;
  swaps.push(await seconds(async () => {
    stage = swapIn(model);
    await addon.awaitStageCopies(stage);
  }));
  addon.disposeStage(stage!);
}
const swapSeconds = percentile(swaps, 0.5)!;

const ttft = await hostToFirstToken(model, copySeconds);

// Decode and prefill on a resident stage.
const stage = swapIn(model);
await addon.awaitStageCopies(stage);
let logits = await addon.forward(stage, { sequence: 1, position: 0, tokens: PROMPT, hidden: null });
const decodeSeconds = await seconds(async () => {
  for (let step = 0; step < DECODE_STEPS; step++) {
    logits = await addon.forward(stage, { sequence: 1, position: PROMPT.length + step, tokens: Int32Array.of(argmax(logits)), hidden: null });
  }
});
addon.releaseSequence(stage, 1);
const longPrompt = Int32Array.from({ length: PREFILL_TOKENS }, (_, i) => (3 + 17 * i) % model.spec.vocabSize);
const prefills: number[] = [];
for (let r = 0; r < REPEATS; r++) {
  prefills.push(await seconds(() => addon.forward(stage, { sequence: 2, position: 0, tokens: longPrompt, hidden: null })));
  addon.releaseSequence(stage, 2);
}
addon.disposeStage(stage);
const bandwidthBytes = 4 * 2 ** 30;
const memoryBandwidth = (2 * bandwidthBytes) / (await addon.measureDeviceMemory('cuda', 0, bandwidthBytes));
const decodeTokensPerS = DECODE_STEPS / decodeSeconds;
const rooflineTokensPerS = memoryBandwidth / model.bytes;
const prefillTokensPerS = PREFILL_TOKENS / Math.min(...prefills);

interface HfSpeed {
  decodeTokensPerS: number;
  prefillTokensPerS: number;
}
const hf = flags.hf === undefined ? null : (JSON.parse(await readFile(flags.hf, 'utf8')) as HfSpeed);

let ttft8b: (TtftResult & { name: string; bytes: number }) | null = null;
if (flags['ttft-model'] !== undefined) {
  addon.freeHostBuffer(model.buffer);
  const big = await loadIntoHost(flags['ttft-model']);
  const bigCopy = await addon.measureHostToDevice('cuda', big.buffer, 0);
  ttft8b = { name: big.name, bytes: big.bytes, ...(await hostToFirstToken(big, bigCopy)) };
  addon.freeHostBuffer(big.buffer);
}

const ms = (s: number): string => `${(s * 1000).toFixed(1)} ms`;
const rows: string[][] = [
  ['swap-in (host → GPU)', `${ms(swapSeconds)} (${gb(model.bytes / swapSeconds)} GB/s)`, `one cudaMemcpyAsync ${ms(copySeconds)} (${gb(model.bytes / copySeconds)} GB/s)`, `${((copySeconds / swapSeconds) * 100).toFixed(1)} % (target ≥ 95 %)`],
  ['host cache → first token', ms(ttft.hostTtftSeconds), `copy + warm TTFT ${ms(ttft.copySeconds + ttft.warmTtftSeconds)}`, `${(ttft.hostTtftSeconds / (ttft.copySeconds + ttft.warmTtftSeconds)).toFixed(3)} × (target ≤ 1.15)`],
];
if (ttft8b !== null) {
  rows.push([`host cache → first token, ${ttft8b.name} (${gb(ttft8b.bytes)} GB)`, ms(ttft8b.hostTtftSeconds), `copy + warm TTFT ${ms(ttft8b.copySeconds + ttft8b.warmTtftSeconds)}`, `${(ttft8b.hostTtftSeconds / (ttft8b.copySeconds + ttft8b.warmTtftSeconds)).toFixed(3)} × (target < 0.4 s)`]);
}
rows.push(
  ['decode, batch 1', `${decodeTokensPerS.toFixed(1)} tok/s`, `roofline ${rooflineTokensPerS.toFixed(1)} tok/s (${gb(memoryBandwidth)} GB/s)`, `${((decodeTokensPerS / rooflineTokensPerS) * 100).toFixed(1)} % of roofline (target ≥ 70 %)`],
  ['decode vs transformers', `${decodeTokensPerS.toFixed(1)} tok/s`, hf === null ? 'not measured' : `${hf.decodeTokensPerS.toFixed(1)} tok/s`, hf === null ? '' : `× ${(decodeTokensPerS / hf.decodeTokensPerS).toFixed(2)}`],
  [`prefill ${PREFILL_TOKENS} tokens`, `${prefillTokensPerS.toFixed(0)} tok/s`, hf === null ? 'not measured' : `${hf.prefillTokensPerS.toFixed(0)} tok/s`, hf === null ? '' : `× ${(prefillTokensPerS / hf.prefillTokensPerS).toFixed(2)}`],
);
process.stdout.write(`\n| measure | paraserve | baseline | ratio |\n| --- | --- | --- | --- |\n${rows.map((r) => `| ${r.join(' | ')} |`).join('\n')}\n`);
if (flags.out !== undefined) {
  await writeFile(flags.out, JSON.stringify({ model: model.name, bytes: model.bytes, copySeconds, swaps, ttft, ttft8b, decodeTokensPerS, rooflineTokensPerS, memoryBandwidth, prefillTokensPerS, prefills, hf }, null, 2));
}
