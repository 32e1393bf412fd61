// The synthetic models whose outputs Hugging Face transformers computed for us (fixtures in
// test/reference/fixtures). One list, read by the generator script and by the CI test, so the
// test regenerates exactly the checkpoints the reference saw (it checks their sha256 too).
import type { DType } from '../../worker/native/addon-types.js';

export interface ReferenceCase {
  /** Fixture file name without .json. */
  name: string;
  preset: string;
  dtype: DType;
}

export const REFERENCE_SEED = 1234;

/** Every architecture of the Llama family we support, and every weight dtype. */
export const REFERENCE_CASES: readonly ReferenceCase[] = [
  { name: 'tiny-llama2-f16', preset: 'tiny-llama2', dtype: 'f16' },
  { name: 'tiny-llama3-bf16', preset: 'tiny-llama3', dtype: 'bf16' },
  { name: 'tiny-mistral-f32', preset: 'tiny-mistral', dtype: 'f32' },
  { name: 'tiny-qwen2-bf16', preset: 'tiny-qwen2', dtype: 'bf16' },
];

/**
 * Checkpoints the GPU test compares the CUDA backend on against transformers run live on
 * the GPU machine (scripts/reference/hf_gpu_reference.py): every architecture in both
 * half-precision types, and a ~1B shape.
 */
export const GPU_REFERENCE_CASES: readonly ReferenceCase[] = [
  ...['tiny-llama2', 'tiny-llama3', 'tiny-mistral', 'tiny-qwen2', 'llama-1b'].flatMap((preset) =>
    (['bf16', 'f16'] as const).map((dtype) => ({ name: `${preset}-${dtype}`, preset, dtype })),
  ),
];
