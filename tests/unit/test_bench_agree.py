"""scripts/gpu/bench_agree.py's verdict: the lab's vLLM against `vllm bench throughput` (issue 18)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu" / "bench_agree.py"


@pytest.fixture(scope="module")
def bench_agree():
    spec = importlib.util.spec_from_file_location("bench_agree", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_medians_within_five_percent_and_tight_runs_agree(bench_agree):
    result, gap = bench_agree.verdict([100.0, 101.0, 102.0], [97.0, 98.0, 99.0])
    assert result == "agree"
    assert gap == pytest.approx(101 / 98 - 1)


def test_a_gap_beyond_five_percent_is_outside(bench_agree):
    assert bench_agree.verdict([110.0, 111.0, 112.0], [100.0, 101.0, 102.0])[0] == "outside"


def test_runs_spread_wider_than_the_tolerance_are_inconclusive(bench_agree):
    # the 2026-11-26 TP=2 run: the bench's two runs 14% apart
    result, gap = bench_agree.verdict([145.61, 155.96, 162.10], [144.90, 125.76])
    assert result == "inconclusive"
    assert gap == pytest.approx(155.96 / 135.33 - 1)


def test_the_lab_side_leaves_out_a_pass_that_compiled(bench_agree, tmp_path):
    summary = {
        "runs": [
            {
                "passes": [{"index": 0, "invalid": "compiled"}, {"index": 1, "invalid": None}],
                "pass_metrics": [{"requests_per_s": 50.0}, {"requests_per_s": 150.0}],
            }
        ]
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert bench_agree.lab_rates(tmp_path) == [150.0]


def test_main_exits_nonzero_unless_they_agree(bench_agree, tmp_path, capsys):
    summary = {"runs": [{"passes": [], "pass_metrics": [{"requests_per_s": r} for r in (100.0, 100.5, 101.0)]}]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"requests_per_second": 99.0}))
    assert bench_agree.main([str(tmp_path), str(bench)]) == 0
    bench.write_text(json.dumps({"requests_per_second": 80.0}))
    assert bench_agree.main([str(tmp_path), str(bench)]) == 1
    assert "outside" in capsys.readouterr().out
