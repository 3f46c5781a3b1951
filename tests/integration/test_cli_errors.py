"""Bad input of each kind: exit code 2, a message naming the fix, and no run folder left behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def lab(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lab", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


@pytest.fixture
def results(tmp_path):
    return tmp_path / "results"


def assert_refused(proc, fragment, results):
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr
    assert not results.exists() or not any(results.iterdir()), list(results.iterdir())


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--backends", "tgi"], "unknown backend 'tgi'"),
        (["--backends", "hf/paged"], "unknown mode 'paged' for backend 'hf'"),
        (["--model", "synthetic:huge"], "synthetic:huge"),
        (["--model", "/no/such/model"], "/no/such/model"),
        (["--workload", "sharegpt"], "choose seed, sharegpt-like or file:PATH.jsonl"),
        (["--workload", "file:/no/such.jsonl"], "workload file not found"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--repeats", "0"], "--repeats must be 1-100"),
        (["--kv-cache-memory", "lots"], "cannot read 'lots' as a size"),
        (["--hf-continuous", "graphs=on"], "--hf-continuous: cannot read 'graphs=on'"),
        (["--max-num-seqs", "0"], "--max-num-seqs must be at least 1"),
        (["--kv-cache-memory", "workload:2"], "give a share in (0, 1]"),
        (["--kv-cache-memory", "workload:most"], "write workload:SHARE"),
        (["--tensor-parallel-size", "0"], "--tensor-parallel-size must be 1-64"),
        (["--request-rate", "0"], "--request-rate 0: a rate must be positive"),
        (["--request-rate", "2,-1"], "--request-rate -1: a rate must be positive"),
        (["--request-rate", "fast"], "--request-rate: cannot read 'fast'"),
        (["--burstiness", "0"], "--burstiness must be positive"),
        (["--slo-ttft", "-0.5"], "--slo-ttft must be positive"),
        (["--slo-itl", "0.5"], "No such option '--slo-itl'"),
        (["--max-concurrency", "0"], "--max-concurrency must be at least 1"),
    ],
)
def test_experiment_refuses_bad_input_before_any_engine_starts(args, fragment, results):
    proc = lab("experiment", "--device", "cpu", "--results", str(results), *args)
    assert_refused(proc, fragment, results)


def test_malformed_jsonl_line_is_named(tmp_path, results):
    workload = tmp_path / "w.jsonl"
    workload.write_text('{"prompt": "hi", "output_tokens": 3}\n{"prompt": "hi", "output_tokens": "many"}\n')
    proc = lab("experiment", "--device", "cpu", "--results", str(results), "--workload", f"file:{workload}")
    assert_refused(proc, "line 2", results)


@pytest.mark.engine
def test_output_beyond_the_context_is_refused(tiny_model, results):
    proc = lab(
        "experiment",
        "--device",
        "cpu",
        "--results",
        str(results),
        "--model",
        str(tiny_model),
        "--output-tokens",
        "100000",
    )
    assert_refused(proc, "exceed the model's context", results)


@pytest.mark.parametrize(
    "gpu_env, fragment",
    [
        ({"LAB_GPUS": "0"}, "--tensor-parallel-size 2 needs 2 GPUs, but this run may use 1 (LAB_GPUS=0)"),
        ({"LAB_GPUS": "0,1", "CUDA_VISIBLE_DEVICES": "2,3"}, "disagree: set one of them"),
    ],
)
def test_more_gpus_than_the_run_may_use_is_refused(gpu_env, fragment, results):
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_GPUS", "CUDA_VISIBLE_DEVICES")}
    proc = lab(
        "experiment", "--device", "cuda", "--tensor-parallel-size", "2", "--results", str(results), env=env | gpu_env
    )
    assert_refused(proc, fragment, results)


def test_unknown_option_exits_2(results):
    proc = lab("experiment", "--frobnicate")
    assert proc.returncode == 2 and "No such option" in proc.stderr


def test_report_of_a_missing_run_folder(tmp_path):
    proc = lab("report", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "run folder not found" in proc.stderr
