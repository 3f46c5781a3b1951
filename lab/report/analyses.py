"""The report's analyses, each computed once per report from the loaded run: the KV breakdown, the
decode bandwidth, the repeated passes and the observations. Renderers only format what is here."""

from __future__ import annotations

from dataclasses import dataclass

from lab.accounting.bandwidth import DecodeBandwidth, peak_gb_s, run_bandwidth
from lab.accounting.breakdown import run_breakdown
from lab.records import BreakdownEntry
from lab.report.observations import Observation, observations
from lab.report.repeats import PassStats, repeated_passes
from lab.report.run_view import RunView


@dataclass(frozen=True)
class Analyses:
    breakdown: list[BreakdownEntry]  # one per backend/mode with cache figures
    bandwidth: list[DecodeBandwidth]  # one per backend/mode with decode steps
    peak_gb_s: float | None  # the GPU's theoretical memory bandwidth
    peak_source: str  # the GPU's name, or why there is no peak
    repeats: list[PassStats]  # one per backend/mode that timed several passes
    observations: list[Observation]


def analyse(view: RunView) -> Analyses:
    parts = view.ok_parts()
    peak, peak_source = peak_gb_s(view.manifest)
    breakdown = [e for p in parts if (e := run_breakdown(p.result, p.kv_samples, p.records)) is not None]
    bandwidth = [run_bandwidth(p.result, p.kv_samples, p.records, peak) for p in parts]
    return Analyses(
        breakdown=breakdown,
        bandwidth=[e for e in bandwidth if e is not None],
        peak_gb_s=peak,
        peak_source=peak_source,
        repeats=repeated_passes(view.runs),
        observations=observations(view, breakdown),
    )
