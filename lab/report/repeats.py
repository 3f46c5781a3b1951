"""Repeated timed passes (--repeats N): each pass's throughput, their median and spread.

One timed pass of a short workload is a single sample of a noisy quantity (the README shows how much
the same vLLM run varied from one process to the next on the H100). The runner can time the whole
workload N times in one process after the warm-up; the tables elsewhere in the report are the last
pass's, this analysis is every pass's. Output lengths are fixed, so every pass produces the same
output tokens and its throughput is output tokens / pass seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.metrics import percentile
from lab.records import RunSummary


@dataclass(frozen=True)
class PassStats:
    """Output tokens/s of each pass in order, their median, min and max, and the spread (max - min) / median."""

    run: str  # label, 'hf/batched'
    passes: int
    output_tokens_per_s: list[float]
    median: float | None
    min: float | None
    max: float | None
    spread_pct: float | None


def pass_stats(passes_s: list[float], output_tokens: int, run: str = "") -> PassStats:
    rates = [output_tokens / s for s in passes_s if s > 0]
    if not rates:
        return PassStats(run, len(passes_s), [], None, None, None, None)
    median = percentile(rates, 50)
    return PassStats(
        run, len(passes_s), rates, median, min(rates), max(rates), 100 * (max(rates) - min(rates)) / median
    )


def repeated_passes(runs: list[RunSummary]) -> list[PassStats]:
    """One entry per backend/mode that timed the workload more than once; none where each made one pass."""
    stats = []
    for run in runs:
        passes, output_tokens = run.passes_s or [], run.metric("output_tokens")
        if len(passes) >= 2 and output_tokens:
            stats.append(pass_stats(passes, output_tokens, run.label))
    return stats
