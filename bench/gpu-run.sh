#!/usr/bin/env bash
# Sessions on the GPU machine (see ../shared/device/README.md for carrying Node.js there), in
# steps, default all but coldstart:
#   test      build the CUDA backend, run the GPU tests against transformers (npm run test:gpu)
#   links     the NCCL link tests alone (test/gpu/cuda-links.test.ts; two GPUs, else they skip)
#   bench     issue 3's benchmarks (bench/gpu-model.ts), transformers' speed as the baseline
#   serve     `paraserve up` serves a completion from the GPU
#   suite     the integration tests (real processes) with the CUDA build
#   sharing   GPU sharing under a bursty load vs no swapping (bench/gpu-sharing.ts)
#   fetchpath a worker's main-thread time per GB fetched vs a plain receive (bench/fetch-path.ts)
#   coldstart cold start by pipeline degree on a 7B shape, one worker per GPU (bench/coldstart.ts;
#             degrees from COLDSTART_DEGREES, default 1,2,4; cold starts per configuration from
#             COLDSTART_REPEATS, default 1)
# Logs and JSON results go to $OUT (or ./gpu-out). Exit status 1 when a step failed.
set -uo pipefail
out="${OUT:-gpu-out}"
mkdir -p "$out"
steps="${*:-test bench serve sharing suite}"
scratch="${TMPDIR:-/tmp}/paraserve-gpu"
mkdir -p "$scratch"
export PARASERVE_GPU_REFERENCE_DIR="$scratch/reference"
cli="node dist/gateway/cli/main.js"
status=0
fail() { echo "STEP FAILED: $1"; status=1; }
model() { [[ -f "$scratch/$1/config.json" ]] || $cli make-model --preset "$1" --dtype "$2" --out "$scratch/$1" >/dev/null; }

for step in $steps; do
  echo "=== $step $(date +%T)"
  case "$step" in
    test)
      node scripts/test-gpu.mjs > "$out/test-gpu.log" 2>&1 || fail test
      grep -E "^(ok|not ok)|passed|failed" "$out/test-gpu.log" | tail -8 ;;
    links)
      npx tap test/gpu/cuda-links.test.ts > "$out/links.log" 2>&1 || fail links
      grep -E "^ *(ok|not ok)|# |passed|failed" "$out/links.log" | tail -40 ;;
    bench)
      model llama-7b f16 && model llama-8b bf16
      python3 scripts/reference/hf_speed.py "$scratch/llama-7b" 128 1000 > "$out/hf-speed-7b.json" 2> "$out/hf-speed.log" || fail hf-speed
      node dist/bench/gpu-model.js --model "$scratch/llama-7b" --ttft-model "$scratch/llama-8b" --hf "$out/hf-speed-7b.json" \
        --out "$out/gpu-model.json" > "$out/gpu-model.log" 2>&1 || fail bench
      tail -9 "$out/gpu-model.log" ;;
    serve)
      $cli up --port 18080 --data-dir "$scratch/up" > "$out/up.log" 2>&1 &
      up=$!
      # Ready once a worker is READY and the demo model is registered.
      for _ in $(seq 240); do
        curl -sf localhost:18080/admin/workers | grep -q '"state":"READY"' && curl -sf localhost:18080/v1/models | grep -q demo && break
        sleep 0.5
      done
      curl -sf localhost:18080/v1/completions -H 'content-type: application/json' \
        -d '{"model":"demo","prompt":"Hello","max_tokens":8}' > "$out/up-completion.json" || fail serve
      curl -sf localhost:18080/admin/workers > "$out/up-workers.json" || fail serve-workers
      kill -INT $up; wait $up
      grep -o '"backend":"[a-z]*"' "$out/up-workers.json" | sort | uniq -c
      head -c 300 "$out/up-completion.json"; echo ;;
    suite)
      npx tap test/integration/ > "$out/suite.log" 2>&1 || fail suite
      tail -4 "$out/suite.log" ;;
    sharing)
      node dist/bench/gpu-sharing.js --models 60 --duration-s 45 --slo-ms 300 > "$out/gpu-sharing.log" 2>&1 || fail sharing
      tail -6 "$out/gpu-sharing.log" ;;
    fetchpath)
      node dist/bench/fetch-path.js > "$out/fetch-path.log" 2>&1 || fail fetchpath
      tail -9 "$out/fetch-path.log" ;;
    coldstart)
      gpus=$(nvidia-smi -L | wc -l)
      node dist/bench/coldstart.js --preset llama-7b --fetch-bandwidth 10Gbit --degrees "${COLDSTART_DEGREES:-1,2,4}" --repeats "${COLDSTART_REPEATS:-1}" --gpus "$gpus" \
        --worker-host-cache 20GiB --chunk-bytes 4194304 --store-processes 4 > "$out/coldstart.log" 2>&1 || fail coldstart
      tail -12 "$out/coldstart.log" ;;
    *) fail "unknown step $step" ;;
  esac
done
nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv > "$out/gpu.csv" 2>&1
exit $status
