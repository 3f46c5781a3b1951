"""hf_step_profile.py's helpers: the host's and the GPU's settings, microbenchmarks of the host's own
speed, per-run process figures, and the decode steps' windowed medians.

Why the microbenchmarks: an eager decode step of llama-1b is a few hundred kernel launches issued by
one Python thread, so a step 4-6x slower with the GPU mostly idle means the host issues them slower.
A pure-Python loop, a CPU torch op (the dispatcher) and a CUDA launch, each timed alone, say whether
the CPU itself, torch's dispatch or the CUDA driver is the slow part; a large bf16 matmul says whether
the GPU runs at its usual clocks.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import subprocess
import time
from pathlib import Path

import torch
import transformers

from lab.hardware.host_cpu import cpus_busy_idle_s, own_cgroup_dir, read_cgroup, usable_cpus

DEFAULT_WINDOWS = "1-50,500-550,1000-1050,1900-1950,last50"
SMI_QUERIES = (  # each its own call: one field a driver lacks fails the whole query
    "index,clocks.sm,clocks.max.sm,power.draw,pstate,persistence_mode",
    "index,temperature.gpu,utilization.gpu,memory.used,clocks_throttle_reasons.active",
)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_LAUNCH_BLOCKING")
THREAD_ENV += ("CUDA_MODULE_LOADING", "PYTORCH_CUDA_ALLOC_CONF", "CUDA_VISIBLE_DEVICES", "LAB_GPUS")


# --- the steps ----------------------------------------------------------------------------------


def parse_windows(text: str) -> list[tuple[str, int | None, int]]:
    """The windows of "1-50,last50": [("1-50", 1, 50), ("last50", None, 50)], steps from 1, ends included."""
    windows = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        if item.startswith("last"):
            windows.append((item, None, int(item[4:])))
            continue
        first, _, last = item.partition("-")
        if not first.isdigit() or not last.isdigit() or not 1 <= int(first) <= int(last):
            raise ValueError(f"window {item!r}: give FIRST-LAST (1 <= FIRST <= LAST) or lastN, e.g. 1-50,last50")
        windows.append((item, int(first), int(last)))
    return windows


def step_ms(stamps: list[float], start: float) -> list[float]:
    """Milliseconds of each step from the clock read at its end: step 1 is the prefill (from `start`, the
    call), step k >= 2 the k-th decode step."""
    edges = [start, *stamps]
    return [(b - a) * 1e3 for a, b in zip(edges, edges[1:])]


def window_medians(steps: list[float], windows: list[tuple[str, int | None, int]]) -> dict[str, dict | None]:
    """{label: {"median_ms", "steps"}} for each window: its steps that ran (a run cut by its time limit may
    reach part of a window), None where it reached none of them."""
    out: dict[str, dict | None] = {}
    for label, first, last in windows:
        part = steps[-last:] if first is None else steps[first - 1 : last]
        out[label] = {"median_ms": round(statistics.median(part), 3), "steps": len(part)} if part else None
    return out


def split_budget(runs: list[str], weights: dict[str, float], budget_s: float) -> dict[str, float]:
    """Each run's time limit: `budget_s` shared by the runs chosen, in proportion to their weights."""
    total = sum(weights[run] for run in runs)
    return {run: round(budget_s * weights[run] / total, 1) for run in runs}


def is_wait(profiled_name: str) -> bool:
    """CUDA runtime calls whose CPU time is mostly waiting for the GPU (a sync, a copy to the host): left
    out of the host's own busy time a step."""
    return "Synchronize" in profiled_name or profiled_name.startswith(("cudaMemcpy", "cuMemcpy"))


# --- the environment ----------------------------------------------------------------------------


def nvidia_smi(fields: str) -> str:
    """nvidia-smi's CSV for `fields` on the visible GPUs, or why there is none."""
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no nvidia-smi: {exc}"
    return (done.stdout + done.stderr).strip()


def gpu_state() -> dict[str, str]:
    return {fields: nvidia_smi(fields) for fields in SMI_QUERIES}


def cpu_mhz(cpus: list[int], count: int = 4) -> dict:
    """/proc/cpuinfo's "cpu MHz" of the first `count` CPUs we may run on, and their frequency governor."""
    mhz: dict[int, float] = {}
    processor = None
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "processor":
            processor = int(value)
        elif key == "cpu MHz" and processor in cpus[:count]:
            mhz[processor] = float(value)
    governors = {}
    for cpu in cpus[:count]:
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor")
        governors[cpu] = path.read_text().strip() if path.exists() else None
    return {"cpu_mhz": mhz, "scaling_governor": governors}


def process_threads() -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return None


