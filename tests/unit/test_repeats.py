"""lab.report.repeats: per-pass throughput, median and spread (pure arithmetic on fake summaries)."""

from __future__ import annotations

import pytest

from lab.config import EngineSettings
from lab.errors import LabInputError
from lab.records import RunSummary
from lab.report.repeats import pass_stats, repeated_passes
from lab.report.timing_markdown import repeats_section


def test_pass_stats_rates_median_and_spread():
    stats = pass_stats([400.0, 200.0, 100.0])
    assert stats.median == 200.0 and stats.min == 100.0 and stats.max == 400.0
    assert stats.spread_pct == pytest.approx(150.0)


def test_pass_stats_leave_out_a_pass_that_compiled():
    stats = pass_stats([10.0, 200.0, 100.0, 300.0], invalid=[0])
    assert stats.median == 200.0 and stats.min == 100.0 and stats.spread_pct == pytest.approx(100.0)
    assert stats.output_tokens_per_s[0] == 10.0  # still shown, marked


def test_pass_stats_even_count_interpolates_the_median():
    assert pass_stats([100.0, 50.0]).median == pytest.approx(75.0)


def fake_run(passes, output_tokens=100, mode="batched"):
    return RunSummary("hf", mode, passes_s=passes, metrics={"output_tokens": output_tokens})


def test_no_section_when_every_run_made_one_pass():
    assert repeated_passes([fake_run([1.0]), fake_run(None, mode="sequential")]) == []
    assert repeats_section([]) == []


def test_section_marks_a_pass_that_compiled_and_gives_each_pass_latency():
    per_pass = [
        {"output_tokens_per_s": v, "ttft_s_p50": t, "e2e_s_p50": 2 * t}
        for v, t in ((5.0, 9.0), (20.0, 1.0), (10.0, 2.0))
    ]
    run = RunSummary("hf", "static-cache", metrics={"invalid_passes": [0]}, pass_metrics=per_pass)
    text = "\n".join(repeats_section(repeated_passes([run])))
    assert "| 5*, 20, 10 " in text and "15.0 (10.0-20.0)" in text
    assert "9.000, 1.000, 2.000" in text and "18.000, 2.000, 4.000" in text


def test_section_lists_each_pass_and_the_median_of_an_older_run():
    stats = repeated_passes([fake_run([0.5, 1.0, 0.25]), fake_run([2.0], mode="sequential")])
    text = "\n".join(repeats_section(stats))
    assert "## Repeated timed passes" in text
    assert "| hf/batched" in text and "200, 100, 400" in text and "200.0" in text
    assert "hf/sequential" not in text  # one pass: nothing to repeat


def test_repeats_out_of_range_is_refused():
    with pytest.raises(LabInputError, match="--repeats must be 1-100"):
        EngineSettings(model="m", workload="seed", repeats=0)
