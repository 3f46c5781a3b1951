"""An online sweep's report: the offline tables give each backend/mode's last offered rate alone, never a
median across rates (read from a committed H100 sweep: vLLM at 1, 2 and 4 req/s, hf/continuous at 1)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lab.report.observations import NOT_SUPPORTED, observations
from lab.report.run_view import RunView
from lab.report.timing_markdown import passes_note

SWEEP = Path(__file__).resolve().parents[2] / "results" / "gpu-h100" / "issue13-16-x2" / "online-8b"


@pytest.fixture(scope="module")
def sweep_view(tmp_path_factory) -> RunView:
    source = next(SWEEP.glob("2026*"))
    return RunView(shutil.copytree(source, tmp_path_factory.mktemp("sweep") / source.name))


def test_the_offline_figures_of_a_sweep_are_its_last_rates_pass_not_a_median_over_rates(sweep_view):
    vllm = next(r for r in sweep_view.runs if r.label == "vllm/offline")
    last = vllm.sweep[-1]
    assert [p["offered_rate_per_s"] for p in vllm.sweep] == [1.0, 2.0, 4.0]
    assert vllm.metrics["passes"] == 1 and vllm.passes_s == [pytest.approx(vllm.metrics["duration_s"])]
    assert vllm.metrics["output_tokens_per_s"] == pytest.approx(last["output_tokens_per_s"])
    assert vllm.metrics["output_tokens"] == 18_771


def test_the_report_says_which_rate_the_offline_tables_show(sweep_view):
    note = passes_note(sweep_view.runs)
    assert "vllm/offline 4.0" in note and "hf/continuous 1.0" in note
    assert "recorded before every pass's records were kept" not in note


def test_throughputs_at_different_offered_rates_are_not_set_side_by_side(sweep_view):
    from_runs = {o.claim: o for o in observations(sweep_view, [])}
    faster = from_runs["vLLM generates faster than the traditional transformers path."]
    assert faster.verdict == NOT_SUPPORTED
    assert "vllm/offline 4.0" in faster.evidence and "hf/continuous 1.0" in faster.evidence