def environment(model_config) -> dict:
    cpus = usable_cpus()
    return {
        "host": platform.node(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "os_cpu_count": os.cpu_count(),
        "env": {name: os.environ.get(name) for name in THREAD_ENV},
        "load_average": os.getloadavg(),
        "cgroup": read_cgroup(*own_cgroup_dir()),
        "process_threads": process_threads(),
        "gc_threshold": gc.get_threshold(),
        **cpu_mhz(cpus),
        "nvidia_smi": gpu_state(),
        "max_position_embeddings": getattr(model_config, "max_position_embeddings", None),
    }


# --- the host's own speed -----------------------------------------------------------------------


def _per_call_us(fn, calls: int, sync=None) -> float:
    fn()
    if sync:
        sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if sync:
        sync()
    return round((time.perf_counter() - start) / calls * 1e6, 3)


def python_loop_ns(iterations: int = 2_000_000) -> float:
    start = time.perf_counter()
    total = 0
    for i in range(iterations):
        total += i & 7
    return round((time.perf_counter() - start) / iterations * 1e9, 2)


def micro_benchmarks(device: str) -> dict:
    """Per-call costs of the host's parts (microseconds unless named), and the GPU's bf16 matmul rate."""
    small_cpu = torch.ones(16)
    out = {
        "python_loop_ns": python_loop_ns(),
        "torch_cpu_add_us": _per_call_us(lambda: small_cpu.add_(1), 20_000),
    }
    if device != "cuda":
        return out
    sync = torch.cuda.synchronize
    small = torch.ones(16, device="cuda")
    out["cuda_launch_us"] = _per_call_us(lambda: small.add_(1), 20_000, sync)  # enqueue only: queue never fills
    out["cuda_launch_sync_us"] = _per_call_us(lambda: (small.add_(1), sync()), 2_000)  # one round trip each
    out["cuda_item_us"] = _per_call_us(lambda: small[0].item(), 2_000)  # a device-to-host copy, as a stop check
    big = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    seconds = _per_call_us(lambda: big @ big, 20, sync) / 1e6
    out["bf16_matmul_tflops"] = round(2 * 8192**3 / seconds / 1e12, 1)
    return out


# --- one run's process figures ------------------------------------------------------------------


class ProcessMeter:
    """This process's CPU time and context switches, the busy share of the CPUs it may use (every
    process's), and its cgroup's throttling, between `start()` and `stop()`."""

    def start(self) -> ProcessMeter:
        self.cpus = usable_cpus()
        self.wall = time.perf_counter()
        self.usage = resource.getrusage(resource.RUSAGE_SELF)
        self.busy_idle = cpus_busy_idle_s(self.cpus)[:2]
        self.cgroup = read_cgroup(*own_cgroup_dir())
        return self

    def stop(self) -> dict:
        wall = time.perf_counter() - self.wall
        usage = resource.getrusage(resource.RUSAGE_SELF)
        busy, idle = (b - a for a, b in zip(self.busy_idle, cpus_busy_idle_s(self.cpus)[:2]))
        cgroup = read_cgroup(*own_cgroup_dir())
        own_cpu_s = usage.ru_utime + usage.ru_stime - self.usage.ru_utime - self.usage.ru_stime
        throttled = self.cgroup.get("nr_throttled"), cgroup.get("nr_throttled")
        return {
            "wall_s": round(wall, 3),
            "own_cpu_s": round(own_cpu_s, 3),
            "own_cpu_per_wall": round(own_cpu_s / wall, 3) if wall > 0 else None,
            "voluntary_switches": usage.ru_nvcsw - self.usage.ru_nvcsw,
            "involuntary_switches": usage.ru_nivcsw - self.usage.ru_nivcsw,
            "usable_cpus_busy_pct": round(100 * busy / (busy + idle), 1) if busy + idle > 0 else None,
            "cgroup_nr_throttled": throttled[1] - throttled[0] if None not in throttled else None,
            "process_threads": process_threads(),
        }


# --- the summary --------------------------------------------------------------------------------


def summary_lines(result: dict) -> list[str]:
    """The figures to read first, one line each."""
    lines = []
    env = result.get("env") or {}
    if env:
        lines.append(
            f"torch {env['torch']}, transformers {env['transformers']}; threads {env['torch_num_threads']}, "
            f"affinity {env['affinity_cpus']} of {env['os_cpu_count']} CPUs; env {env['env']}"
        )
        lines.extend(env["nvidia_smi"].values())
    for name, figures in (result.get("micro") or {}).items():
        lines.append(f"micro {name}: {figures}")
    for name, run in (result.get("runs") or {}).items():
        if "error" in run:
            lines.append(f"{name}: failed: {run['error']}")
            continue
        windows = ", ".join(
            f"{label} {w['median_ms']:.2f}" + (f" ({w['steps']})" if w["steps"] < 50 else "")
            for label, w in (run.get("windows") or {}).items()
            if w
        )
        lines.append(
            f"{name}: {run['steps']} steps in {run['wall_s']:.1f} s ({run['ms_per_step']:.2f} ms/step"
            f"{', stopped by its time limit' if run['stopped_by_limit'] else ''})"
            + (f"; median ms: {windows}" if windows else "")
        )
    for name, figures in (result.get("same_steps") or {}).items():
        lines.append(f"{name} against steps-b16 over the same steps: {figures}")
    collector = ((result.get("runs") or {}).get("nvml-b16") or {}).get("collector")
    if collector:
        lines.append(f"collector beside nvml-b16: {collector}")
    profile = ((result.get("runs") or {}).get("profile-b16") or {}).get("profile")
    if profile:
        lines.append(f"profile: {profile.get('per_step') or profile}")
    return lines


def same_steps(runs: dict, reference: str = "steps-b16") -> dict:
    """Each batch-16 run's ms a step against the reference run's over the same first steps (prefill
    included in both), so that runs cut at different steps by their time limits compare like for like."""
    ref = (runs.get(reference) or {}).get("step_ms")
    out = {}
    for name, run in runs.items():
        if name == reference or not ref or run.get("rows") != 16 or not run.get("steps"):
            continue
        n = min(run["steps"], len(ref))
        ref_ms = sum(ref[:n]) / n
        own_ms = sum(run["step_ms"][:n]) / n if run.get("step_ms") else run["wall_s"] * 1e3 / run["steps"]
        out[name] = {"steps": n, "ms_per_step": round(own_ms, 3), reference: round(ref_ms, 3)}
        out[name]["ratio"] = round(own_ms / ref_ms, 3)
    return out
