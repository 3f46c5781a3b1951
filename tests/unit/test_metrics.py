"""Derived metrics: exact, hand-computed expectations."""

import pytest

from lab.metrics import percentile, ratio, summarize_records, tpot_s
from lab.records import RequestRecord


def rec(rid, prompt, out, scheduled, first, end, status="ok"):
    return RequestRecord(rid, prompt, out, first, end, scheduled_s=scheduled, status=status)


def test_percentile_interpolates_like_numpy():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 100) == 4
    assert percentile([10], 99) == 10
    assert percentile([], 50) is None


def test_tpot_is_time_after_the_first_token_per_remaining_token():
    assert tpot_s(rec(0, 5, 11, 0.2, 0.5, 1.5)) == pytest.approx(0.1)
    assert tpot_s(rec(0, 5, 1, 0.0, 0.5, 0.5)) is None


def test_summary_rates_use_the_last_token_of_the_timed_pass():
    records = [
        rec(0, 10, 20, 0.0, 0.1, 1.0),
        rec(1, 30, 20, 1.0, 1.1, 2.0),
        rec(2, 5, 5, 0.0, 0.1, 1.5, status="error"),
    ]
    s = summarize_records(records)
    assert s["requests"] == 3 and s["requests_ok"] == 2
    assert s["duration_s"] == 2.0
    assert s["output_tokens_per_s"] == 20.0
    assert s["total_tokens_per_s"] == 40.0
    assert s["requests_per_s"] == 1.0
    assert s["ttft_s_p50"] == pytest.approx(0.6)  # 0.1 and 1.1: from arrival at 0, not from the batch's start
    assert s["e2e_s_mean"] == pytest.approx(1.5)
    assert s["queue_s_p99"] == pytest.approx(0.99) and s["service_s_mean"] == pytest.approx(1.0)


def test_ratio_handles_missing_values():
    assert ratio(4, 2) == 2
    assert ratio(None, 2) is None and ratio(1, 0) is None
