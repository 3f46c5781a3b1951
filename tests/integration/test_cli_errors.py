"""Bad input of each kind: exit code 2, a message naming the fix, no traceback, and nothing written:
no run folder (`lab experiment`, `lab capacity`), no files in --out (`lab run`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run-cpu-tiny"


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
    assert "Traceback" not in proc.stderr + proc.stdout
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
        (["--batch-size", "0"], "--batch-size must be 1-"),
        (["--repeats", "0"], "--repeats must be 1-100"),
        (["--kv-cache-memory", "lots"], "cannot read 'lots' as a size"),
        (["--kv-cache-memory", "0"], "size '0' must be more than 0"),
        (["--kv-cache-memory", "-1GiB"], "size '-1GiB' must be more than 0"),
        (["--max-model-len", "0"], "--max-model-len must be 1-"),
        (["--num-requests", "0"], "--num-requests must be 1-"),
        (["--output-tokens", "-3"], "--output-tokens must be 1-"),
        (["--seed", "-1"], "--seed must be 0-"),
        (["--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization must be in (0, 1]"),
        (["--block-size", "0"], "--block-size must be one of"),
        (["--collector-interval-ms", "0"], "--collector-interval-ms must be 1-1,000"),
        (["--timeout", "0"], "--timeout must be more than 0"),
        (["--timeout", "-5"], "--timeout must be more than 0"),
        (["--hf-continuous", "graphs=on"], "--hf-continuous: cannot read 'graphs=on'"),
        (["--max-num-seqs", "0"], "--max-num-seqs must be 1-"),
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
        (["--n", "0"], "--n takes integers of at least 1"),
        (["--beam-width", "2,x"], "--beam-width takes integers"),
        (["--beam-width", "2", "--backends", "hf/continuous"], "hf/continuous has no beam search: transformers'"),
        (
            ["--n", "2", "--request-rate", "1,inf"],
            "--n 2 with --request-rate 1,inf: a memory-sharing sweep runs offline",
        ),
        (["--beam-width", "2", "--max-concurrency", "2"], "--beam-width 2 with --request-rate inf --max-concurrency 2"),
        (["--shared-prefix-tokens", "80", "--request-rate", "4"], "run the sharing sweep without --request-rate"),
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
    "args, fragment",
    [
        (["--kv-budget", "0"], "size '0' must be more than 0"),
        (["--max-len", "0"], "--max-len must be 1-"),
        (["--concurrency", "4,0"], "--concurrency takes positive integers"),
        (["--concurrency", "a,b"], "--concurrency takes integers"),
        (["--timeout", "0"], "--timeout must be more than 0"),
    ],
)
def test_capacity_refuses_bad_input_before_any_engine_starts(args, fragment, results):
    proc = lab("capacity", "--device", "cpu", "--results", str(results), *args)
    assert_refused(proc, fragment, results)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--interval-ms", "0"], "--interval-ms must be 1-1,000"),
        (["--max-seconds", "0"], "--max-seconds must be"),
        (["--gpus", "x"], "--gpus takes GPU indices"),
        (["--pid", "0"], "--pid must be 1-"),
    ],
)
def test_collect_refuses_bad_input(args, fragment, tmp_path):
    proc = lab("collect", "--pid-file", str(tmp_path / "pid"), "--out", str(tmp_path / "t.jsonl"), *args)
    assert_refused(proc, fragment, tmp_path / "nothing")
    assert not (tmp_path / "t.jsonl").exists()


@pytest.mark.engine
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--workload", "sharegpt"], "choose seed, sharegpt-like or file:PATH.jsonl"),
        (["--output-tokens", "100000"], "exceed the model's context"),
        (["--max-model-len", "4096"], "--max-model-len 4,096 exceeds the model's context of 2,048"),
        (["--max-model-len", "0"], "--max-model-len must be 1-"),
    ],
)
def test_run_refuses_bad_input_before_writing_anything(tiny_model, tmp_path, args, fragment):
    out = tmp_path / "out"
    proc = lab(
        "run",
        "--backend",
        "hf",
        "--mode",
        "batched",
        "--device",
        "cpu",
        "--model",
        str(tiny_model),
        "--out",
        str(out),
        *args,
    )
    assert_refused(proc, fragment, tmp_path / "nothing")
    assert not out.exists()


@pytest.mark.engine
def test_text_prompts_for_a_model_without_a_tokenizer_name_the_missing_files(model_without_tokenizer, results):
    proc = lab("experiment", "--device", "cpu", "--results", str(results), "--model", str(model_without_tokenizer))
    assert_refused(proc, "has no tokenizer (none of tokenizer.json, tokenizer.model", results)
    assert "use a workload of token counts" in proc.stderr


@pytest.mark.engine
def test_vllm_beam_search_on_a_model_without_a_tokenizer_is_refused_before_anything_starts(
    model_without_tokenizer, results
):
    proc = lab("experiment", "--device", "cpu", "--results", str(results), "--model", str(model_without_tokenizer),
               "--workload", "sharegpt-like", "--num-requests", "2", "--beam-width", "2")  # fmt: skip
    assert_refused(proc, "vLLM's beam search needs the model's tokenizer", results)
    assert "Fix: copy the model's tokenizer files into the folder" in proc.stderr


@pytest.mark.engine
def test_run_with_text_prompts_and_no_tokenizer_writes_nothing(model_without_tokenizer, tmp_path):
    out = tmp_path / "out"
    proc = lab(
        "run",
        "--backend",
        "vllm",
        "--mode",
        "offline",
        "--device",
        "cpu",
        "--model",
        str(model_without_tokenizer),
        "--out",
        str(out),
    )
    assert_refused(proc, "has no tokenizer", tmp_path / "nothing")
    assert not out.exists()


def test_report_names_the_damaged_line_of_a_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    records = rf.RunFolder(run_dir).part("hf-batched").records
    lines = records.read_text().splitlines(keepends=True)
    records.write_text(lines[0] + '{"request_id": 1, "prompt_tok\n' + "".join(lines[1:]))
    proc = lab("report", str(run_dir))
    assert proc.returncode == 2, proc.stderr
    assert f"{records}, line 2: not valid JSON" in proc.stderr and "Traceback" not in proc.stderr


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
