// Every figure the simulator's latency model uses, in one place with its source, so that GPU
// runs can replace assumptions with measurements without touching the model. Each constant
// says whether it is MEASURED (and where) or ASSUMED (and why that value). Model shapes are the
// project's own make-model presets (worker/models/synthetic.ts), so byte counts and layer
// profiles are exact, not guessed.
import { parseModelConfig } from '../../worker/models/config.js';
import type { TensorInfo } from '../../worker/models/safetensors.js';
import { expectedTensorNames, stageByteProfile, type StageByteProfile } from '../../worker/models/stage-plan.js';
import { MODEL_PRESETS, presetConfigJson } from '../../worker/models/synthetic.js';

export interface Calibration {
  /** Pinned host→device copy per GPU, bytes/s. */
  hostToGpuBytesPerS: number;
  /** GPU→GPU copy within a server (NVLink), bytes/s. */
  peerBytesPerS: number;
  /** Fixed cost of a swap-in or move beyond the bytes (allocation, stream setup), ms. */
  swapFixedMs: number;
  /** Fetch bandwidth from model storage per server, bytes/s. */
  fetchBytesPerS: number;
  /** Runtime init of a fresh instance (CUDA context, cuBLAS, KV cache), ms. */
  initMs: number;
  /** Device memory a GPU offers to weights and KV caches, bytes. */
  gpuBytes: number;
  /** Host memory a server gives its model cache, bytes. */
  hostCacheBytes: number;
  /** Device memory bandwidth decode streams weights at (HBM, achieved), bytes/s. */
  hbmBytesPerS: number;
  /** Dense bf16 throughput a prefill achieves, FLOP/s. */
  prefillFlopsPerS: number;
  /** Per-layer kernel launch and sync cost of one forward, ms (a floor for tiny batches). */
  perLayerStepMs: number;
}

export const CALIBRATION: Readonly<Calibration> = {
  // MEASURED: a 13.5 GB swap-in from the pinned host cache ran at 54.7 GB/s (one plain
  // cudaMemcpyAsync: 55.1 GB/s) on the GPU machine's H200, PCIe 5.0 x16 (bench/gpu-model.ts,
  // bench/RESULTS.md, 2026-11-28).
  hostToGpuBytesPerS: 54.7e9,
  // ASSUMED: NVLink 4 peer copies between H100s run well above 100 GB/s; 150 GB/s achieved.
  peerBytesPerS: 150e9,
  // MEASURED: the same swap-in took 1.6 ms longer than the plain copy (stage creation from
  // the device's memory pool, streams, events, binding 291 tensors).
  swapFixedMs: 2,
  // ASSUMED: 10 Gbit/s per server, the issue-4 benchmark's per-worker cap (COLD_START_DEFAULTS).
  fetchBytesPerS: 1.25e9,
  // ASSUMED: CUDA context, cuBLAS handle and KV cache allocation take about a second
  // (COLD_START_DEFAULTS.initMs); the CPU runs measured 2 ms, which is not a GPU figure.
  initMs: 1_000,
  // H100 80 GB less ~4 GB for the CUDA context and workspace.
  gpuBytes: 76e9,
  // ASSUMED: a 2 TB server (DGX H100, p5.48xlarge) gives 1.5 TB to the pinned model cache.
  hostCacheBytes: 1.5e12,
  // MEASURED: batch-1 decode of the 7B shape at 174 tok/s streams 13.5 GB per token:
  // 2.35 TB/s achieved (H200; its device-to-device copy measured 4.2 TB/s).
  hbmBytesPerS: 2.35e12,
  // MEASURED: a 1,000-token prefill of the 7B shape ran at 33,245 tok/s, 2 × 6.7e9 FLOP per
  // token: 445 TFLOP/s (H200).
  prefillFlopsPerS: 445e12,
  // ASSUMED: ~10 kernels per layer at ~5 µs each without CUDA graphs.
  perLayerStepMs: 0.05,
};

/** One class of model in the simulated catalogue. */
export interface ModelClass {
  /** make-model preset name. */
  preset: string;
  /** Share of registered models of this class. */
  weight: number;
  /** Weight bytes (bf16/f16 as the preset says), from the preset's tensor shapes. */
  bytes: number;
  /** Bytes per layer and end. */
  profile: StageByteProfile;
  /** Parameters (bytes / 2). */
  params: number;
  layers: number;
  /** KV cache an instance allocates for its batch, bytes. */
  kvBytes: number;
  /** Time-to-first-token SLO of models of this class, ms. */
  ttftSloMs: number;
  /** Requests one instance batches. */
  maxBatch: number;
}

/** Bytes, per-layer profile and KV bytes per token of a make-model preset, 2 bytes per value. */
export function presetProfile(preset: string): { profile: StageByteProfile; bytes: number; layers: number; kvBytesPerToken: number } {
  const p = MODEL_PRESETS[preset];
  if (!p) throw new RangeError(`unknown preset ${preset}`);
  const config = parseModelConfig(presetConfigJson(p, 'bf16', 1, 2));
  const tensors = new Map<string, TensorInfo>();
  let offset = 0;
  for (const [name, shape] of expectedTensorNames(config)) {
    const bytes = shape.reduce((a, b) => a * b, 2);
    tensors.set(name, { name, dtype: 'bf16', shape, file: 'model.safetensors', begin: offset, end: offset + bytes });
    offset += bytes;
  }
  const kvBytesPerToken = 2 * 2 * config.numLayers * config.numKeyValueHeads * config.headDim;
  return { profile: stageByteProfile(tensors, config), bytes: offset, layers: config.numLayers, kvBytesPerToken };
}

/** Tokens of context an instance's KV cache reserves per batch slot (ASSUMED: prompt p90 + output p90 ≈ 3k of the Azure conversation trace, rounded down to 2k since few requests reach both). */
export const KV_TOKENS_PER_SLOT = 2048;

/**
 * The catalogue's mix: mostly small shapes, as a serverless platform's long tail is.
 * ASSUMED shares. TTFT SLOs (ASSUMED, as ParaServe sets them: seconds) are met by a warm copy
 * or a host swap-in (tens of ms) and by a pipelined cold start from storage on idle links
 * (~1–1.5 s), not by a serial one (fetch, then init, then copy: 3–12 s). Batch sizes are what
 * a KV cache of a few GB holds at KV_TOKENS_PER_SLOT tokens a slot.
 */
export function modelClasses(): ModelClass[] {
  const spec: { preset: string; weight: number; ttftSloMs: number; maxBatch: number }[] = [
    { preset: 'llama-1b', weight: 0.7, ttftSloMs: 2_000, maxBatch: 16 },
    { preset: 'llama-3b', weight: 0.25, ttftSloMs: 3_000, maxBatch: 8 },
    { preset: 'llama-7b', weight: 0.05, ttftSloMs: 5_000, maxBatch: 4 },
  ];
  return spec.map((s) => {
    const { profile, bytes, layers, kvBytesPerToken } = presetProfile(s.preset);
    return { ...s, bytes, profile, params: bytes / 2, layers, kvBytes: s.maxBatch * KV_TOKENS_PER_SLOT * kvBytesPerToken };
  });
}
