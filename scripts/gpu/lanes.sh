#!/usr/bin/env bash
# measure.sh steps in parallel lanes, one lane per GPU (or per GPU set), on a host of several GPUs.
#
#   scripts/gpu/lanes.sh start PLAN   start the lanes in the background (setsid) and return at once
#   scripts/gpu/lanes.sh wait SECONDS print each lane's progress until every lane is done, or SECONDS
#   scripts/gpu/lanes.sh stop         SIGTERM every running `lab experiment` (a sweep keeps its finished
#                                     points) and start no further step; returns once they exited (90 s at most)
#   scripts/gpu/lanes.sh pack         $OUT/lane-<n>.tgz: each lane's logs and its steps' run folders
#
# PLAN is a file of lines `GPUS STEP [VAR=VALUE ...]` (scripts/gpu/plans/*.txt); the lines of one GPUS
# run one after another in that lane, e.g.
#   0   llama-8b-sharegpt-seq
#   1   smoke GPU_TESTS=tests/gpu/test_hf_continuous_gpu.py
#   2,3 tp-8b TP=2          (starts when the lanes before it that use GPU 2 or GPU 3 are done)
#   0,1,2,3 tp-8b TP=4 STEP_TIMEOUT=600   (stopped after 600 s, so a stalled step cannot hold the lane)
#   0,1,2,3 agree-tp-lab TP=2 ONLY_GPUS=0,1 (on GPUs 0,1, with GPUs 2,3 kept idle: alone on the host)
#   1   online-8b-hf CPUS=16-31  (pinned to CPUs 16-31 with taskset: lanes that share no CPU)
# Each step runs as `LAB_GPUS=GPUS CUDA_VISIBLE_DEVICES=GPUS measure.sh STEP` (the lab then reads NVML
# on those GPUs alone, and the tests' own CUDA calls see them alone), so the lanes' figures stay apart. Steps that need vLLM wait until
# scripts/gpu/stage.sh has installed the bundle (/tmp/b/installed); the transformers-only steps
# (TRANSFORMERS_ONLY below) start at once, while the bundle is still being staged.
# Why lanes: a session's device time buys four times the GPU time on a four-GPU host, and calls
# need not be cut at 560 s: a lane runs on between calls while `wait` keeps the machine held.
# Run it from a copy outside the checkout (`cp -r . /tmp/labsrc`): a later call replaces the
# checkout's files under the running lanes.
# Lanes share the host's CPUs and disk; the manifest of every run records the host, and the README
# says which runs ran beside others.
set -uo pipefail
state=${LANES_STATE:-/tmp/lanes}  # LANES_STATE: another folder (the unit test of this script)
TRANSFORMERS_ONLY=" mixed llama-1b-sharegpt-seq llama-8b-sharegpt-seq llama-8b-sharegpt-static "
TRANSFORMERS_ONLY+=" online-1b-hf online-1b-seq online-8b-hf sharing-1b-hfc hf-steps "

# A lab run that a signal cuts cleanly (it keeps what finished): what `stop` and STEP_TIMEOUT send SIGTERM to
LAB_RUN='python[^ ]* -m lab (experiment|capacity) '

lane_name() { echo "${1//,/_}"; }

