"""The report's online-serving section (issue 16): every backend/mode at every offered rate, the rate
each sustains and its ratio to vLLM's. The figures are `lab.online_metrics`' (docs/results.md)."""

from __future__ import annotations

from tabulate import tabulate

from lab.online_judged import saturated_text
from lab.online_metrics import LATENCY_GROWTH_LIMIT, SATURATION_SHARE, default_latency_bound_s
from lab.online_settings import OnlineSettings, rate_text
from lab.records import RunSummary
from lab.report.cut_markdown import rates_cut_lines
from lab.report.format import fmt
from lab.report.online_memory_markdown import rate_memory_table
from lab.report.sustained import BOUNDS_NOTE, columns, short_trace_note, sustained_table


def online_section(
    runs: list[RunSummary], online: OnlineSettings, memory: dict[str, list[dict]] | None = None
) -> list[str]:
    """'## Online serving' with its tables; [] for a run without a sweep. `memory`: each backend/mode's
    peaks at each rate (`lab.report.analyses.Analyses.sweep_memory`)."""
    swept = [r for r in runs if r.sweep]
    if not swept:
        return []
    lines = ["## Online serving (the paper's Figure 12)", ""] + conditions(online) + [""]
    lines += [points_table(swept), ""]
    lines += sustained_section(swept, online)
    skipped = [f"{r.label}: {', '.join(map(str, r.skipped_rates))}" for r in swept if r.skipped_rates]
    if skipped:
        lines += ["", "Rates skipped after saturation (--stop-at-saturation): " + "; ".join(skipped) + "."]
    if cut := rates_cut_lines(swept):
        lines += [""] + cut
    if table := rate_memory_table(swept, memory or {}):
        lines += [""] + table
    lines += [
        "",
        "The plot online.png (Plots) draws normalized latency against the offered rate; online_kv.png each rate's "
        "KV blocks in use over its own timed pass.",
    ]
    return lines


def conditions(online: OnlineSettings) -> list[str]:
    slos = ", ".join(f"{k} <= {v:g} s" for k, v in online.slos.items()) or "none given"
    cap = online.max_concurrency or "none"
    return [
        f"Offered rates {', '.join(str(rate_text(r)) for r in online.request_rates)} requests/s, each a timed pass of "
        f"its own after one warm-up; seeded gamma arrivals of burstiness {online.burstiness:g} (1: Poisson), the "
        f"same schedule for every backend/mode. Max concurrency: {cap}. hf static batches wait up to "
        f"{online.batch_wait_s:g} s to fill. Every latency counts from the request's arrival. SLOs: {slos}.",
        f"Saturated: requests begun (first scheduled) at below {SATURATION_SHARE:.0%} of the schedule's rate, the "
        f"last third's time per output token (TPOT) over {LATENCY_GROWTH_LIMIT:g}x the first third's, or the requests "
        "waiting to begin growing through the pass (docs/results.md). Achieved req/s counts completions, so on a "
        "finite pass it includes the drain of the last, longest requests and reads below the offered rate even "
        "where nothing queued; "
        "admitted req/s is the rate at which requests were begun. Normalized latency: mean of E2E / output tokens. "
        "'not judged (N <= M)': all N requests fit the backend's concurrency limit M at once, its KV pool never "
        "filled and nothing waited to begin, so no queue could form at any rate: the trace is too short to tell.",
    ]


def points_table(runs: list[RunSummary]) -> str:
    headers = [
        "backend/mode", "offered req/s", "achieved req/s", "admitted req/s", "output tok/s",
        latency_header([r.sweep for r in runs]), "TTFT p50 s", "TTFT p99 s", "TPOT p50 s", "ITL p99 s",
        "E2E p50 s", "E2E p99 s", "queue p50 s", "goodput req/s", "max lag ms", "saturated",
    ]  # fmt: skip
    rows = []
    for run in runs:
        for p in run.sweep:
            lag = p.get("max_submit_lag_s")
            rows.append([
                run.label, rate_text(p.get("request_rate")), fmt(p.get("achieved_rate_per_s")),
                fmt(p.get("admitted_rate_per_s")),
                fmt(p.get("output_tokens_per_s"), 1), latency_text(p),
                fmt(p.get("ttft_s_p50"), 3), fmt(p.get("ttft_s_p99"), 3), fmt(p.get("tpot_s_p50"), 4),
                fmt(p.get("itl_s_p99"), 4), fmt(p.get("e2e_s_p50"), 3), fmt(p.get("e2e_s_p99"), 3),
                fmt(p.get("queue_s_p50"), 3), fmt(p.get("goodput_per_s")),
                fmt(None if lag is None else 1000 * lag, 2), saturated_text(p),
            ])  # fmt: skip
    return tabulate(rows, headers=headers, tablefmt="github")


def sustained_section(runs: list[RunSummary], online: OnlineSettings) -> list[str]:
    """The highest rate each backend/mode sustains: at any latency, under the latency bound and under the
    SLOs."""
    sweeps = {(r.label,): r.sweep for r in runs}
    bound = online.norm_latency_bound_s or default_latency_bound_s(sweeps)
    source = "--norm-latency-bound" if online.norm_latency_bound_s else "4x the lowest at the lowest rate"
    headers, rows = sustained_table(sweeps, columns(bound, bool(online.slos)))
    table = tabulate(rows, headers=["backend/mode", *headers], tablefmt="github", disable_numparse=True)
    return [f"{BOUNDS_NOTE} Bound: {source}.", "", table] + short_trace_note(sweeps)


def latency_header(sweeps: list[list[dict]]) -> str:
    """'normalized latency s/token', with ', median (min-max)' where some rate has several passes."""
    ranged = any((p.get("passes_counted") or 1) > 1 for points in sweeps for p in points)
    return "normalized latency s/token" + (", median (min-max)" if ranged else "")


def latency_text(point: dict | None) -> str:
    """Normalized latency s/token as 'median (min-max)' over the passes that count; the median alone
    with one pass (or an older summary without the range)."""
    if point is None:
        return "-"
    median = fmt(point.get("normalized_latency_s"), 4)
    low, high = point.get("normalized_latency_s_min"), point.get("normalized_latency_s_max")
    if (point.get("passes_counted") or 1) < 2 or low is None or high is None:
        return median
    return f"{median} ({fmt(low, 4)}-{fmt(high, 4)})"
