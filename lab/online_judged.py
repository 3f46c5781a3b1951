"""Whether an online sweep's rate could show saturation at all: small pure functions over one
backend/mode's records, KV samples and engine facts.

A backend begins a request as soon as it arrives while it has room for it: fewer requests in service
than its concurrency limit M, and free blocks in its KV pool. M is the limit that applied to the run
(`concurrency_limit`): vLLM's scheduler `max_num_seqs` (vLLM picks it at load when --max-num-seqs is not
given: 1024 on an H100 or H200 for the `LLM` class, 256 on the CPU), hf/continuous' transformers
`max_requests_per_batch`, a static batch's rows (--batch-size; hf/sequential: 1), --max-concurrency
where it is lower (the lab's dispatcher holds the rest back). A pass of N <= M requests whose KV pool
never filled therefore never queues, whatever the offered rate: `lab.online_metrics.saturation` has
nothing to see, and its 'no' says the trace was too short, not that the backend keeps up.

Such a point is *not judged* (`judged: false`, `not_judged_reason`): the saturation rule said no, N <= M,
the KV pool's peak use (`KvSample.kv_usage`) stayed below 100% where the engine reports it, and no
request waited to begin for room: the engine's own count of waiting requests after each step
(`KvSample.waiting`, vLLM and hf/continuous) stayed 0 where it reports one, and, for static batches
(records with a `batch`), no request arrived while another batch was in service (it waits for that batch
to end although N <= M). Every other finite point is judged (`judged: true`).

To show saturation a trace needs more requests than the backend can hold at once: at least
SHORT_TRACE_FACTOR x M (`requests_to_judge`), so that the rates above the knee build a queue.
"""

from __future__ import annotations

import math

from lab.config import EngineSettings, run_label
from lab.online_metrics import begin_s, sweep_metrics
from lab.records import KvSample, RequestRecord

SHORT_TRACE_FACTOR = 4  # a trace shows saturation with at least 4 x the concurrency limit in requests
KV_FULL = 1.0  # the KV pool's share in use at which new requests wait for blocks
BATCH_SIZE_MODES = ("batched", "static-cache", "static-cache-eager")  # hf modes of static batches: --batch-size rows


def concurrency_limit(backend: str, mode: str, engine: dict | None, max_concurrency: int | None) -> dict | None:
    """{'requests': M, 'source': where M comes from} of the limit on requests in service at once (module
    docstring), from the engine's facts (result.json's `engine`, present in older runs too); None where
    the engine reports none."""
    engine = engine or {}
    limit, source = None, None
    if backend == "vllm":
        limit, source = engine.get("max_num_seqs"), "vLLM scheduler_config.max_num_seqs"
    elif mode == "continuous":
        settings = engine.get("continuous_batching_config") or {}
        limit, source = settings.get("max_requests_per_batch"), "transformers max_requests_per_batch"
    elif mode == "sequential":
        limit, source = 1, "hf/sequential: one request at a time"
    elif mode in BATCH_SIZE_MODES:
        limit, source = engine.get("batch_size"), "--batch-size (rows of a static batch)"
    if max_concurrency is not None and (limit is None or max_concurrency < limit):
        limit, source = max_concurrency, "--max-concurrency"
    return None if limit is None else {"requests": int(limit), "source": source}


def limit_before_run(backend: str, mode: str, engine: EngineSettings) -> int | None:
    """The concurrency limit known from the settings alone, before the engine loads (None: vLLM without
    --max-num-seqs, which vLLM picks at load; hf/continuous, which transformers sizes at load)."""
    facts = {"max_num_seqs": engine.max_num_seqs, "batch_size": engine.batch_size}
    found = concurrency_limit(backend, mode, facts, engine.online.max_concurrency)
    return None if found is None else found["requests"]


def short_trace_warning(engine: EngineSettings, runs: tuple[tuple[str, str], ...]) -> str | None:
    """The warning line `lab experiment` prints where a finite-rate sweep's --num-requests is at most a
    backend/mode's concurrency limit known before the run; None where none is (or no rate is finite)."""
    n = engine.num_requests
    if n is None or not any(math.isfinite(r) for r in engine.online.request_rates):
        return None
    limits = {run_label(b, m): limit_before_run(b, m, engine) for b, m in runs}
    short = {label: m for label, m in limits.items() if m is not None and n <= m}
    if not short:
        return None
    named = ", ".join(f"{label} ({m})" for label, m in short.items())
    return (
        f"lab experiment: warning: --num-requests {n} is no more than the requests {named} can hold at once: the "
        "whole trace fits one batch, so no queue from overload can form at any rate and the sweep cannot show "
        f"saturation there (the report marks such points 'not judged'); give --num-requests "
        f"{SHORT_TRACE_FACTOR * max(short.values())} or more to see it"
    )


