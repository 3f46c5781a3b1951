"""`lab compare`'s online sections over several run folders (issue 16): one latency bound over every run's
sweeps, honest bounds ('<', '>=') on sustained rates and their ratios, refusal of sweeps with other
arrivals, the range over repeated passes. Pure logic on fake runs (`fake_run`: RunSummary entries with
hand-made sweep points, no engine); the real sweeps are compared in tests/integration/test_online_serving.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lab.errors import LabInputError
from lab.online_metrics import rate_metrics
from lab.online_settings import OnlineSettings
from lab.records import RequestRecord, RunSummary
from lab.report.online_markdown import latency_text
from lab.report.sustained import Sustained, ratio_text
from lab.report.sweep_compare import (
    SweepRun,
    check_plot_path,
    combined_section,
    compare_figure,
    refusal,
    shared_bound,
    sweep_comparison,
    write_compare_plot,
)

IDENTITY = {"model": "synthetic:llama-8b", "workload": "sharegpt-like", "requests": 64, "seed": 0, "burstiness": 1.0}


def point(rate, latency, saturated=False, attainment=1.0, **extra):
    return {"offered_rate_per_s": rate, "normalized_latency_s": latency, "saturated": saturated,
            "slo_attainment": attainment, **extra}  # fmt: skip


def fake_run(letter, sweeps: dict[str, list[dict]], online=None, **identity) -> SweepRun:
    """A fake compared run: backend/modes with the given sweep points, no folder and no records."""
    runs = [RunSummary(*label.split("/"), status="ok", sweep=points) for label, points in sweeps.items()]
    return SweepRun(letter, runs, online or OnlineSettings(), IDENTITY | identity)


def row(lines: list[str], letter: str, label: str) -> list[str]:
    """The cells of the table row of (run, backend/mode)."""
    text = "\n".join(lines).splitlines()
    found = [line for line in text if line.startswith(f"| {letter} ") and f" {label} " in line]
    assert len(found) == 1, lines
    return [cell.strip() for cell in found[0].strip("|").split("|")]


def test_one_bound_over_every_runs_sweeps_not_each_runs_own():
    # B alone would take 4 x 0.2 = 0.8 s/token and sustain 2 req/s; beside A's vLLM the bound is 4 x 0.01
    vllm = fake_run("A", {"vllm/offline": [point(1.0, 0.01), point(2.0, 0.011), point(4.0, 0.02, saturated=True)]})
    hf = fake_run("B", {"hf/batched": [point(1.0, 0.2), point(2.0, 0.3), point(4.0, 0.9, saturated=True)]})
    bound, source = shared_bound([vllm, hf])
    assert bound == pytest.approx(0.04) and "A vllm/offline" in source
    lines = combined_section([vllm, hf])
    assert "normalized latency <= 0.0400 s/token" in "\n".join(lines)
    assert row(lines, "A", "vllm/offline")[4:6] == ["2.00", "1.00x"]
    assert row(lines, "B", "hf/batched")[4:6] == ["< 1.00", "> 2.00x"]  # over the bound at its lowest rate
    # at any latency both keep up with 2 req/s and saturate at 4: the ratio is exact
    assert "sustained req/s, not saturated (any latency)" in "\n".join(lines)
    assert row(lines, "A", "vllm/offline")[2:4] == ["2.00", "1.00x"]
    assert row(lines, "B", "hf/batched")[2:4] == ["2.00", "1.00x"]


def test_the_runs_own_bound_is_used_only_where_every_run_gives_the_same():
    a = fake_run("A", {"vllm/offline": [point(1.0, 0.01)]}, OnlineSettings(norm_latency_bound_s=0.5))
    b = fake_run("B", {"hf/batched": [point(1.0, 0.3)]}, OnlineSettings(norm_latency_bound_s=0.5))
    assert shared_bound([a, b]) == (0.5, "--norm-latency-bound 0.5 s/token, the same in every run")
    c = fake_run("C", {"hf/batched": [point(1.0, 0.3)]}, OnlineSettings(norm_latency_bound_s=0.2))
    bound, source = shared_bound([a, c])
    assert bound == pytest.approx(0.04) and "differ (A 0.5000, C 0.2000)" in source


def test_never_saturated_is_at_least_the_highest_rate_and_its_ratio_a_bound():
    vllm = fake_run("A", {"vllm/offline": [point(1.0, 0.01), point(2.0, 0.01), point(4.0, 0.01)]})
    hf = fake_run("B", {"hf/continuous": [point(1.0, 0.02), point(2.0, 0.1, saturated=True)]})
    lines = combined_section([vllm, hf])
    assert row(lines, "A", "vllm/offline")[2:6] == [">= 4.00", "1.00x"] * 2  # at any latency and within the bound
    assert row(lines, "B", "hf/continuous")[2:6] == ["1.00", ">= 4.00x"] * 2  # vLLM at least 4, hf exactly 1


def test_ratio_bounds_follow_from_the_intervals():
    exact, at_least, below = Sustained(2.0, 2.0), Sustained(8.0, math.inf), Sustained(0.0, 1.0, high_open=True)
    assert (exact.text(), at_least.text(), below.text()) == ("2.00", ">= 8.00", "< 1.00")
    assert ratio_text(exact, Sustained(0.5, 0.5)) == "4.00x"
    assert ratio_text(exact, below) == "> 2.00x"  # this < 1, so vLLM / this > 2
    assert ratio_text(exact, at_least) == "<= 0.25x"
    assert ratio_text(at_least, exact) == ">= 4.00x"
    assert ratio_text(at_least, below) == "> 8.00x"
    assert ratio_text(below, exact) == "< 0.50x"
    assert ratio_text(at_least, at_least) == ratio_text(below, below) == "-"  # nothing known
    assert ratio_text(None, exact) == ratio_text(exact, None) == "-"


def test_sustained_of_points_reads_the_finite_rates_in_order():
    points = [point(None, 0.05), point(2.0, 0.01, saturated=True), point(1.0, 0.01)]  # inf first, unsorted
    assert Sustained.of(points, bound_s=1.0, slos=False) == Sustained(1.0, 1.0)
    assert Sustained.of([point(None, 0.05)], bound_s=1.0, slos=False) is None  # offline only


def test_sweeps_with_another_seed_or_burstiness_are_not_combined_and_say_which_field(tmp_path: Path):
    a = fake_run("A", {"vllm/offline": [point(1.0, 0.01)]})
    b = fake_run("B", {"hf/batched": [point(1.0, 0.3)]}, seed=1, burstiness=0.5)
    assert refusal([a, b]) == {"seed": "0 vs 1", "burstiness": "1.0 vs 0.5"}
    text = "\n".join(combined_section([a, b]))
    assert "**Not combined:**" in text and "seed: 0 vs 1; burstiness: 1.0 vs 0.5" in text
    assert "sustained req/s" not in text  # no table
    path = tmp_path / "online.png"
    assert "No plot written" in write_compare_plot(path, [a, b]) and not path.exists()
    offline = fake_run("C", {"hf/batched": []}, seed=7)  # no sweep: its seed does not matter
    assert refusal([a, offline]) == {}


def test_slo_column_only_where_every_run_has_the_same_slos():
    slos = OnlineSettings(slo_ttft_s=1.0)
    a = fake_run("A", {"vllm/offline": [point(1.0, 0.01), point(2.0, 0.01, attainment=0.5)]}, slos)
    b = fake_run("B", {"hf/batched": [point(1.0, 0.02, attainment=0.2)]}, slos)
    lines = combined_section([a, b])
    assert row(lines, "A", "vllm/offline")[6:8] == ["1.00", "1.00x"]
    assert row(lines, "B", "hf/batched")[6:8] == ["< 1.00", "> 1.00x"]
    other = fake_run("B", {"hf/batched": [point(1.0, 0.02)]}, OnlineSettings(slo_ttft_s=2.0))
    text = "\n".join(combined_section([a, other]))
    assert "within the SLOs" not in text and "SLOs differ (A: ttft <= 1 s; B: ttft <= 2 s)" in text


def test_no_vllm_run_means_no_ratios():
    lines = combined_section([fake_run("A", {"hf/batched": [point(1.0, 0.01)]}), fake_run("B", {})])
    assert "No vllm/* backend/mode" in "\n".join(lines) and row(lines, "A", "hf/batched")[3] == "-"


def rec(i, arrival, end, pass_index, invalid=None):
    return RequestRecord(i, 2, 4, arrival + 0.1, end, arrival_s=arrival, scheduled_s=arrival,
                         pass_index=pass_index, pass_invalid=invalid, request_rate=1.0)  # fmt: skip


def test_rate_metrics_keep_the_range_of_normalized_latency_over_the_passes_that_count():
    # normalized latency of a pass: mean of e2e / 4 tokens; e2e 1, 2, 3 s in passes 0-2, 40 s in a compiled pass 3
    records = [rec(i, float(i), float(i) + e2e, p) for p, e2e in enumerate((1.0, 2.0, 3.0)) for i in range(2)]
    records += [rec(i, float(i), float(i) + 40.0, 3, invalid="compiled") for i in range(2)]
    m = rate_metrics(records, 1.0, {})
    assert m["passes_counted"] == 3
    assert (m["normalized_latency_s"], m["normalized_latency_s_min"], m["normalized_latency_s_max"]) == (
        pytest.approx(0.5), pytest.approx(0.25), pytest.approx(0.75))  # fmt: skip
    assert latency_text(m) == "0.5000 (0.2500-0.7500)"


def test_a_point_with_one_pass_or_from_an_older_summary_shows_its_median_alone():
    assert latency_text(point(1.0, 0.01, passes_counted=1, normalized_latency_s_min=0.01)) == "0.0100"
    assert latency_text(point(1.0, 0.01, passes_counted=3)) == "0.0100"  # written before the range was kept
    ranged = point(1.0, 0.01, passes_counted=3, normalized_latency_s_min=0.009, normalized_latency_s_max=0.02)
    table = "\n".join(sweep_comparison([("A", [RunSummary("vllm", "offline", status="ok", sweep=[ranged])])]))
    assert "median (min-max)" in table and "0.0100 (0.0090-0.0200)" in table


def test_compare_plot_draws_a_line_per_run_and_backend(tmp_path: Path):
    a = fake_run("A", {"vllm/offline": [point(1.0, 0.01), point(2.0, 0.02, saturated=True)]})
    b = fake_run("B", {"hf/batched": [point(1.0, 0.3, saturated=True)], "hf/sequential": []})
    lines = compare_figure([a, b]).axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["A vllm/offline", "B hf/batched", "sustained-rate bound"]
    assert list(lines[-1].get_ydata()) == [pytest.approx(0.04)] * 2  # 4 x A's 0.01 at its lowest rate
    path = tmp_path / "online.png"
    assert write_compare_plot(path, [a, b]).startswith("Plot:")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(LabInputError, match="--plot"):
        check_plot_path(tmp_path / "missing" / "online.png")


def passes(*latencies, saturated=()):
    """pass_points of one rate: each pass's normalized latency (saturated: the indices that were)."""
    return [
        {"normalized_latency_s": v, "slo_attainment": 1.0, "saturated": i in saturated} for i, v in enumerate(latencies)
    ]


