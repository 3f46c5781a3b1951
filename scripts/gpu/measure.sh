#!/usr/bin/env bash
# The GPU measurements, one step per call: scripts/gpu/measure.sh STEP
#   smoke     pytest -m gpu (the CUDA path on synthetic:tiny)
#   llama-1b  lab experiment, seed and sharegpt-like workloads, every backend/mode
#   anchors   the lab against `vllm bench throughput` (vllm and hf backends) on random 128/128,
#             and the collector's cost (the same vLLM run with the collector off)
#   llama-8b  lab experiment, seed and sharegpt-like workloads, every backend/mode
# Writes $OUT/<step>.log and $OUT/<step>-results.tgz (the run folders, timelines gzipped).
set -uo pipefail
step=$1
out=${OUT:-/tmp/out}
mkdir -p "$out"
source /tmp/b/install.sh
export PYTHONPATH=$PWD:$PYTHONPATH LAB_CACHE_DIR=/tmp/labcache PYTHONUNBUFFERED=1
results=/tmp/lab-results/$step
mkdir -p "$results"
log="$out/$step.log"
lab() { python3 -m lab "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"

random_workload=/tmp/random-128.jsonl
python3 -c "
import json
with open('$random_workload', 'w') as f:
    for _ in range(256):
        f.write(json.dumps({'prompt_tokens': 128, 'output_tokens': 128}) + '\n')"

case "$step" in
smoke)
  python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider 2>&1 | tee -a "$log"
  ;;
llama-1b|llama-8b)
  model=synthetic:$step
  lab models build "$model" 2>&1 | tee -a "$log"
  lab experiment --model "$model" --workload seed --gpu-memory-utilization 0.5 \
      --results "$results" --label "$step-seed" 2>&1 | tee -a "$log"
  lab experiment --model "$model" --workload sharegpt-like --num-requests "${SHAREGPT_REQUESTS:-32}" \
      --batch-size 16 --gpu-memory-utilization 0.5 --results "$results" --label "$step-sharegpt" 2>&1 | tee -a "$log"
  ;;
anchors)
  model=$(lab models build synthetic:llama-1b 2>>"$log" | tail -n1)
  lab experiment --model synthetic:llama-1b --workload "file:$random_workload" --backends hf/batched,vllm \
      --batch-size 256 --gpu-memory-utilization 0.5 --results "$results" --label random128 2>&1 | tee -a "$log"
  lab experiment --model synthetic:llama-1b --workload "file:$random_workload" --backends vllm \
      --gpu-memory-utilization 0.5 --no-collector --results "$results" --label random128-no-collector 2>&1 | tee -a "$log"
  bench=(python3 -m vllm.entrypoints.cli.main bench throughput --model "$model" --dataset-name random
         --random-input-len 128 --random-output-len 128 --num-prompts 256 --seed 0)
  "${bench[@]}" --backend vllm --gpu-memory-utilization 0.5 --no-enable-prefix-caching \
      --output-json "$results/vllm-bench-vllm.json" 2>&1 | tee -a "$log"
  "${bench[@]}" --backend hf --hf-max-batch-size 256 --output-json "$results/vllm-bench-hf.json" 2>&1 | tee -a "$log"
  ;;
*)
  echo "unknown step $step: smoke, llama-1b, anchors or llama-8b" >&2; exit 2 ;;
esac
find "$results" -name timeline.jsonl -exec gzip -9 {} \;
tar -C /tmp/lab-results -czf "$out/$step-results.tgz" "$step"
ls -la "$out"
