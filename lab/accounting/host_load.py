"""The host CPU's load during each timed pass, from the counters the runner read at the pass's ends
(`lab.hardware.host_cpu`, `host_cpu_start` / `host_cpu_end` of each phase): pure arithmetic.

Why: the transformers eager paths launch every kernel from Python, so their times grow with whatever
else keeps the host's CPUs busy (another process's torch.compile, another engine) or with a cgroup
quota that throttles the lab; vLLM (CUDA graphs) barely moves. These figures tell a fair timing from
an inflated one. Definitions, per timed pass of `seconds` (its epoch start to end) on `logical_cpus`
CPUs (those the lab may run on, `scope`):

- host_busy_cpus = busy CPU seconds of those CPUs (every process's, the lab's included: user, system,
  irq, softirq, steal; not idle or iowait) / seconds: how many CPUs were busy on average;
- host_busy_pct = 100 * host_busy_cpus / logical_cpus;
- backend_cpu_s = user + system seconds of the backend's process tree in the pass (its live processes;
  None where the tree's total went down: a process of it ended and took its seconds along);
  backend_cpus = backend_cpu_s / seconds;
- other_cpus = host_busy_cpus - backend_cpus (at least 0): the rest of the host's work (the collector,
  neighbours, the OS);
- throttled_s, throttled_periods: the growth of the lab's cgroup v2 `throttled_usec` (in s) and
  `nr_throttled`; cpu_quota_cpus = cpu.max's quota / period (None: no quota, or no cgroup v2);
  cgroup_read: whether the cgroup's cpu.stat was read at all (False: every cgroup figure is unknown).

/proc/stat counts in ticks of 10 ms per CPU, so a pass of well under a second reads coarse figures.
"""

from __future__ import annotations

from lab.accounting.energy import timed_phases
from lab.metrics import counter_delta, ratio

OTHER_WORK_SHARE = 0.25  # other work on more than this share of the logical CPUs: the pass may be inflated
THROTTLED_SHARE = 0.01  # the cgroup throttled the lab for more than this share of the pass: the same
NOT_RECORDED = "not recorded (a run from before the lab read the host CPU)"
INFLATED = "timings of CPU-bound paths (transformers eager modes) may be inflated by other work on the host"


def pass_host_load(phase: dict) -> dict | None:
    """One timed pass's figures (the module's definitions); None where the phase has no host CPU readings."""
    start, end = phase.get("host_cpu_start"), phase.get("host_cpu_end")
    if not start or not end:
        return None
    seconds = phase["end"] - phase["start"]
    cpus = end["logical_cpus"]
    busy_s = counter_delta(start["busy_s"], end["busy_s"])
    backend_s = counter_delta(start.get("tree_cpu_s"), end.get("tree_cpu_s"))
    busy_cpus, backend_cpus = ratio(busy_s, seconds), ratio(backend_s, seconds)
    cg_start, cg_end = start.get("cgroup") or {}, end.get("cgroup") or {}
    throttled = counter_delta(cg_start.get("throttled_usec"), cg_end.get("throttled_usec"), 1e6)
    return {
        "phase": phase["phase"],
        "seconds": seconds,
        "logical_cpus": cpus,
        "host_busy_s": busy_s,
        "host_busy_cpus": busy_cpus,
        "host_busy_pct": ratio(100 * busy_cpus, cpus) if busy_cpus is not None else None,
        "backend_cpu_s": backend_s,
        "backend_cpus": backend_cpus,
        "other_cpus": max(0.0, busy_cpus - backend_cpus) if None not in (busy_cpus, backend_cpus) else None,
        "throttled_s": throttled,
        "throttled_periods": counter_delta(cg_start.get("nr_throttled"), cg_end.get("nr_throttled")),
        "cpu_quota_cpus": cg_end.get("quota_cpus"),
        "cgroup_read": cg_end.get("usage_usec") is not None,
    }


def load_warnings(load: dict) -> list[str]:
    """Why a pass's CPU-bound timings may be inflated, in words; [] where neither threshold is passed.

    Other work above OTHER_WORK_SHARE of the logical CPUs (other_cpus, or the whole host's busy CPUs
    where the backend's own are unknown), or cgroup throttling above THROTTLED_SHARE of the pass."""
    reasons = []
    other = load["other_cpus"] if load["other_cpus"] is not None else load["host_busy_cpus"]
    if other is not None and other > OTHER_WORK_SHARE * load["logical_cpus"]:
        reasons.append(
            f"other work kept {other:.1f} of the {load['logical_cpus']} logical CPUs busy "
            f"(more than {OTHER_WORK_SHARE:.0%})"
        )
    throttled = load["throttled_s"]
    if throttled is not None and throttled > THROTTLED_SHARE * load["seconds"]:
        reasons.append(
            f"the cgroup throttled the lab for {throttled:.2f} s of the {load['seconds']:.2f} s pass "
            f"(more than {THROTTLED_SHARE:.0%})"
        )
    return reasons


def host_load_summary(phases: list[dict]) -> dict:
    """summary.json's `host_cpu` of one backend/mode.

    {"available": True, "logical_cpus", "scope", "cgroup_reason" (why cgroup figures are None, or None),
     "max_other_cpus", "max_throttled_s" (the worst pass's, for `lab compare`), "warned_passes" (how many
     passes have warnings), "passes" (each timed pass's `pass_host_load`, with its `warnings`)};
    {"available": False, "reason"} where no timed pass has readings (no pass finished; a run from before
    the lab read them).
    """
    timed = timed_phases(phases)
    read = [(phase, load) for phase in timed if (load := pass_host_load(phase)) is not None]
    if not read:
        return {"available": False, "reason": NOT_RECORDED if timed else "no timed pass finished"}
    passes = [load for _, load in read]
    for load in passes:
        load["warnings"] = load_warnings(load)
    last = read[-1][0]["host_cpu_end"]
    return {
        "available": True,
        "logical_cpus": last["logical_cpus"],
        "scope": last.get("scope"),
        "cgroup_reason": (last.get("cgroup") or {}).get("reason"),
        "max_other_cpus": largest(p["other_cpus"] for p in passes),
        "max_throttled_s": largest(p["throttled_s"] for p in passes),
        "warned_passes": sum(1 for p in passes if p["warnings"]),
        "passes": passes,
    }


def largest(values) -> float | None:
    """The largest of the values that are known; None where none is."""
    known = [v for v in values if v is not None]
    return max(known) if known else None
