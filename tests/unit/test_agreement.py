"""lab/agreement.py: whether two sets of throughput runs agree within 5%, with a 95% interval."""

from __future__ import annotations

import math

import pytest

from lab.agreement import agreement, t975


def test_tight_runs_close_together_agree():
    result = agreement([100.0, 100.5, 101.0, 100.2], [99.0, 99.5, 100.0, 99.8])
    assert result.verdict == "agree"
    assert -0.05 <= result.low < result.gap < result.high <= 0.05


def test_the_gap_is_the_ratio_of_geometric_means():
    result = agreement([100.0, 121.0], [110.0, 110.0])
    assert result.gap == pytest.approx(math.sqrt(100 * 121) / 110 - 1)  # 0: geometric mean 110
    assert result.median_gap == pytest.approx(110.5 / 110 - 1)


def test_tight_runs_far_apart_are_outside():
    assert agreement([110.0, 111.0, 112.0], [100.0, 101.0, 102.0]).verdict == "outside"
    assert agreement([100.0, 101.0, 102.0], [110.0, 111.0, 112.0]).verdict == "outside"


def test_medians_within_five_percent_but_a_wide_interval_are_inconclusive():
    # The H100 TP=2 runs of 2026-11-27 (ninth session, requests/s, one engine start each): medians 1% apart,
    # yet the runs spread by 18% on each side, so a 5% gap cannot be ruled out
    result = agreement([192.37, 212.62, 174.26, 206.17, 204.22], [208.97, 195.37, 173.47, 208.86])
    assert abs(result.median_gap) < 0.05
    assert result.verdict == "inconclusive"
    assert result.low < -0.05 and result.high > 0.05


def test_three_tight_runs_a_side_whose_interval_reaches_past_five_percent_are_inconclusive():
    # the old rule on medians said "agree" here; the interval still holds a gap of more than 5%
    result = agreement([100.0, 101.0, 102.0], [97.0, 98.0, 99.0])
    assert result.verdict == "inconclusive"
    assert result.high > 0.05


def test_fewer_than_two_runs_a_side_give_no_interval():
    result = agreement([100.0, 100.1, 100.2], [100.0])
    assert result.verdict == "inconclusive"
    assert result.low is None
    assert "fewer than two runs a side" in result.describe()


def test_identical_runs_agree_with_a_point_interval():
    result = agreement([100.0, 100.0], [100.0, 100.0])
    assert (result.verdict, result.low, result.high) == ("agree", 0.0, 0.0)


def test_non_positive_rates_are_refused():
    with pytest.raises(ValueError, match="positive"):
        agreement([0.0, 1.0], [1.0, 1.0])


def test_t_quantiles_round_the_degrees_of_freedom_down():
    assert t975(1) == 12.706
    assert t975(2.9) == 4.303
    assert t975(30) == 2.042
    assert t975(45) == 2.021
    assert t975(10_000) == 1.980
