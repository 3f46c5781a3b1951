"""Online serving's metrics (issue 16): small pure functions over one backend/mode's records of a
request-rate sweep. Times in seconds, rates in requests per second, from each request's arrival.

Per offered rate (the records of that rate's timed passes; with --repeats, the median over the passes
that count, as `lab.metrics.run_metrics` takes it), beside `lab.metrics.summarize_records`' figures:
- offered_rate_per_s: the rate asked for; schedule_rate_per_s = (N - 1) / (last arrival - first
  arrival), the rate of the seeded schedule itself (`lab.arrivals` makes it N / rate over N gaps).
- achieved_rate_per_s = (N - 1) / (last completion - first completion): the rate at which requests
  left (as `vllm bench`'s request throughput, over the completions). On a finite pass it includes the
  drain: the last requests' own service time (seconds for a long output) stretches it, so it reads below
  the schedule at high rates even where nothing queued. It is reported, not used for saturation.
- admitted_rate_per_s = (N - 1) / (last first-scheduled - first first-scheduled): the rate at which
  the backend began work on requests (`RequestRecord.scheduled_s`; None where a backend left it
  unknown). A backend that keeps up begins each request soon after it arrives, at the schedule's rate.
- latency_growth = mean TPOT (`lab.metrics.tpot_s`: (e2e - ttft) / (output tokens - 1), the time per
  output token while the request is served) of the last third of the requests (by arrival) / that of
  the first third: about 1 where the backend serves late arrivals as fast as early ones, large where a
  backend that begins every request at once (vLLM, hf/continuous) serves each more slowly as the load
  rises. It leaves out the wait before the first token: a static batch that holds one long request
  makes the few short requests that arrive meanwhile wait (head-of-line blocking) although every
  request is begun at the schedule's rate and nothing waits at the end; queueing from overload shows
  in the admitted rate and queue_growth instead. (Before 2026-11-27's eleventh session it compared
  normalized latency, queueing included, and so marked such a server saturated.)
- normalized_latency_s = mean over requests of e2e_s / output_tokens, seconds per output token: the
  PagedAttention paper's normalized latency (Figure 12); normalized_latency_s_min and _max: its lowest
  and highest over the passes that count (the median's range, equal to it with one pass).
- pass_points: with several passes that count, each pass's own normalized latency, SLO attainment and
  saturation, in pass order (empty with one): the sustained rate of each pass, beside the median's.
- goodput_per_s = requests meeting every SLO given / duration_s (as `vllm bench serve --goodput`);
  slo_attainment = their share of the requests.
- backlog_growth = requests in the system (arrived, not finished) at the last arrival minus those at
  the middle arrival; queue_growth = the same for requests waiting to begin (arrived, not yet first
  scheduled: `begin_s`).
- max_submit_lag_s: the largest delay of the lab's own dispatcher (`RequestRecord.submit_lag_s`).
- early_starts: requests the records show submitted or scheduled before their arrival (must be 0).
- saturated: admitted_rate_per_s < SATURATION_SHARE x schedule_rate_per_s (requests wait to begin),
  or latency_growth > LATENCY_GROWTH_LIMIT, or queue_growth > max(3, BACKLOG_SHARE x the arrivals
  between the middle and the last): the point is past what the backend sustains. The queue counted is
  the requests waiting to begin, not those in the system: a pass shorter than the longest service
  times ends before the count in service reaches its steady level (rate x latency, Little's law), so
  in-service growth is no sign of overload (backlog_growth reports it). Overload shows as requests
  waiting longer to begin, a falling admitted rate or a growing time per output token once served. A
  backend that begins every request at once but serves every one slowly from the start is not
  saturated by this rule: its normalized latency, against the bound below, says how slow.

Sustained rate (`sustained_rate`): the highest offered rate of the sweep at which the backend is not
saturated and its normalized latency is within the bound (or, under SLOs, at least
SLO_ATTAINMENT_GOAL of the requests meet them), and every lower rate too.
"""

from __future__ import annotations