def test_each_pass_has_its_own_sustained_rate_and_the_ratio_its_range():
    # vLLM: both passes hold 1 and 2 req/s; at 4 the first pass saturates, the second holds (its 8 fails)
    vllm = [point(1.0, 0.01, pass_points=passes(0.01, 0.01)), point(2.0, 0.01, pass_points=passes(0.01, 0.01)),
            point(4.0, 0.01, pass_points=passes(0.01, 0.01, saturated=(0,))),
            point(8.0, 0.01, saturated=True, pass_points=passes(0.01, 0.01, saturated=(0, 1)))]  # fmt: skip
    # hf: 1 req/s holds in both passes; at 2 req/s the first saturates, the second is beyond the bound
    hf = [point(1.0, 0.02, pass_points=passes(0.02, 0.02)),
          point(2.0, 0.03, saturated=True, pass_points=passes(0.03, 0.9, saturated=(0,)))]  # fmt: skip
    fast, slow = Sustained.of(vllm, bound_s=0.1, slos=False), Sustained.of(hf, bound_s=0.1, slos=False)
    assert (fast.low, [p.low for p in fast.passes]) == (4.0, [2.0, 4.0])
    assert fast.text() == "4.00 (passes: 2.00, 4.00)"
    assert slow.text() == "1.00 (passes: 1.00, 1.00)"
    assert ratio_text(fast, slow) == "4.00x (passes: 2.00-4.00x)"


