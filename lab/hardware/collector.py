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
the peak. Output is JSON lines: a header, one sample per tick, a summary (`lab.hardware.timeline`
reads them back). Where the figures come from: `lab.hardware.sources`.

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
from typing import Any

import psutil

from lab.errors import LabInputError
from lab.hardware.sources import Source, combine_gpus, mib, open_source
from lab.hardware.timeline import TimelineStats

TREE_REFRESH_S = 0.5  # re-list the root's descendants this often (listing walks all of /proc)
FLUSH_EVERY_S = 1.0  # the output file lags the samples by at most this much
PID_FILE_POLL_S = 0.05


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


def sample(source: Source, tree: ProcessTree, run_name: str = "") -> dict:
    """One sample of the tree (and, with NVML, of the selected GPUs).

    Keys (MiB = 2**20 bytes; NVML-only figures are None with the psutil source):
      kind            "sample"
      run             the backend/mode's name (`config.run_name`)
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
        "run": run_name,
        "t": round(t, 4),
        "source": source.name,
        "pids": pids,
        "tree_rss_mib": mib(rss),
    }
    record.update(combine_gpus(gpus))
    record["gpus"] = gpus
    return record


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
    run_name: str = "",
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
    every record carries `"run": run_name`.

    Returns the summary (also the file's last line): `summarize_timeline`'s keys plus
      kind ("summary"), t (epoch seconds, when written), run, source, fallback_reason, root_pid,
      gpus (header device list),
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
                "run": run_name,
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
                reason, stats, skipped, cpu_s, wall_s = _sample_loop(
                    source, tree, out, run_name, interval_ms, stop_reason
                )
            else:
                stats, skipped, cpu_s, wall_s = TimelineStats(), 0, 0.0, 0.0
            summary = {
                "kind": "summary",
                "run": run_name,
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


def _sample_loop(source, tree, out, run_name, interval_ms, stop_reason):
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
        record = sample(source, tree, run_name)
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
