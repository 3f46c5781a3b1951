"""The README's H100 tables from run folders: medians over the timed passes that count, with spreads.

Each run folder gives, per backend/mode, its output tokens/s (median, min-max over the passes that
count, spread %) and its latencies from arrival (TTFT p50 and p99, E2E p99: medians over passes),
read through the report's own loading (lab.report.run_view, lab.report.repeats), so the table says
what `lab report` says. Folders of the same model and workload (a step cut into several calls) are
one row; a backend/mode measured twice for one row is refused.

Usage: python3 scripts/gpu/readme_table.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from lab.config import BACKEND_MODES, run_label
from lab.report.format import fmt
from lab.report.repeats import run_pass_stats
from lab.report.run_view import RunView

LABELS = [run_label(b, m) for b, modes in BACKEND_MODES.items() for m in modes]


def rows_by_workload(run_dirs: list[Path]) -> dict[str, dict]:
    """'llama-1b, seed (4 requests)' -> {backend/mode label: RunSummary}."""
    rows: dict[str, dict] = {}
    for run_dir in run_dirs:
        view = RunView(run_dir)
        engine = view.engine
        requests = next((r.workload or {} for r in view.runs if r.workload), {}).get("requests")
        key = f"{engine.model.removeprefix('synthetic:')}, {engine.workload} ({requests} requests)"
        row = rows.setdefault(key, {})
        for run in view.runs:
            if run.label in row:
                raise SystemExit(f"{run.label} of {key} is in two of the folders given")
            row[run.label] = run
    return rows


def throughput_cell(run) -> str:
    if not run.ok:
        return "failed"
    stats = run_pass_stats(run)
    passes = (run.metrics or {}).get("passes_counted")
    if stats is None:
        return f"{fmt(run.metric('output_tokens_per_s'), 1)} (1 pass)"
    return f"{fmt(stats.median, 1)} ({fmt(stats.min, 1)}-{fmt(stats.max, 1)}, {passes} passes)"


def latency_cell(run) -> str:
    if not run.ok:
        return "failed"
    return " / ".join(fmt(run.metric(k), 3) for k in ("ttft_s_p50", "ttft_s_p99", "e2e_s_p99"))


def table(rows: dict[str, dict], cell, title: str) -> str:
    labels = [label for label in LABELS if any(label in row for row in rows.values())]
    lines = [f"| {title} | " + " | ".join(labels) + " |", "| --- " * (len(labels) + 1) + "|"]
    for key, row in rows.items():
        lines.append(f"| {key} | " + " | ".join(cell(row[label]) if label in row else "" for label in labels) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    rows = rows_by_workload([Path(a) for a in argv])
    print(table(rows, throughput_cell, "output tokens/s: median (min-max over the passes)"))
    print()
    print(table(rows, latency_cell, "TTFT p50 / TTFT p99 / E2E p99 s, from arrival (medians over the passes)"))


if __name__ == "__main__":
    main(sys.argv[1:])