def test_a_pass_range_is_left_out_where_a_pass_is_only_bounded_or_a_side_ran_once():
    never_failed = [point(1.0, 0.01, pass_points=passes(0.01, 0.01)), point(2.0, 0.01, pass_points=passes(0.01, 0.5))]
    one_pass = [point(1.0, 0.02), point(2.0, 0.03, saturated=True)]
    a, b = Sustained.of(never_failed, bound_s=0.1, slos=False), Sustained.of(one_pass, bound_s=0.1, slos=False)
    assert a.text() == ">= 2.00 (passes: >= 2.00, 1.00)"
    assert b.passes == () and b.text() == "1.00"
    assert ratio_text(a, b) == ">= 2.00x"  # the first pass is only a bound: no range


def test_rate_metrics_judge_each_pass_on_its_own():
    # two passes at 1 req/s: the first served at once, the second's requests begun long after arrival
    records = [rec(i, float(i), float(i) + 1.0, 0) for i in range(6)]
    records += [RequestRecord(i, 2, 4, 30.0 + i * 10, 31.0 + i * 10, arrival_s=float(i), scheduled_s=30.0 + i * 10,
                              pass_index=1, request_rate=1.0) for i in range(6)]  # fmt: skip
    m = rate_metrics(records, 1.0, {})
    assert [p["saturated"] for p in m["pass_points"]] == [False, True]
    assert m["pass_points"][0]["normalized_latency_s"] == pytest.approx(0.25)
    assert rate_metrics(records[:6], 1.0, {})["pass_points"] == []  # one pass: the median is the pass