shares_gpu() {  # shares_gpu "0,1" "1,2": true when the two GPU lists have a GPU in common
  local a b
  for a in ${1//,/ }; do for b in ${2//,/ }; do [[ $a == "$b" ]] && return 0; done; done
  return 1
}

transformers_only() {  # transformers_only STEP VARS: true when the step needs no vLLM (starts before the bundle)
  local step=$1 vars=$2
  [[ $TRANSFORMERS_ONLY == *" $step "* ]] && return 0
  [[ $step == smoke && $vars == *hf_continuous* ]] && return 0
  [[ $step == make-test && $vars == PYTEST_ARGS=tests/gpu/test_hf_continuous_gpu.py ]] && return 0
  [[ $vars == *BACKENDS=* && $vars != *BACKENDS=*vllm* ]]  # given only transformers backends (BACKENDS=hf/...)
}

descendants() {  # descendants PID: every process under PID, children first
  local child
  for child in $(pgrep -P "$1"); do echo "$child"; descendants "$child"; done
}

stop_step_after() {  # stop_step_after SECONDS PID STATUS: a step's STEP_TIMEOUT
  # SIGTERM to the step's own `lab experiment|capacity` alone, as `stop` does: the lab stops its engines,
  # prints the end of the running backend's log and keeps what finished, while measure.sh and its `tee`
  # live on to log it and pack the step's folders (a SIGTERM to the whole process group killed `tee`
  # first, and the lab's last lines and measure.sh's pack with it, 2026-11-27). A step with no lab
  # running (a bench, a pytest) gets SIGTERM throughout; whatever is left 90 s later, SIGKILL.
  sleep "$1"
  kill -0 "$2" 2> /dev/null || return 0
  echo "$(date -u +%T) STEP_TIMEOUT: stopping the step after $1 s" >> "$3"
  local tree labs; tree=$(descendants "$2")
  labs=$(pgrep -f "$LAB_RUN" | grep -Fx -f <(echo "$tree"))
  # shellcheck disable=SC2086  # one pid a word
  if [[ -n $labs ]]; then kill -TERM $labs 2> /dev/null; else kill -TERM "$2" $tree 2> /dev/null; fi
  for _ in $(seq 18); do kill -0 "$2" 2> /dev/null || return 0; sleep 5; done
  # shellcheck disable=SC2086
  kill -KILL "$2" $(descendants "$2") 2> /dev/null
}

run_lane() {  # run_lane GPUS: that lane's lines of the plan, in order
  local gpus=$1 name; name=$(lane_name "$1")
  local dir=$state/lane-$name
  mkdir -p "$dir/out"
  # A lane starts once every lane before it in the plan that uses one of its GPUs is done (so "2,3"
  # after "2" and "3", and "0,1,2,3" after "0,1").
  local earlier
  for earlier in $(awk '{print $1}' "$state/plan" | awk '!seen[$0]++'); do
    [[ $earlier == "$gpus" ]] && break
    shares_gpu "$earlier" "$gpus" || continue
    echo "$(date -u +%T) waiting for lane $earlier" >> "$dir/status"
    until tail -n1 "$state/lane-$(lane_name "$earlier")/status" 2>/dev/null | grep -q "lane done"; do sleep 5; done
  done
  while read -r lane_gpus step vars; do
    [[ $lane_gpus == "$gpus" ]] || continue
    [[ -f $state/stop ]] && { echo "$(date -u +%T) $step $vars: not started (lanes.sh stop)" >> "$dir/status"; continue; }
    if ! transformers_only "$step" "$vars"; then
      echo "$(date -u +%T) $step: waiting for the vLLM bundle" >> "$dir/status"
      until [[ -f /tmp/b/installed ]]; do sleep 5; done
    fi
    echo "$(date -u +%T) $step $vars: start" >> "$dir/status"
    local t0=$SECONDS limit
    # STEP_TIMEOUT=S among the line's variables: the step is stopped after S seconds as `stop` does
    # (stop_step_after), and the lane goes on
    limit=$(sed -n 's/.*STEP_TIMEOUT=\([0-9][0-9]*\).*/\1/p' <<< "$vars")
    # ONLY_GPUS=0,1 on a line of lane "0,1,2,3": the step runs on GPUs 0,1 while the lane holds all
    # four, so that nothing runs beside it (a measurement that must run alone on the host)
    local use; use=$(sed -n 's/.*ONLY_GPUS=\([0-9,][0-9,]*\).*/\1/p' <<< "$vars")
    # CPUS=0-15 on a line: the step runs under `taskset -c 0-15`, so that lanes on one host do not share
    # CPUs and a step's host-CPU figures (the lab counts the CPUs it may run on) are its own. (It did not
    # cure the eager transformers paths' slowness of 2026-11-27: pinned and alone they were as slow.)
    local cpus pin=(); cpus=$(sed -n 's/.*CPUS=\([0-9,-][0-9,-]*\).*/\1/p' <<< "$vars")
    if [[ -n $cpus ]]; then
      if command -v taskset > /dev/null; then pin=(taskset -c "$cpus")
      else echo "$(date -u +%T) $step: taskset not found, CPUS=$cpus not applied" >> "$dir/status"; fi
    fi
    # shellcheck disable=SC2086  # VAR=VALUE words are meant to split
    "${pin[@]}" env LAB_GPUS="${use:-$gpus}" CUDA_VISIBLE_DEVICES="${use:-$gpus}" CUDA_DEVICE_ORDER=PCI_BUS_ID OUT="$dir/out" $vars \
        scripts/gpu/measure.sh "$step" >> "$dir/$step.stdout" 2>&1 &
    local pid=$! watchdog=
    [[ -n $limit ]] && { stop_step_after "$limit" "$pid" "$dir/status" & watchdog=$!; }
    wait "$pid"
    local rc=$?
    [[ -n $watchdog ]] && kill "$watchdog" 2> /dev/null
    echo "$(date -u +%T) $step $vars: exit $rc after $((SECONDS - t0)) s" >> "$dir/status"
  done < "$state/plan"
  echo "$(date -u +%T) lane done" >> "$dir/status"
}

case "${1:-}" in
start)
  plan=${2:?usage: scripts/gpu/lanes.sh start PLAN}
  mkdir -p "$state"
  grep -v '^\s*#' "$plan" | grep -v '^\s*$' > "$state/plan"
  for gpus in $(awk '{print $1}' "$state/plan" | awk '!seen[$0]++'); do
    setsid nohup bash "$0" run-lane "$gpus" > "$state/lane-$(lane_name "$gpus").log" 2>&1 < /dev/null &
    echo "lane $gpus: $(awk -v g="$gpus" '$1 == g {print $2}' "$state/plan" | tr '\n' ' ')"
  done
  ;;
