"""Where the collector's device figures come from: NVML per GPU and per process, or psutil alone.

NOTE: NVML reports host pids. In Docker, the backend container runs with `pid: host` so the pid it
writes to its pid file is a host pid, and the collector container must share the host pid namespace
too, or no process of the tree will match NVML's list (`tree_gpu_mib` stays 0 while
`device_used_mib` grows; `other_gpu_mib` then holds the backend's memory).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from lab.errors import LabInputError
from lab.hardware import nvml as nvml_lib

MIB = 1024 * 1024


class Source(Protocol):
    """Where device figures come from. `read` returns one dict per selected GPU (none for psutil)."""

    name: str  # "nvml" or "psutil"
    fallback_reason: str | None  # why NVML was not used; None when it is

    def devices(self) -> list[dict]: ...

    def read(self, tree_pids: set[int]) -> list[dict]: ...

    def close(self) -> None: ...


class PsutilSource:
    """No device figures: the sample holds only the tree's RSS. Used where NVML cannot start."""

    name = "psutil"

    def __init__(self, fallback_reason: str):
        self.fallback_reason = fallback_reason

    def devices(self) -> list[dict]:
        return []

    def read(self, tree_pids: set[int]) -> list[dict]:
        return []

    def close(self) -> None:
        pass


class NvmlSource:
    """Device memory, utilisation, power and per-process memory of the selected GPUs, via NVML.

    `nvml` is the `pynvml` module (or a stand-in with the same functions), already initialised.
    `gpu_indices` are NVML indices (PCI bus order, which is not always CUDA's order); None = all.
    """

    name = "nvml"
    fallback_reason = None

    def __init__(self, nvml: Any, gpu_indices: list[int] | None = None):
        self._nvml = nvml
        count = nvml.nvmlDeviceGetCount()
        indices = list(range(count)) if gpu_indices is None else list(gpu_indices)
        bad = [i for i in indices if not 0 <= i < count]
        if bad:
            raise LabInputError(f"GPU index {bad[0]} does not exist: NVML sees {count} GPU(s), indices 0..{count - 1}")
        self._handles = [(i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in indices]

    def devices(self) -> list[dict]:
        out = []
        for index, handle in self._handles:
            name = nvml_lib.text(nvml_lib.call(self._nvml.nvmlDeviceGetName, handle))
            uuid = nvml_lib.text(nvml_lib.call(self._nvml.nvmlDeviceGetUUID, handle))
            out.append({"gpu": index, "name": name, "uuid": uuid})
        return out

    def read(self, tree_pids: set[int]) -> list[dict]:
        return [read_gpu(self._nvml, index, handle, tree_pids) for index, handle in self._handles]

    def energy_mj(self) -> dict[str, int | None]:
        """{str(NVML index): NVML's total-energy counter} of each selected GPU: millijoules since the
        driver loaded (`nvmlDeviceGetTotalEnergyConsumption`, Volta and later); None where unsupported."""
        return {str(i): nvml_lib.call(self._nvml.nvmlDeviceGetTotalEnergyConsumption, h) for i, h in self._handles}

    def gpus_holding(self, pids: set[int]) -> list[int]:
        """NVML indices of the selected GPUs on which any of `pids` has a context."""
        return [i for i, h in self._handles if set(gpu_process_bytes(self._nvml, h)) & pids]

    def close(self) -> None:
        nvml_lib.call(self._nvml.nvmlShutdown)


def open_source(gpu_indices: list[int] | None = None, nvml: Any = None) -> NvmlSource | PsutilSource:
    """NVML if it starts, else psutil with the NVML error as `fallback_reason`.

    `nvml` defaults to the real `pynvml` module (nvidia-ml-py); tests pass a fake.
    """
    try:
        started = nvml_lib.start(nvml)
    except nvml_lib.NvmlUnavailable as e:
        return PsutilSource(f"NVML did not start: {e}" if e.installed else str(e))
    try:
        return NvmlSource(started, gpu_indices)
    except LabInputError:
        nvml_lib.stop(started)
        raise
    except Exception as e:
        nvml_lib.stop(started)
        return PsutilSource(f"NVML started but could not list GPUs: {type(e).__name__}: {e}")


def read_gpu(nvml: Any, index: int, handle: Any, tree_pids: set[int]) -> dict:
    """One GPU's figures. A query the GPU does not support (power on some boards, utilisation
    under MIG, the energy counter before Volta) gives None rather than failing the sample.
    `energy_mj`: NVML's total-energy counter, millijoules since the driver loaded."""
    mem = nvml_lib.call(nvml.nvmlDeviceGetMemoryInfo, handle)
    util = nvml_lib.call(nvml.nvmlDeviceGetUtilizationRates, handle)
    power_mw = nvml_lib.call(nvml.nvmlDeviceGetPowerUsage, handle)
    energy_mj = nvml_lib.call(nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
    proc_bytes = gpu_process_bytes(nvml, handle)
    proc_gpu_mib, tree_gpu_mib, other_gpu_mib = attribute_to_tree(proc_bytes, tree_pids)
    return {
        "gpu": index,
        "device_used_mib": mib(mem.used) if mem is not None else None,
        "device_total_mib": mib(mem.total) if mem is not None else None,
        "gpu_util_pct": util.gpu if util is not None else None,
        "power_w": round(power_mw / 1000, 1) if power_mw is not None else None,
        "energy_mj": energy_mj,
        "tree_gpu_mib": tree_gpu_mib,
        "proc_gpu_mib": proc_gpu_mib,
        "other_gpu_mib": other_gpu_mib,
    }


def gpu_process_bytes(nvml: Any, handle: Any) -> dict[int, int | None]:
    """pid -> bytes NVML attributes to it on this GPU (None: NVML cannot tell, e.g. under WDDM).

    A process with both a compute and a graphics context appears in both lists with the same
    per-process figure: take it once (the larger), never the sum.
    """
    out: dict[int, int | None] = {}
    for query in (nvml.nvmlDeviceGetComputeRunningProcesses, nvml.nvmlDeviceGetGraphicsRunningProcesses):
        for proc in nvml_lib.call(query, handle) or []:
            used = proc.usedGpuMemory
            if proc.pid in out and out[proc.pid] is not None:
                used = max(out[proc.pid], used) if used is not None else out[proc.pid]
            out[proc.pid] = used
    return out


def attribute_to_tree(
    proc_bytes: dict[int, int | None], tree_pids: set[int]
) -> tuple[dict[str, float | None], float | None, float]:
    """Split NVML's per-process memory into the backend's tree and everything else.

    Returns (proc_gpu_mib, tree_gpu_mib, other_gpu_mib):
    - proc_gpu_mib: {str(pid): MiB or None} for tree pids on the GPU (str keys: as JSON stores them);
    - tree_gpu_mib: sum of the known figures of the tree; 0.0 when no tree process is on the GPU;
      None when tree processes are on it but NVML gives no figure for any of them;
    - other_gpu_mib: sum of the known figures of processes outside the tree.
    """
    proc_gpu_mib: dict[str, float | None] = {}
    other = 0
    for pid, used in sorted(proc_bytes.items()):
        if pid in tree_pids:
            proc_gpu_mib[str(pid)] = mib(used) if used is not None else None
        elif used is not None:
            other += used
    known = [v for v in proc_gpu_mib.values() if v is not None]
    if proc_gpu_mib and not known:
        tree = None
    else:
        tree = round(float(sum(known)), 2)
    return proc_gpu_mib, tree, mib(other)


def combine_gpus(gpus: list[dict]) -> dict:
    """The top-level figures of a sample from its per-GPU figures (all None when there are none)."""
    keys = (
        "tree_gpu_mib",
        "proc_gpu_mib",
        "other_gpu_mib",
        "device_used_mib",
        "device_total_mib",
        "gpu_util_pct",
        "power_w",
    )
    if not gpus:
        return {k: None for k in keys}
    proc: dict[str, float | None] = {}
    for g in gpus:
        for pid, mib in g["proc_gpu_mib"].items():
            proc[pid] = _add(proc.get(pid), mib) if pid in proc else mib
    utils = [g["gpu_util_pct"] for g in gpus if g["gpu_util_pct"] is not None]
    return {
        "tree_gpu_mib": _sum_known(g["tree_gpu_mib"] for g in gpus),
        "proc_gpu_mib": proc,
        "other_gpu_mib": _sum_known(g["other_gpu_mib"] for g in gpus),
        "device_used_mib": _sum_known(g["device_used_mib"] for g in gpus),
        "device_total_mib": _sum_known(g["device_total_mib"] for g in gpus),
        "gpu_util_pct": round(sum(utils) / len(utils), 1) if utils else None,
        "power_w": _sum_known(g["power_w"] for g in gpus),
    }


def mib(n_bytes: int) -> float:
    return round(n_bytes / MIB, 2)


def _add(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else round(a + b, 2)


def _sum_known(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known), 2) if known else None
