"""serve-agree: the lab's vLLM at one offered rate against `vllm bench serve` against `vllm serve`.

Usage: python scripts/gpu/serve_agree.py RESULTS_DIR RATE
Reads the lab's run folder (label serve-agree-lab), vllm-bench-serve.json and, where the step scraped
them, the server's /metrics before and after the bench run (server-metrics-before.txt,
server-metrics-after.txt) under RESULTS_DIR. Prints request throughput, output throughput and mean TTFT
of the lab and the bench client and exits 1 where throughput differs by more than 5% or mean TTFT by
more than 10% (issue 16's tolerances: the verdict). Then, deciding nothing, mean TTFT over each clock's
own interval, so that like is compared with like (vLLM 0.26.0 and 0.32.0 alike):

- lab, from arrival: the request's scheduled Poisson arrival on the runner's clock -> the lab's process
  sees its first token in `LLMEngine.step()`'s outputs (`lab.metrics`: ttft_s; the same as the point's
  ttft_s_mean). Includes the lab's own dispatcher lag (`submit_lag_s`, at most one engine step).
- lab, from add_request: `submitted_s` (`engine.add_request`, the prompt already rendered to token
  ids) -> the same first token: first_token_s - submitted_s, from the run's records.
- server: the histogram `vllm:time_to_first_token_seconds` (sum and count differences over the bench
  run, all label sets added). vLLM observes `IterationStats.iteration_timestamp - arrival_time`
  (v1/metrics/stats.py, `update_from_output`): `arrival_time` is `time.time()` in the API server when
  it starts rendering the completion's prompt (`Renderer.render_cmpl_async`, renderers/base.py: after
  the HTTP request is received and parsed, before the text is tokenized), and `iteration_timestamp`
  is `time.time()` when the API server's output handler takes the engine core's outputs carrying the
  first token (`AsyncLLM.output_handler`, before they are detokenized and streamed).
- server's engine core: `vllm:request_queue_time_seconds` + `vllm:request_prefill_time_seconds` (the
  same differences): the engine core's `queued_ts` (request received) -> `scheduled_ts` -> the
  timestamp of its outputs carrying the first token, `time.monotonic()` in the engine-core process.
- bench client: `time.perf_counter()` before the HTTP POST -> the first streamed chunk read
  (benchmarks/lib/endpoint_request_func.py); its own lateness against the schedule is not counted.

So "lab, from add_request" and "server" span the same interval, engine frontend in to first token out
of the engine core (the server's also tokenizes the text prompt; the lab sends token ids and makes no
text); server - its engine core is the API server's own share inside that interval; and
bench client - server is the part of the client's TTFT outside it: HTTP both ways, request
parsing, detokenizing, streaming and the client's reading.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from statistics import mean

from lab import run_folder as rf

THROUGHPUT_TOLERANCE = 0.05
TTFT_TOLERANCE = 0.10
TTFT_HISTOGRAM = "vllm:time_to_first_token_seconds"
ENGINE_CORE_HISTOGRAMS = ("vllm:request_queue_time_seconds", "vllm:request_prefill_time_seconds")
METRICS_BEFORE, METRICS_AFTER = "server-metrics-before.txt", "server-metrics-after.txt"


def lab_point(results: Path) -> dict:
    # the newest lab run (folders start with their UTC time): the one the bench run beside it followed
    folder = next(p for p in sorted(results.iterdir(), reverse=True) if p.is_dir() and "-serve-agree-lab" in p.name)
    run = json.loads((folder / "summary.json").read_text())["runs"][0]
    point = next(p for p in run["sweep"] if p.get("offered_rate_per_s"))
    rows = rf.read_jsonl(folder / "records.jsonl")  # or its gzipped twin in a packed folder
    records = [r for r in rows if r["request_rate"] == point["request_rate"] and r["status"] == "ok"]
    known = records and all(r.get("submitted_s") is not None for r in records)
    return {
        "requests_per_s": point["requests_per_s"],
        "output_tokens_per_s": point["output_tokens_per_s"],
        "mean_ttft_s": point["ttft_s_mean"],
        "mean_ttft_from_add_s": mean([r["first_token_s"] - r["submitted_s"] for r in records]) if known else None,
        "mean_submit_lag_s": mean([r["submit_lag_s"] for r in records]) if known else None,
        "folder": str(folder),
    }


def bench_point(results: Path) -> dict:
    data = json.loads((results / "vllm-bench-serve.json").read_text())
    return {
        "requests_per_s": data["request_throughput"],
        "output_tokens_per_s": data["output_throughput"],
        "mean_ttft_s": data["mean_ttft_ms"] / 1000,
        "requests": data["completed"],
    }


def histogram_totals(metrics_text: str, name: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram in a /metrics text, added over its label sets."""
    pattern = re.compile(rf"^{re.escape(name)}_(sum|count)(?:\{{[^}}]*\}})?\s+(\S+)")
    totals = {"sum": 0.0, "count": 0.0}
    found = False
    for line in metrics_text.splitlines():
        match = pattern.match(line)
        if match:
            totals[match.group(1)] += float(match.group(2))
            found = True
    if not found:
        raise ValueError(f"no {name}_sum or _count in the /metrics text: was the server started with its stats on?")
    return totals["sum"], totals["count"]


def histogram_mean(before_text: str, after_text: str, name: str) -> tuple[float, int]:
    """(mean, count) of what a histogram observed between two /metrics scrapes."""
    sum_before, count_before = histogram_totals(before_text, name)
    sum_after, count_after = histogram_totals(after_text, name)
    count = round(count_after - count_before)
    if count <= 0:
        raise ValueError(f"{name} observed nothing between the two scrapes")
    return (sum_after - sum_before) / count, count


