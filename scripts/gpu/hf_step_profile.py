"""Why the lab's eager transformers paths run 4-6x slower per decode step than a day before on the same
host type (hf/batched llama-1b at ~87 ms a step against 15.5 ms, llama-8b as slow, GPU 7-16% busy).

One process, one model (bf16 on CUDA), greedy `model.generate` on random 160-token prompts with EOS
suppressed (min_new_tokens = max_new_tokens, as the lab's hf backend calls it). Parts (--parts):

  env      versions, torch's threads against the CPU affinity, thread variables, nvidia-smi's clocks,
           power and pstate, /proc/cpuinfo MHz, cgroup quota, max_position_embeddings; microbenchmarks
           of the host (a Python loop, a CPU torch op, a CUDA launch, a sync round trip, a bf16 matmul)
  steps    batch 16 and batch 1, each step timed by a logits processor that synchronises the device and
           reads perf_counter (the lab's StepTimer): median ms a step in windows (--windows), so that a
           cost growing with the sequence (past max_position_embeddings, masks, DynamicCache) shows
  nosync   batch 16 with no logits processor: wall time / steps, the lab timer's own cost by difference
  nvml     batch 16 timed, while `lab collect` (the lab's own collector, at the lab's interval) polls NVML
           for this process, and the microbenchmarks again under it: NVML against the CUDA driver
  threads  batch 16 timed with torch.set_num_threads(1): the CPU thread pool's part
  profile  batch 16 with torch.profiler (CPU and CUDA) over --profile-steps steps from --profile-at (or
           earlier, where the run's time limit would come first): the top ops by self CPU and by CUDA
           time, and CPU op time, CUDA kernel time and wall time per step

Each run has a time limit (--budget-s shared by the runs in proportion to fixed weights) enforced by a
StoppingCriteria; a run records how many steps it reached. Every run also records its own CPU time,
context switches, the busy share of the CPUs it may use, GC pauses, and nvidia-smi before and after.
Writes --out (JSON) after every part; progress on stderr; the summary on stdout.
Usage: python3 scripts/gpu/hf_step_profile.py MODEL_DIR [--parts env,steps,...] [--budget-s 400] --out FILE
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import hf_step_facts as facts
import torch
from hf_bench_gap import SyncClock, sync  # the lab's per-step clock (sync, then perf_counter)
from torch.autograd import DeviceType
from transformers import AutoConfig, AutoModelForCausalLM, StoppingCriteria

from lab.config import ExperimentSpec
from lab.gc_pauses import GcPauses
from lab.hardware.gpus import collector_gpus
from lab.models.resolve import has_weights

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only to check this script
REPO_ROOT = Path(__file__).resolve().parents[2]
PARTS = ("env", "steps", "nosync", "nvml", "threads", "profile")
RUNS = {  # part -> (run name, batch rows); the runs' shares of --budget-s follow
    "steps": (("steps-b16", 16), ("steps-b1", 1)),
    "nosync": (("nosync-b16", 16),),
    "nvml": (("nvml-b16", 16),),
    "threads": (("threads1-b16", 16),),
    "profile": (("profile-b16", 16),),
}
# steps-b16 gets the most: at the slow case's ~90 ms a step, 2,000 steps take 180 s
WEIGHTS = {"steps-b16": 0.48, "steps-b1": 0.08, "nosync-b16": 0.09, "nvml-b16": 0.11, "threads1-b16": 0.06}
WEIGHTS["profile-b16"] = 0.18
COLLECTOR_INTERVAL_MS = next(f.default for f in dataclasses.fields(ExperimentSpec) if f.name == "collector_interval_ms")
PROFILE_SWITCH_SHARE = 0.75  # a run that would not reach --profile-at profiles from this share of its limit


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


class ProfileWindow:
    """A logits processor that runs torch.profiler over `steps` steps from step `at`, or from `switch_s`
    seconds into the run where that comes first; `done` once it has stopped."""

    def __init__(self, at: int, steps: int, switch_s: float) -> None:
        self.at, self.steps, self.switch_s = at, steps, switch_s
        self.step = 0
        self.started_at: int | None = None
        self.done = False
        self.profiled_steps = 0
        self.start_s = time.perf_counter()
        activities = [torch.profiler.ProfilerActivity.CPU]
        if DEVICE == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities)

    def __call__(self, input_ids, scores):
        self.step += 1
        late = time.perf_counter() - self.start_s >= self.switch_s
        if self.started_at is None and (self.step >= self.at or late):
            self.started_at = self.step
            self.profiler.start()
        elif self.started_at is not None and self.step >= self.started_at + self.steps:
            self.finish()
        return scores

    def finish(self) -> None:
        """Stop the profiler if it runs (also where the run ended first: its time limit, an error)."""
        if self.started_at is not None and not self.done:
            sync()
            self.profiler.stop()
            self.done = True
            self.profiled_steps = self.step - self.started_at


class TimeLimit(StoppingCriteria):
    """Stops generation after `limit_s` (read without a sync), or once `profile` is done."""

    def __init__(self, limit_s: float, rows: int, profile: ProfileWindow | None = None) -> None:
        self.deadline = time.perf_counter() + limit_s
        self.profile = profile
        self.hit = False
        self.go_on = torch.zeros(rows, dtype=torch.bool, device=DEVICE)
        self.stop = torch.ones(rows, dtype=torch.bool, device=DEVICE)

    def __call__(self, input_ids, scores, **kwargs):
        if time.perf_counter() >= self.deadline:
            self.hit = True
        return self.stop if self.hit or (self.profile is not None and self.profile.done) else self.go_on


def load_model(model_dir: str, dtype: torch.dtype):
    """As the lab's hf backend loads it: saved weights, or a seeded random init on the device."""
    torch.manual_seed(0)
    if has_weights(model_dir):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(DEVICE)
    else:
        with torch.device(DEVICE):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=dtype)
    return model.eval()


