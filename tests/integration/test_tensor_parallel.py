"""`--tensor-parallel-size 2` end to end on the CPU with the real engines: transformers as two torchrun
ranks (gloo), vLLM with two CPU workers, on synthetic:tiny-tp (4 KV heads: 2 per rank). The ranks
and workers are processes here rather than GPUs; tests/gpu/test_two_gpus.py runs the same on
two GPUs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.hardware.timeline import read_timeline
from lab.models.build import build_model

pytestmark = pytest.mark.engine

OUTPUT_TOKENS = 8
REQUESTS = 4


def experiment(model: Path, backends: str, results: Path) -> subprocess.CompletedProcess:
    options = f"--device cpu --tensor-parallel-size 2 --num-requests {REQUESTS} --output-tokens {OUTPUT_TOKENS}"
    options += " --repeats 1"  # one timed pass: each rank's records are then the workload once
    argv = [sys.executable, "-m", "lab", "experiment", *options.split(), "--batch-size", "2"]
    argv += ["--model", str(model), "--backends", backends, "--results", str(results)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=1200)


def summaries(run_dir: Path) -> dict[str, dict]:
    return {f"{r['backend']}/{r['mode']}": r for r in rf.read_json(run_dir / rf.SUMMARY)["runs"]}


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    if importlib.util.find_spec("accelerate") is None:
        pytest.skip("accelerate is not installed: transformers refuses a tensor-parallel load without it "
                    "(requirements/cpu.txt pins it)")  # fmt: skip
    model = build_model("synthetic:tiny-tp", tmp_path_factory.mktemp("cache"))
    proc = experiment(model, "hf/batched,vllm", tmp_path_factory.mktemp("results"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    return run_dir, summaries(run_dir)


@pytest.mark.vllm_cpu  # split_run starts vLLM on the CPU
def test_both_backends_run_split_over_two_ranks_with_every_token(split_run):
    _, runs = split_run
    assert {label: r["status"] for label, r in runs.items()} == {"hf/batched": "ok", "vllm/offline": "ok"}
    for r in runs.values():
        assert r["metrics"]["requests_ok"] == REQUESTS
        assert r["metrics"]["output_tokens"] == REQUESTS * OUTPUT_TOKENS
        assert r["engine"]["tensor_parallel_size"] == 2


@pytest.mark.vllm_cpu  # split_run starts vLLM on the CPU
def test_hf_rank_1_ran_the_same_workload_and_wrote_only_its_own_folder(split_run):
    run_dir, _ = split_run
    part = rf.PartFolder(run_dir / rf.RUNS / "hf-batched")
    (rank1,) = part.ranks()
    result = rf.read_json(rank1.result)
    assert result["status"] == "ok" and result["engine"]["tensor_parallel_size"] == 2
    assert sum(r["output_tokens"] for r in rf.read_jsonl(rank1.records)) == REQUESTS * OUTPUT_TOKENS
    assert "rank 1: lab: ok" in part.log.read_text()


@pytest.mark.vllm_cpu  # split_run starts vLLM on the CPU
def test_each_hf_rank_logs_every_step_after_its_last_pass_in_order(split_run):
    run_dir, _ = split_run
    log = rf.PartFolder(run_dir / rf.RUNS / "hf-batched").log.read_text().splitlines()
    steps = ["generate: done", "records: written", "result: written, before the close", "close: started"]
    steps += ["distributed teardown: started", "distributed teardown: done", "close: done", "result: written", "ok"]
    for prefix in ("lab: ", "rank 1: lab: "):
        lines = [line.removeprefix(prefix) for line in log if line.startswith(prefix)]
        at = [
            next(i for i, line in enumerate(lines) if line == step or line.startswith(f"{step} in ")) for step in steps
        ]
        assert at == sorted(at), (prefix, lines[-12:])


@pytest.mark.vllm_cpu  # split_run starts vLLM on the CPU
def test_the_collector_watched_torchrun_and_both_ranks(split_run):
    run_dir, _ = split_run
    part = rf.PartFolder(run_dir / rf.RUNS / "hf-batched")
    agent = int(part.pid.read_text())
    samples = read_timeline(part.timeline)["samples"]
    assert samples and all(agent in s["pids"] for s in samples)
    assert max(len(s["pids"]) for s in samples) >= 3, "the agent and its two ranks"


@pytest.mark.vllm_cpu  # split_run starts vLLM on the CPU
def test_the_hf_cache_is_counted_over_both_ranks(split_run):
    run_dir, _ = split_run
    batches = rf.read_json(run_dir / rf.RUNS / "hf-batched" / rf.RESULT)["engine"]["batches"]
    assert batches and all(b["cache_bytes"] == 2 * b["cache_bytes_per_gpu"] for b in batches)
    (hf,) = [e for e in rf.read_json(run_dir / rf.KV_BREAKDOWN)["runs"] if e["run"] == "hf/batched"]
    checks = hf["checks"]
    assert checks["agree"] == checks["total"] > 0, checks  # the arithmetic holds for the whole model


@pytest.mark.vllm_cpu  # split_run starts vLLM on the CPU
def test_vllm_reports_its_pool_per_worker_and_in_total(split_run):
    _, runs = split_run
    engine = runs["vllm/offline"]["engine"]
    assert engine["kv_heads_per_gpu"] == 2  # 4 KV heads over 2 workers
    assert engine["kv_pool_bytes_total"] == 2 * engine["kv_pool_bytes"]
    assert engine["vllm_cpu_omp_threads_bind"].count("|") == 1  # one CPU group per worker


@pytest.mark.vllm_cpu  # split_run starts vLLM on the CPU
def test_the_report_has_energy_as_not_available_on_the_cpu_and_the_split(split_run):
    run_dir, runs = split_run
    assert all(not r["energy"]["available"] for r in runs.values())
    report = (run_dir / rf.REPORT).read_text()
    assert "- GPUs per backend/mode: 2 (tensor parallelism" in report
    assert "## Memory per GPU" in report and "on each of 2 CPU workers" in report
    assert "- hf/batched: n/a:" in report and "- vllm/offline: n/a:" in report


def test_a_mode_that_cannot_split_the_model_is_not_run_and_says_why(tiny_model, tmp_path):
    proc = experiment(tiny_model, "hf/batched", tmp_path / "results")  # synthetic:tiny has 1 KV head
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    (run,) = summaries(run_dir).values()
    assert run["status"] == "error" and run["metrics"] is None
    assert "cannot split" in run["error"] and "transformers splits the 1 KV heads over the 2 ranks" in run["error"]
    assert "not run (rather than on fewer GPUs)" in (run_dir / rf.REPORT).read_text()