import math

from lab.metrics import mean, median_of, passes_of, summarize_records, tpot_s
from lab.online_settings import rate_value
from lab.records import RequestRecord, RunSummary

SATURATION_SHARE = 0.9  # requests begun at below 90% of the offered rate: saturated
LATENCY_GROWTH_LIMIT = 2.0  # the last third's time per output token over twice the first third's: saturated
BACKLOG_SHARE = 0.25  # requests waiting to begin grew by over a quarter of the arrivals from mid-pass to the last
SLO_ATTAINMENT_GOAL = 0.9  # a rate sustained under SLOs: at least 90% of requests meet every one
CLOCK_TOLERANCE_S = 1e-3  # vLLM's scheduling time comes from another clock (monotonic), lined up within this


def normalized_latency_s(records: list[RequestRecord]) -> float | None:
    """Mean over requests of e2e_s / output_tokens (seconds per output token)."""
    return mean(r.e2e_s / r.output_tokens for r in records if r.output_tokens > 0)


def mean_tpot_s(records: list[RequestRecord]) -> float | None:
    """Mean TPOT (seconds per output token after the first) over the requests that have one."""
    return mean(t for t in map(tpot_s, records) if t is not None)


def meets_slos(record: RequestRecord, slos: dict[str, float]) -> bool:
    """Whether one request meets every SLO given ({'ttft': s, 'tpot': s, 'e2e': s})."""
    values = {"ttft": record.ttft_s, "tpot": tpot_s(record), "e2e": record.e2e_s}
    return all(values[key] is None or values[key] <= limit for key, limit in slos.items())


def rate_over(times: list[float]) -> float | None:
    """(N - 1) / (last - first): the rate of N events; None for fewer than two or no span."""
    if len(times) < 2 or max(times) <= min(times):
        return None
    return (len(times) - 1) / (max(times) - min(times))


