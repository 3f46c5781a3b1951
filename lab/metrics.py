"""Derived metrics: small pure functions over records. Times in seconds, rates per second.

Definitions (docs/results.md has the full list):
- duration_s: from the start of the timed phase (t=0, all requests available) to the last token of
  the last request, on the runner's clock. Warm-up and model loading are outside it.
- requests_per_s = requests / duration_s
- output_tokens_per_s = sum(output_tokens) / duration_s
- total_tokens_per_s = sum(prompt_tokens + output_tokens) / duration_s
- ttft_s: first token - start of work on the request; tpot_s: (e2e - ttft) / (output_tokens - 1),
  the mean time per output token after the first, as `vllm bench` defines TPOT.
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
    """Throughput and latency aggregates of one backend/mode's timed phase."""
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
    summary.update(distribution((tpot_s(r) for r in ok), "tpot_s"))
    return summary


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None where either is missing or b is 0."""
    if a is None or b in (None, 0):
        return None
    return a / b
