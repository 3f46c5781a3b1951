"""Derived metrics: small pure functions over records. Times in seconds, rates per second.

One clock for every backend: each latency counts from the request's arrival (`arrival_s`, 0 in the
offline scenario). Definitions (docs/results.md has the full list), per timed pass:
- duration_s: from the start of the pass (t=0) to the last token of the last request, on the
  runner's clock. Warm-up and model loading are outside it.
- requests_per_s = requests / duration_s
- output_tokens_per_s = sum(output_tokens) / duration_s
- total_tokens_per_s = sum(prompt_tokens + output_tokens) / duration_s
- ttft_s = first token - arrival; e2e_s = last token - arrival
- queue_s = first scheduled - arrival; service_s = last token - first scheduled (e2e = queue + service)
- tpot_s = (e2e - ttft) / (output_tokens - 1) per request, as `vllm bench` defines TPOT
- itl_s: the gaps between consecutive tokens of a request, pooled over every request (as `vllm bench`
  pools them), so a request with more tokens weighs more
Each is summarised as mean and p50/p90/p99 over requests (ITL: over gaps).

Repeated passes (--repeats N): `run_metrics` summarises each pass and takes, key by key, the median
over the passes that count (a pass that compiled does not; where none counts, over all of them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from lab.records import RequestRecord

PERCENTILES = (50, 90, 99)


def percentile(values: Iterable[float], pct: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no values."""
    data = sorted(values)
    if not data:
        return None
    rank = (len(data) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return data[low] + (data[high] - data[low]) * (rank - low)


def mean(values: Iterable[float]) -> float | None:
    data = list(values)
    return sum(data) / len(data) if data else None


def tpot_s(record: RequestRecord) -> float | None:
    """Time per output token after the first: (e2e - ttft) / (output_tokens - 1)."""
    if record.ttft_s is None or record.output_tokens < 2:
        return None
    return (record.e2e_s - record.ttft_s) / (record.output_tokens - 1)


def distribution(values: Iterable[float | None], prefix: str) -> dict:
    """{prefix_mean, prefix_p50, prefix_p90, prefix_p99} over the non-null values."""
    data = [v for v in values if v is not None]
    out = {f"{prefix}_mean": mean(data)}
    for pct in PERCENTILES:
        out[f"{prefix}_p{pct}"] = percentile(data, pct)
    return out


def summarize_records(records: list[RequestRecord]) -> dict:
    """Throughput and latency aggregates of one timed pass of one backend/mode."""
    ok = [r for r in records if r.ok]
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    duration = max((r.end_s for r in ok), default=0.0)
    summary = {
        "requests": len(records),
        "requests_ok": len(ok),
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "duration_s": duration,
        "requests_per_s": len(ok) / duration if duration else None,
        "output_tokens_per_s": output_tokens / duration if duration else None,
        "total_tokens_per_s": (prompt_tokens + output_tokens) / duration if duration else None,
    }
    summary.update(distribution((r.e2e_s for r in ok), "e2e_s"))
    summary.update(distribution((r.ttft_s for r in ok), "ttft_s"))
    summary.update(distribution((r.queue_s for r in ok), "queue_s"))
    summary.update(distribution((r.service_s for r in ok), "service_s"))
    summary.update(distribution((tpot_s(r) for r in ok), "tpot_s"))
    summary.update(distribution((gap for r in ok for gap in r.itl_s), "itl_s"))
    return summary


def passes_of(records: list[RequestRecord]) -> list[list[RequestRecord]]:
    """The records of each timed pass, in pass order (records without a pass index: one pass)."""
    by_pass: dict[int, list[RequestRecord]] = {}
    for record in records:
        by_pass.setdefault(record.pass_index or 0, []).append(record)
    return [by_pass[index] for index in sorted(by_pass)]


def run_metrics(records: list[RequestRecord]) -> tuple[dict, list[dict]]:
    """(the median over the passes that count, each pass's summary) of one backend/mode's records.

    The median dict adds `passes` (passes recorded), `passes_counted` (those the medians are over)
    and `invalid_passes` (indices of the passes that compiled).
    """
    passes = passes_of(records)
    summaries = [summarize_records(p) for p in passes]
    invalid = [i for i, p in enumerate(passes) if any(r.pass_invalid for r in p)]
    counted = [s for i, s in enumerate(summaries) if i not in invalid] or summaries
    median = median_of(counted)
    median.update(passes=len(summaries), passes_counted=len(counted), invalid_passes=invalid)
    return median, summaries


def with_pass_seconds(metrics: dict, passes_s: list[float]) -> dict:
    """An older run's metrics (records of its last pass only) with its throughput the median over every
    pass's seconds (`passes_s`); its latencies stay the last pass's. Output lengths are fixed, so each
    pass made the same tokens."""
    seconds = [s for s in passes_s if s > 0]
    if len(seconds) < 2 or metrics.get("passes", 1) > 1:
        return metrics
    duration = percentile(seconds, 50)
    tokens = metrics["prompt_tokens"] + metrics["output_tokens"]
    return dict(
        metrics,
        duration_s=duration,
        requests_per_s=metrics["requests_ok"] / duration,
        output_tokens_per_s=metrics["output_tokens"] / duration,
        total_tokens_per_s=tokens / duration,
        passes=len(seconds),
        passes_counted=len(seconds),
    )


def median_of(summaries: list[dict]) -> dict:
    """Key by key, the median of the summaries' values (None where no summary has a value)."""
    keys = dict.fromkeys(k for s in summaries for k in s)
    return {k: _median([s[k] for s in summaries if s.get(k) is not None]) for k in keys}


def _median(values: list) -> float | int | None:
    """The median; an int where every value is an int and the median is whole (counts stay counts)."""
    found = percentile(values, 50)
    if found is not None and all(isinstance(v, int) for v in values) and found == int(found):
        return int(found)
    return found


def spread_pct(values: Iterable[float | None]) -> float | None:
    """(max - min) / median of the values, in percent; None for fewer than two values."""
    data = [v for v in values if v is not None]
    median = percentile(data, 50)
    if len(data) < 2 or not median:
        return None
    return 100 * (max(data) - min(data)) / median


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None where either is missing or b is 0."""
    if a is None or b in (None, 0):
        return None
    return a / b


def counter_delta(start: float | None, end: float | None, scale: float = 1.0) -> float | None:
    """(end - start) / scale of a counter read at a pass's two ends; None where either reading is
    missing or the counter went back (it was reset: a driver reload, a process that ended)."""
    if start is None or end is None or end < start:
        return None
    return (end - start) / scale
