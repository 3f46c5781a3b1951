"""The memory and utilisation sampler: a process of its own beside one backend run.

Why a separate process: the backend's own clock and memory must not carry the sampler, and vLLM
puts its engine core in a child process, so "the backend's memory" is a process *tree*, seen best
from outside it.

Every `interval_ms` (default 15 ms) one sample records:

- with NVML (an NVIDIA driver is present): device memory used and total, GPU utilisation, board
  power, and the memory NVML attributes to each process of the backend's tree;
- always: the resident set size (RSS) of the tree, through psutil. Where NVML is unavailable
  (no driver, no GPU, this CPU machine) this is the only memory figure, and the file says why NVML
  was not used.

Every sample names its `source` ("nvml" or "psutil"); the samples are kept as a timeline, not only
the peak. Output is JSON lines, one record per line, with a `kind` field:

    {"kind": "header",  ...}   first line, written and flushed at once (source, fallback_reason, GPUs, t)
    {"kind": "sample",  ...}   one per tick (keys: see `sample`)
    {"kind": "summary", ...}   last line, on any clean stop (keys: see `run_collector`)

A file whose last line is not a summary was cut short (the collector was killed); `read_timeline`
reads what is there.

NOTE: NVML reports host pids. In Docker, the backend container runs with `pid: host` so the pid it
writes to its pid file is a host pid, and the collector container must share the host pid namespace
too, or no process of the tree will match NVML's list (`tree_gpu_mib` stays 0 while
`device_used_mib` grows; `other_gpu_mib` then holds the backend's memory).

NOTE: RSS counts shared pages once per process that maps them, so `tree_rss_mib` over-counts
memory shared between the processes of the tree (e.g. a shared-memory segment). It is cheap to read
at 66 Hz (USS or PSS is not: it reads /proc/<pid>/smaps).
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Protocol

import psutil

from lab.errors import LabInputError
from lab.records import open_text

MIB = 1024 * 1024
TREE_REFRESH_S = 0.5  # re-list the root's descendants this often (listing walks all of /proc)
FLUSH_EVERY_S = 1.0  # the output file lags the samples by at most this much
PID_FILE_POLL_S = 0.05


# --- sources -------------------------------------------------------------------------------------


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
            raise LabInputError(
                f"GPU index {bad[0]} does not exist: NVML sees {count} GPU(s), indices 0..{count - 1}"
            )
        self._handles = [(i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in indices]

    def devices(self) -> list[dict]:
        out = []
        for index, handle in self._handles:
            name = _text(_nvml_try(self._nvml.nvmlDeviceGetName, handle))
            uuid = _text(_nvml_try(self._nvml.nvmlDeviceGetUUID, handle))
            out.append({"gpu": index, "name": name, "uuid": uuid})
        return out

    def read(self, tree_pids: set[int]) -> list[dict]:
        return [read_gpu(self._nvml, index, handle, tree_pids) for index, handle in self._handles]

    def close(self) -> None:
        _nvml_try(self._nvml.nvmlShutdown)


def open_source(gpu_indices: list[int] | None = None, nvml: Any = None) -> NvmlSource | PsutilSource:
    """NVML if it starts, else psutil with the NVML error as `fallback_reason`.

    `nvml` defaults to the real `pynvml` module (nvidia-ml-py); tests pass a fake.
    """
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError as e:
            return PsutilSource(f"nvidia-ml-py is not installed ({e})")
    try:
        nvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: every one means "no NVML"
        return PsutilSource(f"NVML did not start: {type(e).__name__}: {e}")
    try:
        return NvmlSource(nvml, gpu_indices)
    except LabInputError:
        _nvml_try(nvml.nvmlShutdown)
        raise
    except Exception as e:
        _nvml_try(nvml.nvmlShutdown)
        return PsutilSource(f"NVML started but could not list GPUs: {type(e).__name__}: {e}")


def read_gpu(nvml: Any, index: int, handle: Any, tree_pids: set[int]) -> dict:
    """One GPU's figures. A query the GPU does not support (power on some boards, utilisation
    under MIG) gives None rather than failing the sample."""
    mem = _nvml_try(nvml.nvmlDeviceGetMemoryInfo, handle)
    util = _nvml_try(nvml.nvmlDeviceGetUtilizationRates, handle)
    power_mw = _nvml_try(nvml.nvmlDeviceGetPowerUsage, handle)
    proc_bytes = gpu_process_bytes(nvml, handle)
    proc_gpu_mib, tree_gpu_mib, other_gpu_mib = attribute_to_tree(proc_bytes, tree_pids)
    return {
        "gpu": index,
        "device_used_mib": _mib(mem.used) if mem is not None else None,
        "device_total_mib": _mib(mem.total) if mem is not None else None,
        "gpu_util_pct": util.gpu if util is not None else None,
        "power_w": round(power_mw / 1000, 1) if power_mw is not None else None,
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
        for proc in _nvml_try(query, handle) or []:
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
            proc_gpu_mib[str(pid)] = _mib(used) if used is not None else None
        elif used is not None:
            other += used
    known = [v for v in proc_gpu_mib.values() if v is not None]
    if proc_gpu_mib and not known:
        tree = None
    else:
        tree = round(float(sum(known)), 2)
    return proc_gpu_mib, tree, _mib(other)


# --- the process tree ----------------------------------------------------------------------------


class ProcessTree:
    """The root process and its descendants, re-listed every `refresh_s` (listing walks /proc).

    Processes that exit between listings are dropped quietly; new children appear at the next
    listing. Raises psutil.NoSuchProcess at construction if the root does not exist.
    """

    def __init__(self, root_pid: int, refresh_s: float = TREE_REFRESH_S):
        self.root = psutil.Process(root_pid)
        self.refresh_s = refresh_s
        self._procs: dict[int, psutil.Process] = {root_pid: self.root}
        self._next_refresh = 0.0

    @property
    def pids(self) -> list[int]:
        return sorted(self._procs)

    def refresh_if_due(self, now_mono: float) -> None:
        if now_mono < self._next_refresh:
            return
        self._next_refresh = now_mono + self.refresh_s
        try:
            children = self.root.children(recursive=True)
        except psutil.Error:
            children = []
        procs = {self.root.pid: self.root}
        for child in children:
            if child.pid != os.getpid():  # a collector started under the root must not measure itself
                procs[child.pid] = self._procs.get(child.pid, child)  # keep the object: it knows its create time
        self._procs = procs

    def root_alive(self) -> bool:
        """False once the root has exited, even if its parent has not reaped it yet (a zombie)."""
        try:
            return self.root.is_running() and self.root.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def rss_bytes(self) -> int:
        total = 0
        for pid, proc in list(self._procs.items()):
            try:
                total += proc.memory_info().rss
            except psutil.Error:  # gone (or a zombie we may not read): drop it until the next listing
                if pid != self.root.pid:
                    del self._procs[pid]
        return total


# --- one sample ----------------------------------------------------------------------------------


def sample(source: Source, tree: ProcessTree, label: str = "") -> dict:
    """One sample of the tree (and, with NVML, of the selected GPUs).

    Keys (MiB = 2**20 bytes; NVML-only figures are None with the psutil source):
      kind            "sample"
      run             the run's label
      t               epoch seconds (time.time()) when the sample was taken
      source          "nvml" or "psutil"
      pids            the tree's pids, root included
      tree_rss_mib    RSS summed over the tree (psutil; always present)
      tree_gpu_mib    NVML per-process memory summed over the tree and the selected GPUs
      proc_gpu_mib    {str(pid): MiB or None} for tree pids on a GPU, summed over the GPUs
      other_gpu_mib   NVML per-process memory of processes outside the tree
      device_used_mib device memory used, summed over the selected GPUs (every process, and the driver)
      device_total_mib device memory, summed over the selected GPUs
      gpu_util_pct    NVML utilisation (share of time a kernel ran), mean over the selected GPUs
      power_w         board power, summed over the selected GPUs
      gpus            the same figures per GPU: [{"gpu": NVML index, ...}]; [] with psutil
    With one GPU selected (the usual case) the top-level figures are that GPU's.
    """
    t = time.time()
    pids = tree.pids
    rss = tree.rss_bytes()
    gpus = source.read(set(pids))
    record: dict[str, Any] = {
        "kind": "sample",
        "run": label,
        "t": round(t, 4),
        "source": source.name,
        "pids": pids,
        "tree_rss_mib": _mib(rss),
    }
    record.update(combine_gpus(gpus))
    record["gpus"] = gpus
    return record


def combine_gpus(gpus: list[dict]) -> dict:
    """The top-level figures of a sample from its per-GPU figures (all None when there are none)."""
    keys = ("tree_gpu_mib", "proc_gpu_mib", "other_gpu_mib", "device_used_mib", "device_total_mib",
            "gpu_util_pct", "power_w")
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


# --- the timeline's summary (pure) ---------------------------------------------------------------


class TimelineStats:
    """Peaks and means of a timeline, folded one sample at a time (the collector keeps no list)."""

    def __init__(self) -> None:
        self.n = 0
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.max_gap_s = 0.0
        self.sources: set[str] = set()
        self.peak: dict[str, float | None] = {
            k: None for k in ("tree_rss_mib", "tree_gpu_mib", "device_used_mib", "device_total_mib", "power_w")
        }
        self.t_peak_tree_gpu: float | None = None
        self.peak_proc_gpu_mib: dict[str, float] = {}
        self.max_pids = 0
        self._util_sum = 0.0
        self._util_n = 0
        self._energy_j = 0.0
        self._power_prev: tuple[float, float] | None = None

    def add(self, s: dict) -> None:
        t = s["t"]
        if self.t_last is not None:
            self.max_gap_s = max(self.max_gap_s, t - self.t_last)
        self.t_first = t if self.t_first is None else self.t_first
        self.t_last = t
        self.n += 1
        self.sources.add(s["source"])
        self.max_pids = max(self.max_pids, len(s.get("pids") or ()))
        for key in self.peak:
            v = s.get(key)
            if v is not None and (self.peak[key] is None or v > self.peak[key]):
                self.peak[key] = v
                if key == "tree_gpu_mib":
                    self.t_peak_tree_gpu = t
        for pid, mib in (s.get("proc_gpu_mib") or {}).items():
            if mib is not None and mib > self.peak_proc_gpu_mib.get(pid, -1.0):
                self.peak_proc_gpu_mib[pid] = mib
        if s.get("gpu_util_pct") is not None:
            self._util_sum += s["gpu_util_pct"]
            self._util_n += 1
        power = s.get("power_w")
        if power is not None:
            if self._power_prev is not None:  # trapezoid between consecutive samples with power
                t0, p0 = self._power_prev
                self._energy_j += (t - t0) * (p0 + power) / 2
            self._power_prev = (t, power)

    def result(self) -> dict:
        """Keys: samples, t_first, t_last, duration_s, mean_interval_ms, max_gap_ms, sources,
        peak_tree_rss_mib, peak_tree_gpu_mib, t_peak_tree_gpu, peak_proc_gpu_mib ({str(pid): MiB}),
        peak_device_used_mib, device_total_mib, peak_power_w, mean_gpu_util_pct, energy_j, max_pids.

        mean_interval_ms = (t_last - t_first) / (samples - 1) * 1000, the achieved sampling period.
        energy_j = trapezoid integral of power_w over t (joules), None without power figures.
        """
        duration = (self.t_last - self.t_first) if self.n else None
        return {
            "samples": self.n,
            "t_first": self.t_first,
            "t_last": self.t_last,
            "duration_s": round(duration, 4) if duration is not None else None,
            "mean_interval_ms": round(duration / (self.n - 1) * 1000, 3) if self.n > 1 else None,
            "max_gap_ms": round(self.max_gap_s * 1000, 3) if self.n > 1 else None,
            "sources": sorted(self.sources),
            "peak_tree_rss_mib": self.peak["tree_rss_mib"],
            "peak_tree_gpu_mib": self.peak["tree_gpu_mib"],
            "t_peak_tree_gpu": self.t_peak_tree_gpu,
            "peak_proc_gpu_mib": dict(sorted(self.peak_proc_gpu_mib.items())),
            "peak_device_used_mib": self.peak["device_used_mib"],
            "device_total_mib": self.peak["device_total_mib"],
            "peak_power_w": self.peak["power_w"],
            "mean_gpu_util_pct": round(self._util_sum / self._util_n, 1) if self._util_n else None,
            "energy_j": round(self._energy_j, 3) if self._power_prev is not None else None,
            "max_pids": self.max_pids,
        }


def summarize_timeline(samples: Iterable[dict]) -> dict:
    """Peaks and means of a list of samples (see `TimelineStats.result` for the keys).

    Records other than samples (header, summary) are skipped, so a whole file's records may be passed.
    """
    stats = TimelineStats()
    for s in samples:
        if s.get("kind", "sample") == "sample":
            stats.add(s)
    return stats.result()


def read_timeline(path: Path) -> dict:
    """{"header": dict|None, "samples": [dict], "summary": dict|None, "complete": bool} from a file.

    A torn last line (the collector was killed mid-write) is skipped; `complete` is False then,
    and whenever the summary line is missing.
    """
    out: dict[str, Any] = {"header": None, "samples": [], "summary": None, "complete": False}
    torn = False
    with open_text(Path(path)) as f:  # or its .gz twin
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                torn = True
                continue
            kind = rec.get("kind")
            if kind == "sample":
                out["samples"].append(rec)
            elif kind in ("header", "summary"):
                out[kind] = rec
    out["complete"] = out["summary"] is not None and not torn
    return out


# --- the collector loop --------------------------------------------------------------------------


class _StopFlag:
    """Set by SIGTERM/SIGINT; handlers are installed only from the main thread (Python's rule)."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def read_pid_file(pid_file: Path) -> int | None:
    """The pid in the file, or None while it is missing, empty or half-written."""
    try:
        text = pid_file.read_text().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def run_collector(
    out_path: Path,
    *,
    pid: int | None = None,
    pid_file: Path | None = None,
    interval_ms: int = 15,
    label: str = "",
    gpu_indices: list[int] | None = None,
    stop_file: Path | None = None,
    max_seconds: float | None = None,
) -> dict:
    """Sample the process tree rooted at `pid` (or at the pid written to `pid_file`) into `out_path`.

    Waits for `pid_file` to hold a pid (the backend writes its own pid there at start), then samples
    every `interval_ms` on a fixed monotonic schedule (tick k at start + k * interval; ticks missed
    because a sample ran long are skipped, not bunched) until the first of: the root exits,
    SIGTERM/SIGINT, `stop_file` exists, `max_seconds` (counted from the call, pid wait included).
    Writes the JSON lines described in the module docstring, flushing at least every second;
    every record carries `"run": label`.

    Returns the summary (also the file's last line): `summarize_timeline`'s keys plus
      kind ("summary"), t (epoch seconds, when written), run, source, fallback_reason, root_pid, gpus (header device list),
      interval_ms (asked), skipped_ticks, stop_reason ("root_exited" | "signal:SIGTERM" |
      "signal:SIGINT" | "stop_file" | "max_seconds" | "root_not_found"),
      collector_cpu_s and collector_cpu_pct (the collector's own CPU time over its sampling wall time).
    """
    if (pid is None) == (pid_file is None):
        raise LabInputError("give the collector exactly one of a pid or a pid file to watch")
    if interval_ms <= 0:
        raise LabInputError(f"interval_ms must be positive, got {interval_ms} (15 samples ~66 per second)")
    start = time.monotonic()
    deadline = start + max_seconds if max_seconds is not None else math.inf
    stop = _StopFlag()
    stop.install()

    def stop_reason() -> str | None:
        if stop.signal:
            return f"signal:{stop.signal}"
        if stop_file is not None and stop_file.exists():
            return "stop_file"
        if time.monotonic() >= deadline:
            return "max_seconds"
        return None

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    source = open_source(gpu_indices)
    try:
        with open(out_path, "w", encoding="utf-8") as out:
            header = {
                "kind": "header",
                "run": label,
                "source": source.name,
                "fallback_reason": source.fallback_reason,
                "gpus": source.devices(),
                "interval_ms": interval_ms,
                "collector_pid": os.getpid(),
                "t": round(time.time(), 4),
            }
            _write(out, header)
            out.flush()

            root_pid, reason = pid, None
            while root_pid is None and (reason := stop_reason()) is None:
                root_pid = read_pid_file(pid_file)
                if root_pid is None:
                    time.sleep(PID_FILE_POLL_S)
            try:
                tree = ProcessTree(root_pid) if root_pid is not None else None
            except psutil.NoSuchProcess:
                tree = None
                reason = "root_not_found"
            if tree is not None:
                reason, stats, skipped, cpu_s, wall_s = _sample_loop(source, tree, out, label, interval_ms, stop_reason)
            else:
                stats, skipped, cpu_s, wall_s = TimelineStats(), 0, 0.0, 0.0
            summary = {
                "kind": "summary",
                "run": label,
                "source": source.name,
                "fallback_reason": source.fallback_reason,
                "root_pid": root_pid,
                "gpus": header["gpus"],
                "interval_ms": interval_ms,
                **stats.result(),
                "skipped_ticks": skipped,
                "stop_reason": reason,
                "collector_cpu_s": round(cpu_s, 3),
                "collector_cpu_pct": round(100 * cpu_s / wall_s, 1) if wall_s > 0 else None,
                "t": round(time.time(), 4),
            }
            _write(out, summary)
            out.flush()
    finally:
        source.close()
        stop.restore()
    return summary


def _sample_loop(source, tree, out, label, interval_ms, stop_reason):
    """Sample until a stop; returns (reason, stats, skipped_ticks, cpu_s, wall_s)."""
    interval = interval_ms / 1000
    stats = TimelineStats()
    me = psutil.Process()
    cpu0 = sum(me.cpu_times()[:2])
    t0 = next_t = last_flush = time.monotonic()
    skipped = 0
    while True:
        now = time.monotonic()
        tree.refresh_if_due(now)
        if not tree.root_alive():
            reason = "root_exited"
            break
        if (reason := stop_reason()) is not None:
            break
        record = sample(source, tree, label)
        stats.add(record)
        _write(out, record)
        now = time.monotonic()
        if now - last_flush >= FLUSH_EVERY_S:
            out.flush()
            last_flush = now
        next_t += interval
        if next_t < now:  # the sample overran one or more ticks: skip them, keep the phase
            missed = math.ceil((now - next_t) / interval)
            skipped += missed
            next_t += missed * interval
        time.sleep(max(0.0, next_t - now))
    wall_s = time.monotonic() - t0
    cpu_s = sum(me.cpu_times()[:2]) - cpu0
    return reason, stats, skipped, cpu_s, wall_s


# --- helpers -------------------------------------------------------------------------------------


def _write(out, record: dict) -> None:
    out.write(json.dumps(record, separators=(",", ":")) + "\n")


def _mib(n_bytes: int) -> float:
    return round(n_bytes / MIB, 2)


def _add(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else round(a + b, 2)


def _sum_known(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known), 2) if known else None


def _nvml_try(fn, *args):
    """The NVML call's result, or None when the GPU or driver does not support it."""
    try:
        return fn(*args)
    except Exception:  # pynvml.NVMLError and subclasses; a fake may raise others
        return None


def _text(value: Any) -> str | None:
    """Old pynvml returned bytes for names and UUIDs; nvidia-ml-py returns str."""
    return value.decode() if isinstance(value, bytes) else value
