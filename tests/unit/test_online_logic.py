"""Online serving's pure logic (issue 16): the seeded arrival schedule, the settings, the static-batch
rule of the traditional server, and the metrics (normalized latency, goodput, saturation, sustained
rate) on tiny cases computed by hand."""

from __future__ import annotations

import math

import pytest

from lab.arrivals import arrival_times
from lab.backends.batching import next_batch
from lab.errors import LabInputError
from lab.online_metrics import (
    backlog_growth,
    begin_s,
    early_starts,
    pass_online_metrics,
    queue_growth,
    saturation,
    sustained_rate,
    sweep_metrics,
)
from lab.online_settings import OnlineSettings, parse_rates
from lab.records import RequestRecord, RunSummary
from lab.report.sweep_compare import sweep_comparison
from lab.workloads import Request


def test_arrivals_are_seeded_and_end_at_n_over_rate():
    times = arrival_times(50, 4.0, 1.0, seed=3)
    assert times == arrival_times(50, 4.0, 1.0, seed=3)  # the same schedule for every backend
    assert times != arrival_times(50, 4.0, 1.0, seed=4)
    assert times == sorted(times) and times[0] > 0
    assert times[-1] == pytest.approx(50 / 4.0)  # rescaled as vllm bench's get_request does


def test_infinite_rate_is_every_request_at_zero_and_infinite_burstiness_is_even_gaps():
    assert arrival_times(3, math.inf) == [0.0, 0.0, 0.0]
    assert arrival_times(4, 2.0, math.inf) == pytest.approx([0.5, 1.0, 1.5, 2.0])


def test_poisson_gaps_have_the_spread_of_an_exponential_and_bursty_ones_more():
    def cv(burstiness):  # coefficient of variation of the gaps: 1 for exponential, 1/sqrt(shape) for gamma
        times = arrival_times(4000, 10.0, burstiness, seed=0)
        gaps = [b - a for a, b in zip([0.0] + times, times)]
        m = sum(gaps) / len(gaps)
        return math.sqrt(sum((g - m) ** 2 for g in gaps) / len(gaps)) / m

    assert cv(1.0) == pytest.approx(1.0, abs=0.08)
    assert cv(0.25) == pytest.approx(2.0, abs=0.25)


def test_rates_parse_ascending_with_inf_last_and_bad_ones_are_refused():
    assert parse_rates("8,1,inf,2") == (1.0, 2.0, 8.0, math.inf)
    assert parse_rates(None) == (math.inf,)
    for bad in ("0", "-2", "1,nan", "x"):
        with pytest.raises(LabInputError):
            parse_rates(bad)


def test_online_settings_round_trip_through_a_manifest_without_infinity():
    settings = OnlineSettings(request_rates=(1.0, math.inf), slo_ttft_s=0.5)
    data = settings.to_dict()
    assert data["request_rates"] == [1.0, "inf"]
    assert OnlineSettings.coerce(data) == settings and settings.is_sweep and not OnlineSettings().is_sweep
    assert settings.slos == {"ttft": 0.5}


def req(i, arrival):
    return Request(i, (1, 2), 4, arrival_s=arrival)


def test_static_batch_starts_when_full_or_after_the_wait_never_while_busy():
    waiting = [req(0, 1.0), req(1, 1.2), req(2, 1.5), req(3, 3.0)]
    start, batch = next_batch(waiting, size=3, wait_s=0.1, free_s=0.0)
    assert start == pytest.approx(1.1) and [r.request_id for r in batch] == [0]  # the wait ran out first
    start, batch = next_batch(waiting, size=3, wait_s=1.0, free_s=0.0)
    assert start == 1.5 and [r.request_id for r in batch] == [0, 1, 2]  # full at the third arrival
    start, batch = next_batch(waiting, size=3, wait_s=0.0, free_s=2.0)
    assert start == 2.0 and [r.request_id for r in batch] == [0, 1, 2]  # queued while the engine was busy


def rec(i, arrival, first, end, out=3, **kw):
    return RequestRecord(i, 2, out, first, end, arrival_s=arrival, scheduled_s=arrival, **kw)


