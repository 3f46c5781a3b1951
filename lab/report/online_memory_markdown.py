"""The online-serving section's memory at each offered rate (issue 16), and the note that says which
rate the KV breakdown (Figure 2) of a sweep describes. The figures are `lab.accounting.pass_memory`'s:
each column names its source (the engine's KV samples, NVML, psutil, the torch allocator)."""

from __future__ import annotations

from tabulate import tabulate

from lab.online_metrics import last_offered_rates
from lab.online_settings import rate_text
from lab.records import RunSummary
from lab.report.format import fmt, mib


def rate_memory_table(runs: list[RunSummary], memory: dict[str, list[dict]]) -> list[str]:
    """'Memory at each offered rate': a row per backend/mode and rate; [] where no run has figures."""
    rows = []
    for run in runs:
        for p in memory.get(run.label, []):
            occupancy = p.get("kv_peak_occupancy")
            rows.append([
                run.label, rate_cell(p.get("request_rate")), fmt(p.get("passes")), fmt(p.get("kv_samples")),
                fmt(p.get("kv_peak_blocks_used")), fmt(p.get("kv_peak_tokens_stored")),
                fmt(None if occupancy is None else 100 * occupancy, 2), fmt(p.get("kv_peak_mib"), 1),
                fmt(p.get("nvml_tree_peak_mib"), 0), fmt(p.get("rss_tree_peak_mib"), 0),
                fmt(mib(p.get("allocator_peak_allocated_bytes")), 0),
                fmt(mib(p.get("allocator_peak_reserved_bytes")), 0),
            ])  # fmt: skip
    if not rows:
        return []
    headers = [
        "backend/mode", "offered req/s", "passes", "KV steps sampled (engine)", "KV peak blocks in use (engine)",
        "KV peak tokens stored (engine)", "KV peak pool occupancy % (engine)", "KV peak MiB (engine; vLLM: per GPU)",
        "NVML process tree peak MiB", "psutil RSS tree peak MiB", "allocator peak allocated MiB (torch)",
        "allocator peak reserved MiB (torch)",
    ]  # fmt: skip
    return [
        "### Memory at each offered rate",
        "",
        "Peaks inside each rate's own timed pass (with --repeats, the largest over its passes). KV: the paged "
        "engines' samples after every engine step (blocks in use, tokens whose K/V are stored, blocks in use / "
        "the usable pool D). NVML: GPU memory of the backend's process tree, sampled by the collector (vLLM's "
        "engine core included); psutil: its resident host memory. torch allocator: inside the hf process on "
        "CUDA, its peaks reset before each pass. '-': not measured there (the hf generate() modes keep no pool; "
        "vLLM's allocator runs in its engine process; a CPU run has neither NVML nor the allocator).",
        "",
        tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True),
        *_last_pass_only_note(runs, memory),
        *_unsampled_note(runs, memory),
    ]


def rate_cell(rate: str | float | None) -> str:
    """An offered rate as the tables write it: 'inf', or the number without a trailing '.0'."""
    text = rate_text(rate)
    return text if text == "inf" else f"{text:g}"


def _last_pass_only_note(runs: list[RunSummary], memory: dict[str, list[dict]]) -> list[str]:
    """Where a paged backend/mode has KV samples for its last rate only: an older run (kv.jsonl then kept
    only the last pass's)."""
    older = []
    for run in runs:
        points = memory.get(run.label) or []
        if points and points[-1]["kv_samples"] and not all(p["kv_samples"] for p in points):
            older.append(run.label)
    if not older:
        return []
    return [
        "",
        f"{', '.join(older)}: KV samples of the last pass only (the run was written before every pass kept its "
        "own); the other rates' KV columns are '-'.",
    ]


def _unsampled_note(runs: list[RunSummary], memory: dict[str, list[dict]]) -> list[str]:
    """Where no collector sample fell inside a rate's passes: why its NVML and RSS columns are '-'."""
    missed = [
        f"{run.label} at {rate_cell(p['request_rate'])} req/s ({fmt(p.get('seconds'), 3)} s)"
        for run in runs
        for p in memory.get(run.label, [])
        if not p.get("collector_samples")
    ]
    if not missed:
        return []
    return [
        "",
        f"No collector sample fell inside the timed pass of {'; '.join(missed)}: the pass was shorter than the "
        "collector's interval, or the collector got no CPU during it (--collector-interval-ms); its process-tree "
        "peaks are '-' rather than a neighbouring phase's.",
    ]


def breakdown_rate_note(runs: list[RunSummary]) -> list[str]:
    """Which offered rate the KV breakdown of a sweep describes (each backend/mode's last timed pass), and a
    warning where they differ: the bars then compare different loads. [] for a run without a sweep."""
    last = last_offered_rates(runs)
    if not last:
        return []
    rates = "; ".join(f"{label}: {rate_cell(rate)} req/s" for label, rate in last.items())
    text = f"In this sweep the KV breakdown is each backend/mode's last timed pass ({rates})"
    if len({str(rate) for rate in last.values()}) > 1:
        text += (
            ". These rates differ (--stop-at-saturation stopped the backend/modes at different rates), so the bars "
            "compare different loads, not like for like; the KV peaks at each rate are in Online serving."
        )
    else:
        text += ", the same rate for every backend/mode."
    return [text]
