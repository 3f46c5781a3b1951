"""The report's analyses, each computed once per report from the loaded run: the KV breakdown, the
decode bandwidth, the repeated passes, the memory at each offered rate and the observations. Renderers
only format what is here."""

from __future__ import annotations

from dataclasses import dataclass, field

from lab.accounting.bandwidth import DecodeBandwidth, omission, peak_gb_s, run_bandwidth
from lab.accounting.breakdown import run_breakdown
from lab.accounting.pass_memory import pass_memory, rate_memory
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
    sweep_memory: dict[str, list[dict]] = field(default_factory=dict)  # label -> pass_memory.rate_memory
    bandwidth_omitted: dict[str, str] = field(default_factory=dict)  # label -> why its decode bandwidth is left out


def memory_at_each_rate(view: RunView) -> dict[str, list[dict]]:
    """Each swept backend/mode's KV, NVML and allocator peaks at each offered rate, from its files (older
    runs too: summary.json's `sweep_memory` is not read)."""
    out = {}
    for run in view.runs:
        part = view.part(run)
        if run.sweep and part.result is not None:
            timeline = view.own_timeline(run)
            passes = pass_memory(part.result, part.records_every_pass, part.kv_samples_every_pass, timeline)
            out[run.label] = rate_memory(passes)
    return out


def analyse(view: RunView) -> Analyses:
    parts = view.ok_parts()
    peak, peak_source = peak_gb_s(view.manifest)
    breakdown = [e for p in parts if (e := run_breakdown(p.result, p.kv_samples, p.records)) is not None]
    bandwidth = [run_bandwidth(p.result, p.kv_samples, p.records, peak) for p in parts]
    omitted = {p.result.label: why for p in parts if (why := omission(p.result, p.kv_samples, p.records))}
    return Analyses(
        breakdown=breakdown,
        bandwidth=[e for e in bandwidth if e is not None],
        peak_gb_s=peak,
        peak_source=peak_source,
        repeats=repeated_passes(view.runs),
        observations=observations(view, breakdown),
        sweep_memory=memory_at_each_rate(view),
        bandwidth_omitted=omitted,
    )