def test_normalized_latency_and_goodput_by_hand():
    records = [rec(0, 0.0, 0.5, 1.0, out=2), rec(1, 1.0, 1.2, 2.0, out=4), rec(2, 2.0, 3.0, 6.0, out=4)]
    m = pass_online_metrics(records, {"ttft": 0.6, "e2e": 2.0})
    # e2e / output: 1.0/2, 1.0/4, 4.0/4 -> mean (0.5 + 0.25 + 1.0) / 3
    assert m["normalized_latency_s"] == pytest.approx(1.75 / 3)
    # request 2 misses both SLOs (TTFT 1.0 s, E2E 4.0 s): 2 good requests over the 6.0 s pass
    assert m["goodput_per_s"] == pytest.approx(2 / 6.0) and m["slo_attainment"] == pytest.approx(2 / 3)
    assert m["schedule_rate_per_s"] == pytest.approx(2 / 2.0)  # (N - 1) / (last - first arrival)
    assert m["achieved_rate_per_s"] == pytest.approx(2 / 5.0)  # (N - 1) / (last - first completion)
    tpot_only = pass_online_metrics(records, {"tpot": 0.3})  # TPOTs: 0.5, 0.8/3, 3/3
    assert tpot_only["goodput_per_s"] == pytest.approx(1 / 6.0)


def test_saturation_from_the_admitted_rate_from_growing_latency_and_from_a_growing_queue():
    assert saturation({"schedule_rate_per_s": 10.0, "admitted_rate_per_s": 8.0})[0]
    assert not saturation({"schedule_rate_per_s": 10.0, "admitted_rate_per_s": 9.5, "queue_growth": 1})[0]
    assert saturation({"schedule_rate_per_s": 10.0, "admitted_rate_per_s": 9.5, "latency_growth": 2.5})[0]
    assert saturation({"schedule_rate_per_s": 10.0, "admitted_rate_per_s": 9.5, "queue_growth": 30,
                       "requests": 100})[0]  # fmt: skip
    # an older summary without queue_growth: its in-service growth is no longer read as a queue
    assert not saturation({"schedule_rate_per_s": 10.0, "admitted_rate_per_s": 9.5, "backlog_growth": 30,
                           "requests": 100})[0]  # fmt: skip
    # one request a second, each begun on arrival and served 3 s more slowly than the one before: the
    # requests in service grow all along, and so does the time per output token
    growing = [rec(i, float(i), i + 0.5, i + 1.0 + 3 * i) for i in range(20)]
    assert backlog_growth(growing) > 3
    assert pass_online_metrics(growing, {})["latency_growth"] > 2
    # each waiting 3 s more than the one before to begin, then served at one pace: no growth in TPOT
    waiting = [rec(i, float(i), i + 0.5 + 3 * i, i + 1.0 + 3 * i) for i in range(20)]
    assert pass_online_metrics(waiting, {})["latency_growth"] == pytest.approx(1.0)


def test_a_long_last_request_lowers_the_completion_rate_but_is_not_saturation():
    # four requests a second, each begun at its arrival and served in 1 s, but the last one's output is
    # 20x longer (20 s): the completions' rate reads far below the schedule (the drain), nothing queued
    steady = [rec(i, i / 4, i / 4 + 0.1, i / 4 + 1.0, out=100) for i in range(39)]
    steady.append(rec(39, 39 / 4, 39 / 4 + 0.1, 39 / 4 + 20.0, out=2000))
    m = pass_online_metrics(steady, {})
    assert m["achieved_rate_per_s"] < 0.9 * m["schedule_rate_per_s"]
    assert m["admitted_rate_per_s"] == pytest.approx(m["schedule_rate_per_s"])
    assert m["latency_growth"] == pytest.approx(1.0, abs=0.01)  # the long one served at the same pace a token
    assert saturation(m) == (False, None)
    # the same requests begun ever later (each waits 0.5 s more than the one before): saturated
    queued = [
        RequestRecord(i, 2, 100, 0.75 * i + 0.1, 0.75 * i + 1.0, arrival_s=i / 4, scheduled_s=0.75 * i)
        for i in range(40)
    ]
    assert saturation(pass_online_metrics(queued, {}))[0]


SECONDS_PER_TOKEN = 0.08  # every request below is served at this pace once begun


