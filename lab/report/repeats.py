"""Repeated timed passes (--repeats N): each pass's figures, their median and spread.

One timed pass of a short workload is a single sample of a noisy quantity (the committed H100 runs
varied 9-30% from pass to pass). The runner times the whole workload N times in one process after
the warm-up, and the report's tables give, figure by figure, the median over the passes that count
(`lab.metrics.run_metrics`: a pass that compiled does not). This analysis gives every pass: its
output tokens/s, TTFT p50 and E2E p50, whether it counts, and the spread of the throughput,
(max - min) / median over the passes that count.

Runs written before every pass's records were kept have only `passes_s`: their throughput per pass
is then output tokens / pass seconds (output lengths are fixed), and their latencies the last pass's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lab.metrics import percentile, spread_pct
from lab.records import RunSummary


@dataclass(frozen=True)
class PassStats:
    """Each pass's output tokens/s (in order), and the median, min, max and spread of the passes that count."""

    run: str  # label, 'hf/batched'
    passes: int
    output_tokens_per_s: list[float]
    median: float | None
    min: float | None
    max: float | None
    spread_pct: float | None
    invalid: list[int] = field(default_factory=list)  # indices of the passes that compiled
    ttft_p50_s: list[float | None] = field(default_factory=list)  # each pass's; empty for older runs
    e2e_p50_s: list[float | None] = field(default_factory=list)


def pass_stats(rates: list[float], run: str = "", invalid: list[int] | None = None, **latencies) -> PassStats:
    """The stats of each pass's output tokens/s; the median, min, max and spread over the valid ones."""
    invalid = invalid or []
    counted = [r for i, r in enumerate(rates) if i not in invalid] or rates
    if not counted:
        return PassStats(run, len(rates), rates, None, None, None, None, invalid, **latencies)
    return PassStats(
        run,
        len(rates),
        rates,
        percentile(counted, 50),
        min(counted),
        max(counted),
        spread_pct(counted),
        invalid,
        **latencies,
    )


def run_pass_stats(run: RunSummary) -> PassStats | None:
    """One backend/mode's passes, from each pass's metrics or (older runs) its pass seconds."""
    if run.pass_metrics and len(run.pass_metrics) >= 2:
        per_pass = run.pass_metrics
        return pass_stats(
            [m.get("output_tokens_per_s") or 0.0 for m in per_pass],
            run.label,
            (run.metrics or {}).get("invalid_passes") or [],
            ttft_p50_s=[m.get("ttft_s_p50") for m in per_pass],
            e2e_p50_s=[m.get("e2e_s_p50") for m in per_pass],
        )
    passes, output_tokens = run.passes_s or [], run.metric("output_tokens")
    if len(passes) >= 2 and output_tokens:
        return pass_stats([output_tokens / s for s in passes if s > 0], run.label)
    return None


def repeated_passes(runs: list[RunSummary]) -> list[PassStats]:
    """One entry per backend/mode that timed the workload more than once; none where each made one pass."""
    return [s for s in (run_pass_stats(run) for run in runs) if s is not None]
