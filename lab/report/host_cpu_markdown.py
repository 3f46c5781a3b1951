"""report.md's '## Host CPU during each timed pass': how busy the host's CPUs were in each pass, how much
of it was the backend's own work, and whether the lab's cgroup was throttled, with a warning where other
work or throttling may have inflated the timings of the CPU-bound paths.

Numbers come from summary.json's `host_cpu` (`lab.accounting.host_load`); runs from before the lab read
the host CPU say so instead.
"""

from __future__ import annotations

from tabulate import tabulate

from lab.accounting.host_load import INFLATED, NOT_RECORDED, OTHER_WORK_SHARE, THROTTLED_SHARE
from lab.records import RunSummary
from lab.report.format import fmt

HEADERS = [
    "backend/mode",
    "pass",
    "pass s",
    "host busy CPUs (% of logical)",
    "backend's own CPUs",
    "other work CPUs",
    "cgroup throttled s (periods)",
    "cgroup quota CPUs",
]


def busy_text(load: dict) -> str:
    """'1.9 of 2 (95%)'."""
    if load["host_busy_cpus"] is None:
        return "-"
    return f"{load['host_busy_cpus']:.2f} of {load['logical_cpus']} ({load['host_busy_pct']:.0f}%)"


def throttled_text(load: dict) -> str:
    if load["throttled_s"] is None:
        return "-"
    return f"{load['throttled_s']:.2f} ({fmt(load['throttled_periods'], 0)})"


def pass_row(label: str, index: int, load: dict) -> list:
    return [
        label,
        index,
        fmt(load["seconds"], 3),
        busy_text(load),
        fmt(load["backend_cpus"], 2),
        fmt(load["other_cpus"], 2),
        throttled_text(load),
        quota_text(load),
    ]


def quota_text(load: dict) -> str:
    """The quota in CPUs, "none" where the cgroup has none, "-" where the cgroup could not be read."""
    if load["cpu_quota_cpus"] is not None:
        return fmt(load["cpu_quota_cpus"], 2)
    return "none" if load.get("cgroup_read") else "-"


def host_cpu_section(runs: list[RunSummary]) -> list[str]:
    """The section: one row per timed pass of each backend/mode, warnings, and the runs without figures."""
    rows, warnings, missing, cgroup_notes = [], [], [], set()
    for run in runs:
        host = run.host_cpu
        if not host or not host.get("available"):
            reason = (host or {}).get("reason") or NOT_RECORDED
            missing.append(f"- {run.label}: n/a: {reason}")
            continue
        if host.get("cgroup_reason"):
            cgroup_notes.add(host["cgroup_reason"])
        for index, load in enumerate(host["passes"], start=1):
            rows.append(pass_row(run.label, index, load))
            if load.get("warnings"):
                said = "; ".join(load["warnings"])
                warnings.append(f"- **Warning** ({run.label}, pass {index}): {said}: {INFLATED}.")
    lines = [
        "## Host CPU during each timed pass",
        "",
        "The transformers eager paths launch every kernel from Python, so a busy or throttled host CPU slows them "
        "while vLLM (CUDA graphs) barely moves. Read by the backend process at each pass's ends: the busy time of "
        "the logical CPUs the lab may run on (/proc/stat via psutil, every process's work), the user + system "
        "time of the backend's process tree, and the lab's cgroup v2 throttling (cpu.stat, cpu.max). Figures "
        "are CPUs busy on average over the pass; other work = host busy - the backend's own. A warning marks a "
        f"pass where other work exceeded {OTHER_WORK_SHARE:.0%} of the logical CPUs or the cgroup throttled the "
        f"lab for more than {THROTTLED_SHARE:.0%} of the pass. /proc/stat counts 10 ms ticks per CPU: a pass "
        "well under a second reads coarse figures (a share may pass 100%).",
    ]
    if rows:
        lines += ["", tabulate(rows, headers=HEADERS, tablefmt="github", disable_numparse=True)]
    if cgroup_notes:
        lines += ["", "cgroup figures unknown: " + "; ".join(sorted(cgroup_notes)) + "."]
    if warnings:
        lines += [""] + warnings
    elif rows:
        lines += ["", "No pass passed either threshold."]
    if missing:
        lines += [""] + missing
    return lines