def served(i, arrival, begin, out, scheduled=True):
    """Request i, begun at `begin` and served at SECONDS_PER_TOKEN (scheduled_s None where not `scheduled`)."""
    end = begin + out * SECONDS_PER_TOKEN
    return RequestRecord(
        i, 2, out, begin + SECONDS_PER_TOKEN, end, arrival_s=arrival, scheduled_s=begin if scheduled else None
    )


def test_requests_ramping_up_in_service_are_not_a_growing_queue():
    # one request a second, each begun the moment it arrives; every odd one has a long output (1,500
    # tokens, 120 s: longer than the 31 s pass), so at the last arrival the count in service is still
    # ramping up to its steady level: 9 at the middle arrival, 16 at the last. Nothing ever waits.
    records = [served(i, float(i), float(i), 1500 if i % 2 else 6) for i in range(32)]
    m = pass_online_metrics(records, {})
    assert m["backlog_growth"] == 7  # reported; the old rule read it as a queue (> max(3, 25% of 15))
    assert m["queue_growth"] == 0
    assert m["admitted_rate_per_s"] == pytest.approx(m["schedule_rate_per_s"])
    assert m["latency_growth"] == pytest.approx(1.0)
    assert saturation(m) == (False, None)


def queued_behind_a_batch(scheduled=True):
    """One request a second: the first 17 begun at arrival, then the engine is held by a batch and the
    other 15 wait, begun together at 33 s: each waits to begin and the waiting queue grows 0 -> 15,
    while the admitted rate (31 / 33 s, 94% of the schedule's) and the latency growth (1: every request
    served at one pace) pass."""
    return [served(i, float(i), float(i) if i <= 16 else 33.0, 100, scheduled) for i in range(32)]


def test_requests_waiting_longer_to_begin_are_a_growing_queue():
    m = pass_online_metrics(queued_behind_a_batch(), {})
    assert m["queue_growth"] == 15
    assert m["admitted_rate_per_s"] >= 0.9 * m["schedule_rate_per_s"] and m["latency_growth"] < 2
    assert saturation(m) == (True, "requests waiting to begin grew by 15 between the middle and the last arrival")


def test_short_requests_held_behind_one_long_static_batch_are_not_saturation():
    # a static-batch server at one request every 4 s, each request begun on arrival, until request 7's
    # batch (200 tokens, 16 s) holds the engine from 28 s to 44 s: requests 8-10 wait 12, 8 and 4 s and
    # begin with request 11 at 44 s. Every request was begun at the schedule's rate and none waits at the
    # end: head-of-line blocking, not overload. The last third's normalized latency (queueing included)
    # is 4.75x the first third's; its time per output token, 1x.
    begins = [4.0 * i for i in range(8)] + [44.0] * 4
    records = [served(i, 4.0 * i, begin, 200 if i == 7 else 20) for i, begin in enumerate(begins)]
    m = pass_online_metrics(records, {})
    assert m["admitted_rate_per_s"] == pytest.approx(m["schedule_rate_per_s"]) and m["queue_growth"] == 0
    assert m["latency_growth"] == pytest.approx(1.0)
    assert saturation(m) == (False, None)


