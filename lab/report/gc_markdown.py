"""report.md's section on Python's garbage collections in each timed pass (result.json `passes[].gc` and
`engine_gc`, `lab.gc_pauses`): how much of a pass was the lab process's own pauses, and the engine's."""

from __future__ import annotations

from tabulate import tabulate

from lab.records import RunSummary
from lab.report.format import fmt


def _pauses(gc: dict | None) -> str:
    """One pass's collections in the lab's process: count, total ms, the full ones, the longest."""
    if gc is None:
        return "-"
    full = (gc.get("by_generation") or {}).get("2") or {"count": 0}
    return f"{gc['count']} ({fmt(gc['total_ms'], 1)} ms; {full['count']} full; longest {fmt(gc['max_ms'], 1)} ms)"


def _engine(gc: dict | None) -> str:
    """One pass's collections in the engine's own process (vLLM's engine core)."""
    if gc is None:
        return "-"
    return f"{gc['count']} ({fmt(gc['total_ms'], 1)} ms; {gc['full_count']} full, {fmt(gc['full_ms'], 1)} ms)"


def frozen_note(runs: list[RunSummary]) -> str:
    """The conditions' words on the lab process's frozen heap ('' for runs from before it was recorded)."""
    if not any((p.get("gc") or {}).get("frozen_objects") for r in runs for p in r.passes or []):
        return ""
    return "; the lab process's heap collected and frozen before each timed pass (see Garbage collection)"


def gc_section(runs: list[RunSummary]) -> list[str]:
    """Per backend/mode, each timed pass's collections and their share of the pass; [] for older runs."""
    recorded = [r for r in runs if any(p.get("gc") for p in r.passes or [])]
    if not recorded:
        return []
    rows = []
    for run in recorded:
        passes = run.passes or []
        shares = [p["gc"]["total_ms"] / 1e3 / p["duration_s"] for p in passes if p.get("gc") and p["duration_s"]]
        frozen = {p["gc"].get("frozen_objects") for p in passes if p.get("gc")} - {None}
        rows.append(
            [
                run.label,
                "; ".join(_pauses(p.get("gc")) for p in passes),
                ", ".join(f"{100 * s:.1f}" for s in shares) or "-",
                ", ".join(f"{n:,}" for n in sorted(frozen)) or "no",
                "; ".join(_engine(p.get("engine_gc")) for p in passes),
            ]
        )
    headers = ["backend/mode", "collections in each pass (lab process)", "% of each pass", "heap frozen (objects)"]
    headers += ["engine core, each pass"]
    return [
        "## Garbage collection in the timed passes",
        "",
        "Python's garbage collections in the lab's process during each timed pass (every thread waits while one "
        "runs; a full one, generation 2, walks every object not frozen): count, total and longest pause, from "
        "`gc.callbacks`. Before each pass the lab collects and freezes its own heap (`gc.freeze()`, as vLLM does in "
        "its engine core and `vllm serve` in its frontend), outside the timed interval; the engine's own processes "
        "keep vLLM's settings. Engine core: vLLM's, read with the lab's step facts (KV samples on; '-' otherwise).",
        "",
        tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True),
    ]
