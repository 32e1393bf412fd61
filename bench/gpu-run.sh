#!/usr/bin/env bash
# One session on the GPU machine (see ../shared/device/README.md for carrying Node.js there):
# builds the CUDA backend, runs the GPU tests against transformers, then issue 3's
# benchmarks (bench/gpu-model.ts) with transformers' speed as the baseline. Logs and JSON
# results go to $OUT (or ./gpu-out). Steps: all (default) | test | bench.
set -uo pipefail
out="${OUT:-gpu-out}"
mkdir -p "$out"
what="${1:-all}"
scratch="${TMPDIR:-/tmp}/paraserve-gpu"
mkdir -p "$scratch"
export PARASERVE_GPU_REFERENCE_DIR="$scratch/reference"
status=0

if [[ "$what" == all || "$what" == test ]]; then
  node scripts/test-gpu.mjs 2>&1 | tee "$out/test-gpu.log" | tail -40 || status=1
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
fi
if [[ "$what" == all || "$what" == bench ]]; then
  [[ -f "$scratch/llama-7b/config.json" ]] || node dist/gateway/cli/main.js make-model --preset llama-7b --dtype f16 --out "$scratch/llama-7b" >/dev/null
  [[ -f "$scratch/llama-8b/config.json" ]] || node dist/gateway/cli/main.js make-model --preset llama-8b --dtype bf16 --out "$scratch/llama-8b" >/dev/null
  python3 scripts/reference/hf_speed.py "$scratch/llama-7b" 128 1000 > "$out/hf-speed-7b.json" 2> "$out/hf-speed.log" || status=1
  node dist/bench/gpu-model.js --model "$scratch/llama-7b" --ttft-model "$scratch/llama-8b" --hf "$out/hf-speed-7b.json" \
    --out "$out/gpu-model.json" 2>&1 | tee "$out/gpu-model.log" || status=1
fi
nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv > "$out/gpu.csv" 2>&1
exit $status