def random_prompts(vocab_size: int, rows: int, tokens: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(10, vocab_size, (rows, tokens), generator=generator).to(DEVICE)


def generate(model, prompts, new_tokens: int, processors: list, stopping: TimeLimit):
    pad_id = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0
    with torch.inference_mode():
        return model.generate(
            input_ids=prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad_id,
            logits_processor=processors,
            stopping_criteria=[stopping],
            return_dict_in_generate=True,
        )


def timed_run(model, prompts, args, limit_s: float, *, timer: bool = True, profile: ProfileWindow | None = None):
    """One generate call; its steps, windows, process figures and the GPU's state around it."""
    step_timer = SyncClock() if timer else None
    processors = [p for p in (step_timer, profile) if p is not None]
    stopping = TimeLimit(limit_s, prompts.shape[0], profile)
    before = facts.gpu_state()
    meter = facts.ProcessMeter().start()
    gc_pauses = GcPauses().start()
    sync()
    start = time.perf_counter()
    out = generate(model, prompts, args.max_new_tokens, processors, stopping)
    sync()
    wall = time.perf_counter() - start
    run = {"gc": gc_pauses.stop(), "process": meter.stop()}
    steps = out.sequences.shape[1] - prompts.shape[1]
    run.update(rows=prompts.shape[0], steps=steps, limit_s=limit_s, stopped_by_limit=stopping.hit)
    run.update(wall_s=round(wall, 3), ms_per_step=round(wall / max(steps, 1) * 1e3, 3))
    if step_timer is not None:
        step_ms = facts.step_ms(step_timer.steps, start)
        run["windows"] = facts.window_medians(step_ms, facts.parse_windows(args.windows))
        run["step_ms"] = [round(ms, 3) for ms in step_ms]
    run["gpu_before"], run["gpu_after"] = before, facts.gpu_state()
    return run


def profile_figures(window: ProfileWindow, step_ms: list[float]) -> dict:
    """The profiled steps: per-step wall time, CPU time in ops (less the time spent waiting for the GPU in
    syncs and copies to the host) against CUDA kernel time, and the top ops by self CPU and by CUDA time."""
    steps = window.profiled_steps
    if not steps:
        return {"error": f"no step profiled (the profiler started at step {window.started_at})"}
    first = window.started_at  # profiled steps: first+1 .. first+steps (1-based), timed as step_ms[first:]
    wall_ms = sum(step_ms[first : first + steps]) / steps if len(step_ms) >= first + steps else None
    figures: dict = {"per_step": {"started_at_step": first, "steps": steps, "wall_ms": wall_ms and round(wall_ms, 3)}}
    try:
        events = window.profiler.events()
        cpu_events = [e for e in events if e.device_type == DeviceType.CPU]
        cpu_us = sum(e.self_cpu_time_total for e in cpu_events)
        wait_us = sum(e.self_cpu_time_total for e in cpu_events if facts.is_wait(e.name))
        gpu_us = sum(e.time_range.elapsed_us() for e in events if e.device_type == DeviceType.CUDA)
        busy_us = cpu_us - wait_us
        figures["per_step"].update(
            cpu_op_ms=round(cpu_us / steps / 1e3, 3),
            cpu_wait_ms=round(wait_us / steps / 1e3, 3),
            cuda_kernel_ms=round(gpu_us / steps / 1e3, 3),
            cpu_busy_per_cuda=round(busy_us / gpu_us, 2) if gpu_us else None,
            wall_per_cuda=round(wall_ms * 1e3 / (gpu_us / steps), 2) if gpu_us and wall_ms else None,
            kernel_launches=round(sum(1 for e in cpu_events if "LaunchKernel" in e.name) / steps, 1),
        )
    except Exception as exc:  # the tables may still come
        figures["per_step"]["error"] = f"{type(exc).__name__}: {exc}"
    averages = window.profiler.key_averages()
    figures["by_self_cpu"] = averages.table(sort_by="self_cpu_time_total", row_limit=15)
    if DEVICE == "cuda":
        device = "self_device_time_total" if hasattr(averages[0], "self_device_time_total") else "self_cuda_time_total"
        figures["by_cuda"] = averages.table(sort_by=device, row_limit=15)
    return figures


def start_collector(work_dir: Path, name: str):
    """`lab collect` on this process, as the lab starts it beside a backend; returns once it samples."""
    timeline, stop_file = work_dir / f"{name}-collector.jsonl", work_dir / f"{name}-collector.stop"
    log_path = work_dir / f"{name}-collector.log"
    stop_file.unlink(missing_ok=True)
    args = [sys.executable, "-m", "lab", "collect", "--pid", str(os.getpid()), "--out", str(timeline)]
    args += ["--run", "hf-steps-nvml", "--interval-ms", str(COLLECTOR_INTERVAL_MS), "--stop-file", str(stop_file)]
    gpus = collector_gpus(os.environ.get("LAB_GPUS"), os.environ.get("CUDA_VISIBLE_DEVICES"))
    args += ["--gpus", gpus] if gpus else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    log = log_path.open("w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if timeline.exists() and len(timeline.read_text().splitlines()) >= 3:  # header and two samples
            break
        time.sleep(0.2)
    if proc.poll() is not None:
        raise RuntimeError(f"lab collect exited ({proc.returncode}): see {log_path}")
    return proc, timeline, stop_file


def stop_collector(proc, timeline: Path, stop_file: Path) -> dict:
    stop_file.touch()
    try:  # it stops at its next tick
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=10)
    stop_file.unlink(missing_ok=True)
    last = timeline.read_text().splitlines()[-1]
    summary = json.loads(last)
    keep = ("source", "fallback_reason", "samples", "mean_interval_ms", "max_gap_ms", "skipped_ticks")
    keep += ("mean_gpu_util_pct", "collector_cpu_pct", "stop_reason", "gpus")
    return {key: summary.get(key) for key in keep}


def run_part(name: str, rows: int, model, vocab: int, args, limit_s: float) -> dict:
    prompts = random_prompts(vocab, rows, args.prompt_tokens)
    if name.startswith(("steps", "nosync")):
        return timed_run(model, prompts, args, limit_s, timer=name.startswith("steps"))
    if name.startswith("threads1"):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return {"threads_before": threads, **timed_run(model, prompts, args, limit_s)}
        finally:
            torch.set_num_threads(threads)
    if name.startswith("nvml"):
        proc, timeline, stop_file = start_collector(args.work_dir, args.out.stem)
        try:
            micro = facts.micro_benchmarks(DEVICE)
            run = timed_run(model, prompts, args, limit_s)
        finally:
            collector = stop_collector(proc, timeline, stop_file)
        return {"micro_under_collector": micro, "collector": collector, **run}
    window = ProfileWindow(args.profile_at, args.profile_steps, PROFILE_SWITCH_SHARE * limit_s)
    try:
        run = timed_run(model, prompts, args, limit_s, profile=window)
    finally:
        window.finish()
    try:
        run["profile"] = profile_figures(window, run["step_ms"])
    except Exception as exc:  # keep the run's steps
        run["profile"] = {"error": f"{type(exc).__name__}: {exc}"}
    return run


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a model folder (`lab models build synthetic:llama-1b` prints it)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"a comma list of {', '.join(PARTS)}")
    parser.add_argument("--budget-s", type=float, default=400, help="seconds of generation shared by the runs")
    parser.add_argument("--max-new-tokens", type=int, default=2000)
    parser.add_argument("--prompt-tokens", type=int, default=160)
    parser.add_argument("--windows", default=facts.DEFAULT_WINDOWS, help="step windows, e.g. 1-50,last50")
    parser.add_argument("--profile-at", type=int, default=1880, help="the first step profiled")
    parser.add_argument("--profile-steps", type=int, default=20)
    parser.add_argument("--dtype", default="bfloat16" if DEVICE == "cuda" else "float32")
    parser.add_argument("--out", type=Path, required=True, help="the JSON written")
    parser.add_argument("--work-dir", type=Path, default=None, help="the collector's timeline (default: --out's)")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}: choose from {', '.join(PARTS)}")
    facts.parse_windows(args.windows)  # a bad window fails here, before the model loads
    args.work_dir = args.work_dir or args.out.parent
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    runs = [run for part in args.parts for run in RUNS.get(part, ())]
    limits = facts.split_budget([name for name, _ in runs], WEIGHTS, args.budget_s) if runs else {}
    result: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "device": DEVICE, "limits_s": limits}
    result["runs"] = {}

    def write() -> None:
        args.out.write_text(json.dumps(result, indent=1, default=str))

    say(f"loading {args.model_dir} ({args.dtype} on {DEVICE}); runs {limits}")
    config = AutoConfig.from_pretrained(args.model_dir)
    model = load_model(args.model_dir, getattr(torch, args.dtype))
    vocab = config.vocab_size
    if "env" in args.parts:
        result["env"] = facts.environment(config)
        result["micro"] = {"alone": facts.micro_benchmarks(DEVICE)}
        say(f"env: threads {torch.get_num_threads()}, affinity {result['env']['affinity_cpus']} CPUs")
        write()
    for rows in sorted({rows for _, rows in runs}):  # warm-up: CUDA context, kernels, allocator
        say(f"warm-up, batch {rows}")
        generate(model, random_prompts(vocab, rows, args.prompt_tokens), 16, [], TimeLimit(60, rows))
    for name, rows in runs:
        say(f"{name}: batch {rows}, up to {args.max_new_tokens} steps or {limits[name]} s")
        try:
            result["runs"][name] = run_part(name, rows, model, vocab, args, limits[name])
        except Exception as exc:  # one part failing must not lose the others' figures
            result["runs"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        if "micro_under_collector" in result["runs"][name]:
            result.setdefault("micro", {})["under_collector"] = result["runs"][name]["micro_under_collector"]
        say(next(iter(facts.summary_lines({"runs": {name: result["runs"][name]}})), name))
        result["same_steps"] = facts.same_steps(result["runs"])
        write()
    print("\n".join(facts.summary_lines(result)))
    for name, table in (result["runs"].get("profile-b16", {}).get("profile") or {}).items():
        if name.startswith("by_"):
            print(f"-- profile, top ops {name}:\n{table}")
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