def server_point(before_text: str, after_text: str) -> dict:
    """The server's own mean TTFT over what it served between two /metrics scrapes, and its engine core's
    share: queued -> the outputs carrying the first token (queue time + prefill time, both engine-core
    monotonic stamps, observed when a request finishes; None where they are missing or counted other
    requests than the TTFT)."""
    ttft_s, requests = histogram_mean(before_text, after_text, TTFT_HISTOGRAM)
    try:
        parts = [histogram_mean(before_text, after_text, name) for name in ENGINE_CORE_HISTOGRAMS]
    except ValueError:
        parts = []
    engine_core_s = sum(m for m, _ in parts) if parts and all(c == requests for _, c in parts) else None
    return {"mean_ttft_s": ttft_s, "requests": requests, "mean_engine_core_s": engine_core_s}


def scraped_server_point(results: Path) -> dict | None:
    """server_point of the step's two scrapes; None for a run made before the step scraped them."""
    before, after = results / METRICS_BEFORE, results / METRICS_AFTER
    if not (before.exists() and after.exists()):
        return None
    return server_point(before.read_text(), after.read_text())


def gap(value: float, reference: float) -> float:
    return abs(value - reference) / reference


def verdict_lines(lab: dict, bench: dict, rate: str) -> tuple[list[str], bool]:
    """Issue 16's verdict: the lab against the bench client within 5% (throughput) and 10% (mean TTFT).
    Returns the printed lines and whether any quantity is outside its tolerance."""
    lines, failed = [f"offered {rate} req/s; lab: {lab['folder']}"], False
    for key, tolerance in (("requests_per_s", THROUGHPUT_TOLERANCE), ("output_tokens_per_s", THROUGHPUT_TOLERANCE),
                           ("mean_ttft_s", TTFT_TOLERANCE)):  # fmt: skip
        off = gap(lab[key], bench[key])
        failed |= off > tolerance
        lines.append(
            f"{key}: lab {lab[key]:.4g}, vllm bench serve {bench[key]:.4g}, gap {off:.1%} "
            f"({'ok' if off <= tolerance else 'OUTSIDE'}, limit {tolerance:.0%})"
        )
    return lines, failed


def interval_lines(lab: dict, bench: dict, server: dict | None) -> list[str]:
    """Mean TTFT over each clock's own interval, the same-interval comparison and the client - server
    difference (the module docstring says what each spans). Informative: they decide nothing."""
    ms = 1000
    lines = [
        "mean TTFT by interval (ms):",
        f"  lab, scheduled arrival -> first token out of its engine step: {lab['mean_ttft_s'] * ms:.2f}",
    ]
    from_add = lab["mean_ttft_from_add_s"]
    if from_add is None:
        lines.append("  lab, add_request -> the same: unknown (no submitted_s in its records)")
    else:
        lines.append(
            f"  lab, add_request -> the same: {from_add * ms:.2f} "
            f"(its dispatcher's mean lag before add_request {lab['mean_submit_lag_s'] * ms:.2f})"
        )
    if server is None:
        lines.append(f"  server: not scraped (no {METRICS_BEFORE}, {METRICS_AFTER}: an older run, or no answer)")
    else:
        lines.append(
            f"  server, {TTFT_HISTOGRAM} over {server['requests']} requests, API server's prompt render -> its "
            f"output handler taking the first token: {server['mean_ttft_s'] * ms:.2f}"
        )
    if server is not None and server["mean_engine_core_s"] is not None:
        lines.append(
            f"  server's engine core, request queued -> outputs with the first token "
            f"(request_queue_time + request_prefill_time): {server['mean_engine_core_s'] * ms:.2f}"
        )
    lines.append(f"  bench client, HTTP request sent -> first streamed chunk read: {bench['mean_ttft_s'] * ms:.2f}")
    if server is None:
        return lines
    if server["requests"] != bench["requests"]:
        lines.append(f"  note: the server counted {server['requests']} requests, the bench {bench['requests']}")
    if from_add is not None:
        off = gap(from_add, server["mean_ttft_s"])
        lines.append(
            f"lab (add_request) vs server, the same interval (engine frontend in -> first token out of the engine "
            f"core): gap {off:.1%} ({'ok' if off <= TTFT_TOLERANCE else 'OUTSIDE'} at {TTFT_TOLERANCE:.0%}; "
            "informative, not issue 16's verdict)"
        )
    if server["mean_engine_core_s"] is not None:
        frontend = server["mean_ttft_s"] - server["mean_engine_core_s"]
        lines.append(
            f"server - its engine core: {frontend * ms:.2f} ms: the API server's share of its own TTFT (rendering and "
            "tokenizing, the way to the engine core and back, its event loop)"
        )
    outside = bench["mean_ttft_s"] - server["mean_ttft_s"]
    lines.append(
        f"bench client - server: {outside * ms:.2f} ms ({outside / bench['mean_ttft_s']:.0%} of the client's TTFT): "
        "HTTP both ways, request parsing, detokenizing, streaming and the client's reading"
    )
    return lines


def main() -> int:
    results, rate = Path(sys.argv[1]), sys.argv[2]
    lab, bench = lab_point(results), bench_point(results)
    lines, failed = verdict_lines(lab, bench, rate)
    print("\n".join(lines + interval_lines(lab, bench, scraped_server_point(results))))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