run-lane)
  run_lane "$2"
  ;;
wait)
  deadline=$((SECONDS + ${2:?usage: scripts/gpu/lanes.sh wait SECONDS}))
  while ((SECONDS < deadline)); do
    running=$(for s in "$state"/lane-*/status; do tail -n1 "$s" | grep -q "lane done" || echo "$s"; done)
    [[ -z $running ]] && break
    sleep 20
  done
  for s in "$state"/lane-*/status; do
    echo "== ${s%/status}"; tail -n4 "$s"
    newest=$(ls -t "${s%/status}"/*.stdout 2>/dev/null | head -n1)  # the step running (or last run)
    [[ -n $newest ]] && tail -n3 "$newest" | cut -c1-160 | sed 's/^/    /'
  done
  nvidia-smi --query-gpu=index,memory.used,utilization.gpu --format=csv,noheader 2>/dev/null || true  # none on a CPU host
  ;;
stop)  # before pack near the lease's end: a step cut by SIGTERM writes what it keeps (lab's Interrupted)
  touch "$state/stop"
  # SIGTERM to the lab's own commands alone: not to measure.sh or its `tee` (a lab whose stdout pipe died
  # while it saved its kept sweep lost it, 2026-11-27), which then go on to pack the step's folders
  pkill -TERM -f "$LAB_RUN"
  for _ in $(seq 18); do pgrep -f "python.* -m lab " > /dev/null || break; sleep 5; done
  pgrep -af "python.* -m lab " | cut -c1-160 | sed 's/^/still running: /'
  ;;
pack)  # what finished, and what a running step has written so far
  mkdir -p "${OUT:-/tmp/out}"
  for dir in "$state"/lane-*/; do
    name=$(basename "$dir")
    for stdout in "$dir"/*.stdout; do  # none in a lane that never started a step
      [[ -f $stdout ]] || continue
      step=$(basename "$stdout" .stdout)
      OUT="$dir/out" scripts/gpu/measure.sh pack "$step" > /dev/null 2>&1
    done
    tar -C "$dir" -czf "${OUT:-/tmp/out}/$name.tgz" . && ls -la "${OUT:-/tmp/out}/$name.tgz"
  done
  ;;
*)
  echo "usage: scripts/gpu/lanes.sh start PLAN | wait SECONDS | stop | pack" >&2; exit 2
  ;;
esac