def test_requests_served_more_slowly_as_the_load_rises_are_saturation():
    # a continuous-batching engine at one request a second: every request begun on arrival (no queue),
    # but each third of them served at 10, 20 and 30 ms per output token after the first
    def paced(i, tpot):
        first = i + 0.05
        return RequestRecord(i, 2, 50, first, first + 49 * tpot, arrival_s=float(i), scheduled_s=float(i))

    records = [paced(i, 0.01 * (1 + i // 4)) for i in range(12)]
    m = pass_online_metrics(records, {})
    assert m["admitted_rate_per_s"] == pytest.approx(m["schedule_rate_per_s"]) and m["queue_growth"] == 0
    assert m["latency_growth"] == pytest.approx(3.0)
    assert saturation(m) == (True, "the last third's time per output token is 3x the first third's")


def test_one_token_outputs_have_no_tpot_and_leave_the_latency_growth_unknown():
    one_token = [served(i, float(i), float(i), 1) for i in range(9)]  # TPOT None: no token after the first
    m = pass_online_metrics(one_token, {})
    assert m["latency_growth"] is None and saturation(m) == (False, None)
    # a one-token request in the first third is left out of its mean; the others still count
    mixed = [served(0, 0.0, 0.0, 1)] + [served(i, float(i), float(i), 20) for i in range(1, 9)]
    assert pass_online_metrics(mixed, {})["latency_growth"] == pytest.approx(1.0)


def test_a_request_without_scheduled_s_begins_at_its_first_token_else_its_end():
    assert begin_s(RequestRecord(0, 2, 3, 1.5, 2.0, arrival_s=1.0)) == 1.5
    assert begin_s(RequestRecord(0, 2, 3, None, 2.0, arrival_s=1.0)) == 2.0
    records = queued_behind_a_batch(scheduled=False)  # each first token 0.08 s after the request began
    assert queue_growth(records) == 14  # the middle arrival waits for its first token: 1 -> 15 waiting
    m = pass_online_metrics(records, {})
    assert m["admitted_rate_per_s"] is None and saturation(m)[0]


def test_the_admitted_rate_is_unknown_where_a_backend_left_scheduling_unknown():
    unknown = [RequestRecord(i, 2, 3, i + 0.1, i + 1.0, arrival_s=float(i)) for i in range(6)]
    assert pass_online_metrics(unknown, {})["admitted_rate_per_s"] is None


def test_a_request_started_before_its_arrival_is_counted():
    assert early_starts([rec(0, 1.0, 1.5, 2.0), rec(1, 1.0, 0.9, 2.0)]) == 1


def test_sweep_groups_records_by_offered_rate_with_inf_last():
    records = [rec(0, 0.0, 0.1, 0.2), rec(1, 0.0, 0.1, 0.3)]
    records += [rec(0, 0.5, 0.6, 0.7, request_rate=2.0), rec(1, 1.0, 1.1, 1.2, request_rate=2.0)]
    points = sweep_metrics(records, {})
    assert [p["request_rate"] for p in points] == [2.0, "inf"]
    assert points[0]["offered_rate_per_s"] == 2.0 and points[1]["offered_rate_per_s"] is None


def test_sustained_rate_is_the_last_rate_before_the_first_failure():
    points = [
        {"offered_rate_per_s": 1.0, "normalized_latency_s": 0.01, "saturated": False, "slo_attainment": 1.0},
        {"offered_rate_per_s": 2.0, "normalized_latency_s": 0.02, "saturated": False, "slo_attainment": 0.95},
        {"offered_rate_per_s": 4.0, "normalized_latency_s": 0.50, "saturated": True, "slo_attainment": 0.2},
        {"offered_rate_per_s": 8.0, "normalized_latency_s": 0.01, "saturated": False, "slo_attainment": 1.0},
    ]
    assert sustained_rate(points, bound_s=0.05) == (2.0, True)
    assert sustained_rate(points, bound_s=0.015) == (1.0, True)
    assert sustained_rate(points, slos=True) == (2.0, True)
    assert sustained_rate(points[:2], bound_s=1.0) == (2.0, False)  # never failed: at least 2


def test_compare_lines_up_every_runs_sweep_by_rate_and_marks_saturation():
    a = RunSummary("vllm", "offline", status="ok", sweep=[
        {"offered_rate_per_s": 1.0, "normalized_latency_s": 0.01, "saturated": False},
        {"offered_rate_per_s": None, "normalized_latency_s": 0.02, "saturated": False}])  # fmt: skip
    b = RunSummary("hf", "sequential", status="ok", sweep=[
        {"offered_rate_per_s": 2.0, "normalized_latency_s": 0.5, "saturated": True}])  # fmt: skip
    lines = sweep_comparison([("A", [a]), ("B", [b, RunSummary("hf", "batched", status="ok")])])
    table = "\n".join(lines)
    assert "1.00 req/s" in table and "2.00 req/s" in table and "inf" not in table.split("\n")[2]
    assert "| A     | vllm/offline   | 0.0100" in table and "0.5000*" in table
    assert "hf/batched" not in table  # no sweep: not a row
    assert sweep_comparison([("A", [RunSummary("hf", "batched", status="ok")])]) == []
