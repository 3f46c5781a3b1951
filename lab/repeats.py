"""Repeated timed passes (--repeats N): each pass's throughput, their median and spread.

One timed pass of a short workload is a single sample of a noisy quantity: on the H100 the same
vLLM run took 1.51 to 1.92 s from one process to the next (results/gpu-h100/agree-512). The runner can
time the whole workload N times in one process after the warm-up; the tables elsewhere in the report
are the last pass's, this section is every pass's. Output lengths are fixed, so every pass produces
the same output tokens and its throughput is output tokens / pass seconds.
"""

from __future__ import annotations

from tabulate import tabulate

from lab.metrics import percentile
from lab.report import fmt, label


def pass_stats(passes_s: list[float], output_tokens: int) -> dict:
    """Output tokens/s of each pass, their median, min and max, and the spread (max - min) / median."""
    rates = [output_tokens / s for s in passes_s if s > 0]
    if not rates:
        return {"passes": len(passes_s), "output_tokens_per_s": [], "median": None, "min": None, "max": None,
                "spread_pct": None}
    median = percentile(rates, 50)
    return {
        "passes": len(passes_s),
        "output_tokens_per_s": rates,
        "median": median,
        "min": min(rates),
        "max": max(rates),
        "spread_pct": 100 * (max(rates) - min(rates)) / median,
    }


def repeats_section(runs: list[dict]) -> list[str]:
    """Markdown lines of the 'Repeated timed passes' section; none where every run made one pass."""
    rows = []
    for run in runs:
        passes = run.get("passes_s") or []
        output_tokens = (run.get("metrics") or {}).get("output_tokens")
        if len(passes) < 2 or not output_tokens:
            continue
        stats = pass_stats(passes, output_tokens)
        rows.append([
            label(run), stats["passes"], ", ".join(fmt(r, 0) for r in stats["output_tokens_per_s"]),
            fmt(stats["median"], 1), fmt(stats["min"], 1), fmt(stats["max"], 1), f"{stats['spread_pct']:.1f}",
        ])
    if not rows:
        return []
    return [
        "## Repeated timed passes", "",
        "The whole workload timed several times in the same process after the warm-up (`--repeats`). "
        "Output tokens/s of each pass in order; the other tables are the last pass's. Spread: "
        "(max - min) / median.", "",
        tabulate(rows, headers=["backend/mode", "passes", "output tokens/s of each pass", "median",
                                "min", "max", "spread %"], tablefmt="github", disable_numparse=True),
    ]
