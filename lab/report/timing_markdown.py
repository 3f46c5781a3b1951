"""report.md's timing sections: throughput, latency from arrival, per-token latency, the repeated
passes and what was compiled, from the runs' summaries (metrics recomputed from their records by
`RunView`) and the repeats analysis."""

from __future__ import annotations

from tabulate import tabulate

from lab.online_metrics import last_offered_rates
from lab.online_settings import rate_text
from lab.pass_records import CompileCount
from lab.records import RunSummary
from lab.report.format import fmt
from lab.report.repeats import PassStats

LATENCY_NOTE = (
    "One clock for every backend: each latency counts from the request's arrival (offline, t=0: every request is "
    "available when the timed pass starts; online, its arrival in the seeded schedule). TTFT: arrival to first "
    "token; E2E: arrival to last token; queueing: "
    "arrival to first scheduled (hf: its batch's generate() call starts; vLLM: the engine's first SCHEDULED event; "
    "'-' where unknown); service: first scheduled to last token (E2E = queueing + service)."
)
PER_TOKEN_NOTE = (
    "TPOT: (E2E - TTFT) / (output tokens - 1) per request, percentiles over requests (as `vllm bench`). ITL: the "
    "gaps between consecutive tokens of a request, pooled over every request (as `vllm bench`), percentiles over gaps."
)


def passes_note(runs: list[RunSummary]) -> str:
    """What the tables' figures are: one pass, or the median over the passes that count; a sweep's last rate."""
    return sweep_note(runs) + _passes_note(runs)


def sweep_note(runs: list[RunSummary]) -> str:
    """For an online sweep: which offered rate these offline tables show, per backend/mode ('' otherwise)."""
    last = [f"{label} {rate_text(rate)}" for label, rate in last_offered_rates(runs).items()]
    if not last:
        return ""
    return (
        "An online sweep: this table and the latency tables below give each backend/mode's last offered rate "
        f"(req/s: {', '.join(last)}), latencies from each request's own arrival; every rate: Online serving. "
    )


def _passes_note(runs: list[RunSummary]) -> str:
    counts = {(r.metrics or {}).get("passes") or 1 for r in runs if r.ok}
    if counts <= {1}:
        return "One timed pass per backend/mode (warm-up and loading excluded): no spread; use --repeats 3 or more."
    note = (
        "Each figure is the median over the timed passes that count (warm-up and loading excluded; a pass that "
        "compiled does not count); spread: (max - min) / median of output tokens/s over those passes."
    )
    older = [r.label for r in runs if r.ok and (r.metrics or {}).get("passes", 1) > len(r.pass_metrics or [])]
    if older:
        note += f" {', '.join(older)}: recorded before every pass's records were kept: latencies are its last pass's."
    return note


