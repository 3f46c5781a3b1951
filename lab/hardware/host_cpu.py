"""The host CPU meter: the CPU time counters of the host, of the lab's cgroup and of the backend's process
tree, read by the runner at each phase boundary beside the GPU energy counters (`lab.phases`).

Why: the transformers eager paths (hf/batched, hf/continuous) are bound by the host CPU (each kernel is
launched from Python), so a neighbour's torch.compile or engine on the same host, or a cgroup quota that
throttles the lab, slows them several times while vLLM (CUDA graphs) barely moves. These readings let
the report say, per timed pass, how busy the CPUs were and how much of it was the backend's own work
(`lab.accounting.host_load` does the arithmetic).

Every reading is a counter (seconds or microseconds since boot or since the cgroup was made), read from
/proc and /sys without sleeping: the cost is a few file reads per boundary.

- the CPUs usable: `os.sched_getaffinity(0)` (a container's cpuset, else every CPU); the busy and idle
  seconds are summed over those CPUs only (psutil's per-CPU times), so a big host's other CPUs, on
  which the lab cannot run, do not count;
- the cgroup v2 figures of the lab's own cgroup (`cpu.stat`: usage_usec, nr_throttled,
  throttled_usec; `cpu.max`: the quota), None with the reason where they cannot be read (cgroup v1,
  not Linux, the root cgroup has no cpu.max);
- the backend's process tree: user + system seconds of the root (the backend process, or torchrun's
  agent) and its live descendants; a process that ends between listing and reading is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_STAT_KEYS = ("usage_usec", "nr_throttled", "throttled_usec")


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on (its affinity); every CPU where the OS cannot say."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(psutil.cpu_count() or 1))


def configured_cpus() -> int | None:
    """How many CPUs the OS has configured, online or not (None where it cannot say)."""
    try:
        return os.sysconf("SC_NPROCESSORS_CONF")
    except (AttributeError, ValueError, OSError):
        return psutil.cpu_count()


def busy_idle_s(times) -> tuple[float, float]:
    """(busy, idle) seconds of one psutil cpu_times reading: idle = idle + iowait, busy = the rest of
    the total. Linux counts guest time inside user and nice, so guest and guest_nice are not added again."""
    fields = times._asdict()
    total = sum(fields.values()) - fields.get("guest", 0.0) - fields.get("guest_nice", 0.0)
    idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
    return total - idle, idle


def cpus_busy_idle_s(cpus: list[int]) -> tuple[float, float, int, str]:
    """(busy s, idle s, CPUs counted, scope) summed over `cpus`; over the whole host where per-CPU counters
    may not line up with CPU numbers (psutil lists the online CPUs only: an offline one shifts the rest),
    and `scope` says which."""
    per_cpu = psutil.cpu_times(percpu=True)
    if len(per_cpu) == configured_cpus() and all(c < len(per_cpu) for c in cpus):
        pairs = [busy_idle_s(per_cpu[c]) for c in cpus]
        return sum(b for b, _ in pairs), sum(i for _, i in pairs), len(cpus), "usable CPUs"
    busy, idle = busy_idle_s(psutil.cpu_times())
    return busy, idle, len(per_cpu), "whole host"


def own_cgroup_dir(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[Path | None, str]:
    """(the lab's cgroup v2 folder, "") or (None, why not)."""
    if not root.exists():
        return None, f"no {root} (not Linux)"
    if not (root / "cgroup.controllers").exists():
        return None, f"cgroup v1 (no unified cgroup v2 hierarchy at {root})"
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError as exc:
        return None, f"cannot read {proc_cgroup}: {exc}"
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    own = root / path.lstrip("/") if path else root
    return (own if (own / "cpu.stat").exists() else root), ""


def parse_cpu_stat(text: str) -> dict[str, int | None]:
    """usage_usec, nr_throttled, throttled_usec of a cpu.stat text; None for a key it lacks (the cpu
    controller is off for the cgroup: only usage is counted)."""
    values = dict(line.split(None, 1) for line in text.splitlines() if line.strip())
    return {key: int(values[key]) if key in values else None for key in CPU_STAT_KEYS}


def parse_cpu_max(text: str) -> float | None:
    """The quota in CPUs of a cpu.max text ("quota period"); None for "max" (no quota)."""
    quota, period = text.split()[:2]
    return None if quota == "max" else int(quota) / int(period)


def read_cgroup(folder: Path | None, reason: str) -> dict:
    """The cgroup's cpu.stat figures and `quota_cpus`, each None where unreadable, and `reason` for those."""
    reading: dict = dict.fromkeys(CPU_STAT_KEYS)
    reading["quota_cpus"] = None
    reasons = [reason] if reason else []
    if folder is not None:
        try:
            reading.update(parse_cpu_stat((folder / "cpu.stat").read_text()))
        except OSError as exc:
            reasons.append(f"cannot read {folder / 'cpu.stat'}: {exc.strerror}")
        try:
            reading["quota_cpus"] = parse_cpu_max((folder / "cpu.max").read_text())
        except OSError:
            reasons.append(f"no {folder / 'cpu.max'} (the root cgroup has no quota)")
    reading["reason"] = "; ".join(reasons) or None
    return reading


def tree_cpu_s(root_pid: int) -> float | None:
    """User + system seconds of the process `root_pid` and its live descendants; None where the root is gone."""
    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:  # ended since it was listed
            continue
        total += times.user + times.system
    return total


class HostCpuMeter:
    """Reads the host's, the cgroup's and the process tree's CPU counters (`read`) at a phase boundary."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.cpus = usable_cpus()
        self.cgroup_dir, self.cgroup_reason = own_cgroup_dir()

    def read(self) -> dict:
        """{"busy_s", "idle_s" (summed over the CPUs counted), "scope" (which: "usable CPUs" or "whole host"),
        "logical_cpus" (how many), "tree_cpu_s", "cgroup": read_cgroup()}: counters, no rates."""
        busy, idle, counted, scope = cpus_busy_idle_s(self.cpus)
        return {
            "busy_s": busy,
            "idle_s": idle,
            "scope": scope,
            "logical_cpus": counted,
            "tree_cpu_s": tree_cpu_s(self.root_pid),
            "cgroup": read_cgroup(self.cgroup_dir, self.cgroup_reason),
        }