def backlog_growth(records: list[RequestRecord]) -> int:
    """Requests in the system at the last arrival minus at the middle arrival (arrived, not finished)."""
    arrivals = sorted(r.arrival_s for r in records)
    if len(arrivals) < 2:
        return 0

    def backlog(t: float) -> int:
        return sum(1 for r in records if r.arrival_s <= t) - sum(1 for r in records if r.end_s <= t)

    return backlog(arrivals[-1]) - backlog(arrivals[len(arrivals) // 2])


def begin_s(record: RequestRecord) -> float:
    """When the backend first began work on the request: scheduled_s, else first_token_s where the
    backend left scheduling unknown, else end_s."""
    for t in (record.scheduled_s, record.first_token_s):
        if t is not None:
            return t
    return record.end_s


def queue_growth(records: list[RequestRecord]) -> int:
    """Requests waiting to begin (arrival_s <= t < `begin_s`) at the last arrival minus at the middle
    arrival: the queue of a backend that falls behind, unlike the requests in service (module docstring)."""
    arrivals = sorted(r.arrival_s for r in records)
    if len(arrivals) < 2:
        return 0

    def waiting(t: float) -> int:
        return sum(1 for r in records if r.arrival_s <= t < begin_s(r))

    return waiting(arrivals[-1]) - waiting(arrivals[len(arrivals) // 2])


def latency_growth(records: list[RequestRecord]) -> float | None:
    """Mean TPOT of the last third of the requests (by arrival) / that of the first third (module
    docstring: served more slowly, not queued longer); None for fewer than three requests, or where
    either third has no TPOT (one-token outputs) or the first third's is 0."""
    ordered = sorted(records, key=lambda r: r.arrival_s)
    third = len(ordered) // 3
    if third == 0:
        return None
    first, last = mean_tpot_s(ordered[:third]), mean_tpot_s(ordered[-third:])
    return last / first if first and last is not None else None


def admitted_rate(records: list[RequestRecord]) -> float | None:
    """The rate over the requests' first scheduling; None where any of them left it unknown."""
    scheduled = [r.scheduled_s for r in records]
    return None if None in scheduled else rate_over(scheduled)


def started_early(record: RequestRecord) -> bool:
    """Whether the record shows the request submitted, scheduled or answered before it arrived."""
    starts = [t for t in (record.submitted_s, record.scheduled_s, record.first_token_s) if t is not None]
    return any(t < record.arrival_s - CLOCK_TOLERANCE_S for t in starts)


def early_starts(records: list[RequestRecord]) -> int:
    """Requests that started before they arrived (the lab's check of its own dispatcher: must be 0)."""
    return sum(1 for r in records if started_early(r))


def pass_online_metrics(records: list[RequestRecord], slos: dict[str, float]) -> dict:
    """One timed pass at one rate: `summarize_records` plus the online figures (module docstring)."""
    ok = [r for r in records if r.ok]
    summary = summarize_records(records)
    good = [r for r in ok if meets_slos(r, slos)] if slos else []
    duration = summary["duration_s"]
    lags = [r.submit_lag_s for r in records if r.submit_lag_s is not None]
    summary.update(
        schedule_rate_per_s=rate_over([r.arrival_s for r in records]),
        achieved_rate_per_s=rate_over([r.end_s for r in ok]),
        admitted_rate_per_s=admitted_rate(ok),
        latency_growth=latency_growth(ok),
        normalized_latency_s=normalized_latency_s(ok),
        goodput_per_s=len(good) / duration if slos and duration else None,
        slo_attainment=len(good) / len(records) if slos and records else None,
        backlog_growth=backlog_growth(ok),
        queue_growth=queue_growth(ok),
        max_submit_lag_s=max(lags) if lags else None,
        early_starts=early_starts(records),
    )
    return summary


def saturation(metrics: dict) -> tuple[bool, str | None]:
    """(saturated, why) of one rate's metrics (module docstring)."""
    offered, admitted = metrics.get("schedule_rate_per_s"), metrics.get("admitted_rate_per_s")
    if offered and admitted is not None and admitted < SATURATION_SHARE * offered:
        return True, f"requests begun at {admitted:.3g} req/s < {SATURATION_SHARE:.0%} of the offered {offered:.3g}"
    growth_ratio = metrics.get("latency_growth")
    if growth_ratio is not None and growth_ratio > LATENCY_GROWTH_LIMIT:
        return True, f"the last third's time per output token is {growth_ratio:.3g}x the first third's"
    growth, n = metrics.get("queue_growth") or 0, metrics.get("requests") or 0  # absent (older summaries): 0
    if growth > max(3, BACKLOG_SHARE * (n - 1 - n // 2)):
        return True, f"requests waiting to begin grew by {growth} between the middle and the last arrival"
    return False, None


def latency_range(summaries: list[dict]) -> tuple[float | None, float | None]:
    """(min, max) of normalized_latency_s over the passes' summaries: the spread the median hides."""
    values = [s["normalized_latency_s"] for s in summaries if s.get("normalized_latency_s") is not None]
    return (min(values), max(values)) if values else (None, None)


def rate_metrics(records: list[RequestRecord], offered_rate: float, slos: dict[str, float]) -> dict:
    """One offered rate of one backend/mode: the median over its passes that count, and saturation."""
    passes = passes_of(records)
    summaries = [pass_online_metrics(p, slos) for p in passes]
    invalid = [i for i, p in enumerate(passes) if any(r.pass_invalid for r in p)]
    counted = [s for i, s in enumerate(summaries) if i not in invalid] or summaries
    median = median_of(counted)
    latency_min_s, latency_max_s = latency_range(counted)
    saturated, why = saturation(median) if math.isfinite(offered_rate) else (False, None)
    each_pass = [pass_point(summary, offered_rate) for summary in counted]
    median.update(
        offered_rate_per_s=offered_rate if math.isfinite(offered_rate) else None,
        request_rate="inf" if math.isinf(offered_rate) else offered_rate,
        passes=len(summaries),
        passes_counted=len(counted),
        normalized_latency_s_min=latency_min_s,
        normalized_latency_s_max=latency_max_s,
        saturated=saturated,
        saturation_reason=why,
        pass_points=each_pass if len(each_pass) > 1 else [],
    )
    return median


def pass_point(summary: dict, offered_rate: float) -> dict:
    """What `sustained_rate` reads of one timed pass at one rate: its own normalized latency, SLO
    attainment and saturation, so that each pass's sustained rate can be found as the median's is."""
    saturated = saturation(summary)[0] if math.isfinite(offered_rate) else False
    return {
        "normalized_latency_s": summary.get("normalized_latency_s"),
        "slo_attainment": summary.get("slo_attainment"),
        "saturated": saturated,
    }


def by_rate(records: list[RequestRecord]) -> dict[float, list[RequestRecord]]:
    """The records of each offered rate (None, offline: inf), ascending."""
    groups: dict[float, list[RequestRecord]] = {}
    for record in records:
        groups.setdefault(rate_value(record.request_rate), []).append(record)
    return dict(sorted(groups.items()))


def last_rate_records(records: list[RequestRecord]) -> list[RequestRecord]:
    """The records of the sweep's last rate (inf where it has one): what the offline sections report.
    Offline runs have one rate: all their records."""
    groups = by_rate(records)
    return list(groups.values())[-1] if groups else []


def last_offered_rates(runs: list[RunSummary]) -> dict[str, str | float]:
    """{backend/mode: the offered rate of its sweep's last point (what its offline figures describe)} of
    the runs that swept; {} for an offline run."""
    return {run.label: run.sweep[-1].get("request_rate") for run in runs if run.sweep}


def is_sweep(records: list[RequestRecord]) -> bool:
    """Whether the records hold an online sweep (any pass at a finite offered rate)."""
    return any(r.request_rate is not None for r in records)


def sweep_metrics(records: list[RequestRecord], slos: dict[str, float]) -> list[dict]:
    """`rate_metrics` of every offered rate in the records, ascending (inf last)."""
    return [rate_metrics(group, rate, slos) for rate, group in by_rate(records).items()]


def sustained_rate(points: list[dict], bound_s: float | None = None, slos: bool = False) -> tuple[float | None, bool]:
    """(the highest offered rate sustained, whether a higher rate of the sweep failed) over one backend's
    finite points, ascending. Sustained: not saturated and normalized latency <= `bound_s` (None: no
    bound); with `slos`, slo_attainment >= SLO_ATTAINMENT_GOAL instead of the bound. The search stops
    at the first point that fails, so a lucky higher point does not count."""
    best = None
    for point in points:
        rate = point.get("offered_rate_per_s")
        if rate is None:
            continue
        if slos:
            held = (point.get("slo_attainment") or 0) >= SLO_ATTAINMENT_GOAL
        else:
            latency = point.get("normalized_latency_s")
            held = bound_s is None or (latency is not None and latency <= bound_s)
        if point.get("saturated") or not held:
            return best, True
        best = rate
    return best, False


def default_latency_bound_s(sweeps: dict[str, list[dict]], factor: float = 4.0) -> float | None:
    """4 x the lowest normalized latency any backend/mode measured at its lowest finite rate."""
    lowest = []
    for points in sweeps.values():
        finite = [p for p in points if p.get("offered_rate_per_s") and p.get("normalized_latency_s")]
        if finite:
            lowest.append(finite[0]["normalized_latency_s"])
    return factor * min(lowest) if lowest else None


def describe_point(point: dict) -> str:
    """One rate's outcome in a line (the progress a run prints)."""
    latency = point.get("normalized_latency_s")
    text = (
        f"begun {_num(point.get('admitted_rate_per_s'))} req/s, completed {_num(point.get('achieved_rate_per_s'))} "
        f"req/s, normalized latency "
        f"{_num(latency)} s/token, TTFT p50 {_num(point.get('ttft_s_p50'))} s"
    )
    return text + (f"; saturated: {point['saturation_reason']}" if point.get("saturated") else "")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