def peaks_by_rate(kv_samples: list[KvSample]) -> dict[float, dict]:
    """{offered rate: {'kv_peak_occupancy', 'peak_waiting'}} over each finite rate's KV samples (the most
    of `kv_usage` and of `waiting` after any step; None where no sample has it). Samples without a rate
    (offline, or older runs that kept their last pass's samples untagged) are left out."""
    grouped: dict[float, list[KvSample]] = {}
    for sample in kv_samples:
        if sample.request_rate is not None:
            grouped.setdefault(sample.request_rate, []).append(sample)
    return {rate: {"kv_peak_occupancy": _peak(s.kv_usage for s in group),
                   "peak_waiting": _peak(s.waiting for s in group)} for rate, group in grouped.items()}  # fmt: skip


def _peak(values) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def waited_for_a_batch(records: list[RequestRecord]) -> bool | None:
    """Whether any request arrived while a static batch other than its own was in service (from its first
    begin to its last end); None where the records carry no batch (vLLM, hf/continuous)."""
    if not records or any(r.batch is None for r in records):
        return None
    spans: dict[tuple, tuple[float, float]] = {}
    for r in records:
        key = (r.pass_index, r.batch)
        start, end = spans.get(key, (math.inf, -math.inf))
        spans[key] = (min(start, begin_s(r)), max(end, r.end_s))
    return any(
        start <= r.arrival_s < end
        for r in records
        for (pass_index, batch), (start, end) in spans.items()
        if pass_index == r.pass_index and batch != r.batch
    )


def judgement(point: dict, limit: dict | None, peaks: dict | None, waited: bool | None) -> tuple[bool, str | None]:
    """(judged, why not) of one finite point (module docstring). `peaks`: its `peaks_by_rate` entry;
    `waited`: `waited_for_a_batch` of its records."""
    requests = point.get("requests")
    if point.get("saturated") or limit is None or not requests or requests > limit["requests"]:
        return True, None
    peaks = peaks or {}
    occupancy, waiting = peaks.get("kv_peak_occupancy"), peaks.get("peak_waiting")
    if (occupancy is not None and occupancy >= KV_FULL) or (waiting or 0) > 0 or waited:
        return True, None
    return False, f"all {requests} requests fit one batch of {limit['requests']}: no queue can form"


def judge_points(points: list[dict], records: list[RequestRecord], kv_samples: list[KvSample], limit: dict | None):
    """`points` (`sweep_metrics`' list, changed in place and returned), each finite one with `judged`,
    `not_judged_reason`, `concurrency_limit` (M or None) and `requests_to_judge` (SHORT_TRACE_FACTOR x M
    where not judged, else None)."""
    peaks = peaks_by_rate(kv_samples)
    for point in points:
        rate = point.get("offered_rate_per_s")
        if rate is None:
            continue
        own = [r for r in records if r.request_rate == rate and r.ok]
        judged, why = judgement(point, limit, peaks.get(rate), waited_for_a_batch(own))
        point.update(
            judged=judged,
            not_judged_reason=why,
            concurrency_limit=limit["requests"] if limit else None,
            requests_to_judge=None if judged else SHORT_TRACE_FACTOR * limit["requests"],
        )
    return points


def judged_sweep(
    records: list[RequestRecord], kv_samples: list[KvSample], slos: dict[str, float], limit: dict | None
) -> list[dict]:
    """`lab.online_metrics.sweep_metrics` of the records, each finite point judged (`judge_points`)."""
    return judge_points(sweep_metrics(records, slos), records, kv_samples, limit)


def saturated_text(point: dict) -> str:
    """The report's 'saturated' cell: 'yes', 'no', or 'not judged (N <= M)'; older points without
    `judged` read as judged."""
    if point.get("saturated"):
        return "yes"
    if point.get("judged") is False:
        return f"not judged ({point.get('requests')} <= {point.get('concurrency_limit')})"
    return "no"
