"""lab.report.format: the report's number formats."""

from __future__ import annotations

from lab.report.format import pct


def test_a_share_is_a_percentage_with_one_decimal():
    assert pct(0.3782) == "37.8"
    assert pct(-0.052) == "-5.2"


def test_a_share_that_rounds_to_zero_is_never_negative_zero():
    assert pct(-0.0004) == "0.0"
    assert pct(0.0) == "0.0"


def test_no_share_is_a_dash():
    assert pct(None) == "-"