def throughput_table(runs: list[RunSummary], stats: dict[str, PassStats]) -> str:
    rows = []
    for run in runs:
        m, s = run.metrics or {}, stats.get(run.label)
        rows.append(
            [
                run.label,
                run.status,
                fmt(m.get("passes_counted")) + ("" if not m.get("invalid_passes") else " (invalid: excluded)"),
                fmt(m.get("requests_ok")),
                fmt(m.get("output_tokens")),
                fmt(m.get("duration_s"), 3),
                fmt(m.get("requests_per_s")),
                fmt(m.get("output_tokens_per_s"), 1),
                "-" if s is None or s.spread_pct is None else f"{s.spread_pct:.1f}",
                fmt(m.get("total_tokens_per_s"), 1),
                fmt(run.load_s, 1),
            ]
        )
    headers = ["backend/mode", "status", "passes", "requests", "output tokens", "duration s", "requests/s"]
    headers += ["output tokens/s", "spread %", "total tokens/s", "load s"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _metric_table(runs: list[RunSummary], columns: list[tuple[str, str]]) -> str:
    rows = [[run.label] + [fmt(run.metric(key), 4) for _, key in columns] for run in runs]
    return tabulate(rows, headers=["backend/mode"] + [h for h, _ in columns], tablefmt="github", disable_numparse=True)


def latency_table(runs: list[RunSummary]) -> str:
    """TTFT, E2E, queueing and service time, p50 and p99, from arrival."""
    columns = [
        (f"{name} {p} s", f"{key}_{p}")
        for name, key in (("TTFT", "ttft_s"), ("E2E", "e2e_s"), ("queueing", "queue_s"), ("service", "service_s"))
        for p in ("p50", "p99")
    ]
    return _metric_table(runs, columns)


def per_token_table(runs: list[RunSummary]) -> str:
    """TPOT p50/p99 beside ITL p50/p90/p99."""
    columns = [("TPOT p50 s", "tpot_s_p50"), ("TPOT p99 s", "tpot_s_p99")]
    columns += [(f"ITL {p} s", f"itl_s_{p}") for p in ("p50", "p90", "p99")]
    return _metric_table(runs, columns)


def latency_section(runs: list[RunSummary]) -> list[str]:
    lines = ["## Latency", "", LATENCY_NOTE, "", latency_table(runs), "", PER_TOKEN_NOTE, "", per_token_table(runs)]
    async_vllm = [r.label for r in runs if r.backend == "vllm" and (r.engine or {}).get("async_scheduling")]
    if async_vllm:
        lines += [
            "",
            f"{', '.join(async_vllm)}: async scheduling on (the engine schedules the next step before the last "
            "step's output is out), so each token reaches the caller about one engine step after it was computed.",
        ]
    if any(r.ok and (r.metrics or {}).get("itl_s_p50") is None for r in runs):
        lines += ["", "'-' for ITL: that run recorded no per-token times (runs before the arrival clock)."]
    return lines


def repeats_section(stats: list[PassStats]) -> list[str]:
    """The 'Repeated timed passes' section; none where every run made one pass."""
    if not stats:
        return []
    rows = [
        [
            s.run,
            s.passes,
            ", ".join(fmt(r, 0) + ("*" if i in s.invalid else "") for i, r in enumerate(s.output_tokens_per_s)),
            f"{fmt(s.median, 1)} ({fmt(s.min, 1)}-{fmt(s.max, 1)})",
            "-" if s.spread_pct is None else f"{s.spread_pct:.1f}",
            ", ".join(fmt(v, 3) for v in s.ttft_p50_s) or "-",
            ", ".join(fmt(v, 3) for v in s.e2e_p50_s) or "-",
        ]
        for s in stats
    ]
    headers = ["backend/mode", "passes", "output tokens/s of each pass", "median (min-max)", "spread %"]
    headers += ["TTFT p50 s of each pass", "E2E p50 s of each pass"]
    return [
        "## Repeated timed passes",
        "",
        "The whole workload timed several times in the same process after the warm-up (`--repeats`), each pass "
        "in order. * marks a pass that compiled: it does not count. Median, min, max and spread ((max - min) / "
        "median) over the passes that count.",
        "",
        tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True),
    ]


def _frames(count: dict | None) -> str:
    found = CompileCount.from_dict(count)
    if found is None:
        return "not observed"
    recompiles = f", {found.recompiles} recompiles" if found.recompiles else ""
    return f"{found.frames} frames, {found.graphs} graphs{recompiles}"


def compile_section(runs: list[RunSummary]) -> list[str]:
    """What torch.compile did at load, in the warm-up and in each timed pass, per backend/mode."""
    recorded = [r for r in runs if r.compile or r.passes]
    if not recorded:
        return []
    rows = []
    for run in recorded:
        engine = run.engine or {}
        compiled = (engine.get("torch_compile") or {}).get("compiled")
        if run.backend == "vllm":
            graphs = "on" if engine.get("cuda_graphs") else "off"
            compiled = f"{engine.get('compilation_mode') or '-'}, CUDA graphs {graphs}"
        passes = [p.get("compile") for p in run.passes or []]
        invalid = [str(p["index"]) for p in run.passes or [] if p.get("invalid")]
        rows.append(
            [
                run.label,
                {True: "yes", False: "no", None: "-"}.get(compiled, compiled),
                _frames((run.compile or {}).get("load")),
                _frames((run.compile or {}).get("warmup")),
                "; ".join(_frames(c) for c in passes) or "-",
                ", ".join(invalid) or "none",
            ]
        )
    headers = ["backend/mode", "compiled", "at load", "in the warm-up", "in each timed pass", "invalid passes"]
    return [
        "## Compilation",
        "",
        "torch.compile's own counters (torch._dynamo: frames compiled, graphs produced, recompiles), read in the "
        "process that compiles (vLLM: its worker) before and after each phase. A timed pass must compile nothing; "
        "one that did is invalid and left out of the medians.",
        "",
        tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True),
    ]
