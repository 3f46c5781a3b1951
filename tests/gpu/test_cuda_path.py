"""The CUDA path, on an NVIDIA host (`make test-gpu` or `pytest -m gpu`): the real engines on synthetic:tiny.

One experiment with every backend/mode on the seed prompts (mixed lengths: 2 to 170 tokens) in
batches of 3 (the last batch padded for the static cache), three timed passes: the same properties
as the CPU tests, on CUDA, where transformers compiles its static-cache decode step and vLLM
schedules asynchronously.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.accounting.energy import COUNTER, SHORT_PASS_INTEGRAL
from lab.hardware.nvml import gpu_count

pytestmark = pytest.mark.gpu


def _require_gpu():
    count, reason = gpu_count()
    if not count:
        pytest.skip(f"no NVIDIA GPU visible to NVML: {reason}")


@pytest.fixture(scope="module")
def cuda_run(tiny_model, tmp_path_factory):
    _require_gpu()
    results = tmp_path_factory.mktemp("results")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab",
            "experiment",
            "--model",
            str(tiny_model),
            "--device",
            "cuda",
            "--output-tokens",
            "16",
            "--batch-size",
            "3",
            "--repeats",
            "3",
            "--kv-cache-memory",
            "1GiB",
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    return run_dir, {f"{r['backend']}/{r['mode']}": r for r in rf.read_json(run_dir / rf.SUMMARY)["runs"]}


def records_of(run_dir: Path, label: str) -> list[dict]:
    backend, mode = label.split("/")
    return [r for r in rf.read_jsonl(run_dir / rf.RECORDS) if (r["backend"], r["mode"]) == (backend, mode)]


def test_every_mode_runs_on_cuda(cuda_run):
    _, runs = cuda_run
    assert {name: r["status"] for name, r in runs.items()} == {name: "ok" for name in runs}
    assert all(r["device"] == "cuda" for r in runs.values())


def test_nvml_sees_the_vllm_engine_core_child_process(cuda_run):
    """vLLM's engine core is a child process: its GPU memory must be attributed to the run's tree."""
    run_dir, runs = cuda_run
    samples = [s for s in rf.read_jsonl(run_dir / rf.TIMELINE) if s["run"] == "vllm-offline"]
    assert samples and {s["source"] for s in samples} == {"nvml"}
    root_pid = int((run_dir / rf.RUNS / "vllm-offline" / "pid").read_text())
    using_gpu = {int(pid) for s in samples for pid, mib in (s.get("proc_gpu_mib") or {}).items() if mib}
    assert using_gpu and using_gpu != {root_pid}, "the GPU memory should sit in a child process of the run"
    # the pool it was given (1 GiB) is in the tree's NVML figure
    assert runs["vllm/offline"]["memory"]["whole_process"]["nvml_tree_peak_mib"] > 1024


def test_torch_allocator_figures_for_transformers(cuda_run):
    _, runs = cuda_run
    alloc = runs["hf/batched"]["memory"]["allocator"]
    assert alloc["source"] == "torch.cuda"
    assert alloc["peak_allocated_bytes"] > alloc["weights_allocated_bytes"] > 0
    assert alloc["peak_reserved_bytes"] >= alloc["peak_allocated_bytes"]
    nvml = runs["hf/batched"]["memory"]["whole_process"]["nvml_tree_peak_mib"]
    assert nvml * 2**20 >= alloc["peak_reserved_bytes"], "NVML sees at least what the allocator reserved"
    passes = runs["hf/batched"]["passes"]  # each timed pass keeps its own peaks (reset before it)
    assert [p["memory"]["source"] for p in passes] == ["torch.cuda"] * 3 and passes[-1]["memory"] == alloc
    assert all(p["memory"]["peak_allocated_bytes"] > alloc["weights_allocated_bytes"] for p in passes)
    assert all(p["memory"] is None for p in runs["vllm/offline"]["passes"])  # its allocator is in the engine core


def test_every_timed_pass_compiled_nothing_and_static_cache_compiled_in_the_warm_up(cuda_run):
    run_dir, runs = cuda_run
    for label, run in runs.items():
        assert len(run["passes"]) == 3, label
        assert [p["invalid"] for p in run["passes"]] == [None] * 3, (label, run["passes"])
        assert all(p["compile"] is not None and p["compile"]["frames"] == 0 for p in run["passes"]), label
        assert all(r["pass_invalid"] is None for r in records_of(run_dir, label))
    static = runs["hf/static-cache"]
    assert static["engine"]["torch_compile"]["compiled"] is True  # transformers compiles it on CUDA
    assert static["compile"]["warmup"]["frames"] > 0
    assert runs["hf/static-cache-eager"]["engine"]["torch_compile"]["compiled"] is False


def test_static_cache_is_faster_than_one_request_at_a_time_on_mixed_lengths(cuda_run):
    """What a recompile per batch shape inside the timed pass made false (issue 13: 7.5 against 13.9)."""
    _, runs = cuda_run
    static, sequential = (runs[k]["metrics"]["output_tokens_per_s"] for k in ("hf/static-cache", "hf/sequential"))
    assert static > sequential


def test_sequential_requests_wait_for_the_earlier_ones_on_cuda(cuda_run):
    run_dir, _ = cuda_run
    records = records_of(run_dir, "hf/sequential")
    for index in range(3):
        *earlier, last = sorted((r for r in records if r["pass_index"] == index), key=lambda r: r["request_id"])
        assert last["ttft_s"] >= sum(r["service_s"] for r in earlier)


def test_vllm_with_async_scheduling_records_every_token_and_its_first_scheduling(cuda_run):
    run_dir, runs = cuda_run
    assert runs["vllm/offline"]["engine"]["async_scheduling"] is True  # vLLM 0.26's default on CUDA
    for r in records_of(run_dir, "vllm/offline"):
        assert r["status"] == "ok" and r["output_tokens"] == 16 and len(r["token_times_s"]) == 16
        assert r["arrival_s"] == 0.0 < r["scheduled_s"] <= r["first_token_s"] <= r["end_s"]
        assert r["queue_s"] + r["service_s"] == pytest.approx(r["e2e_s"])


def test_a_timed_pass_that_compiled_is_marked_invalid_on_cuda(tiny_model, tmp_path):
    """No warm-up: transformers compiles the static-cache decode step (inductor, CUDA graphs) in the
    first timed pass, which is marked and left out of the medians; the second compiles nothing."""
    _require_gpu()
    proc = subprocess.run(
        [sys.executable, "-m", "lab", "experiment", "--model", str(tiny_model), "--device", "cuda",
         "--backends", "hf/static-cache", "--warmup", "none", "--repeats", "2", "--output-tokens", "8",
         "--batch-size", "3", "--no-collector", "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    (run,) = rf.read_json(run_dir / rf.SUMMARY)["runs"]
    first, second = run["passes"]
    assert first["compile"]["frames"] > 0 and "torch.compile ran" in first["invalid"]
    assert second["compile"]["frames"] == 0 and second["invalid"] is None
    assert {r["pass_invalid"] is None for r in rf.read_jsonl(run_dir / rf.RECORDS) if r["pass_index"] == 1} == {True}
    report = (run_dir / rf.REPORT).read_text()
    compile_row = next(line for line in report.split("## Compilation")[1].splitlines() if line.startswith("| hf/"))
    assert compile_row.rstrip(" |").endswith("| 0")  # pass 0 invalid


def test_every_backend_has_energy_per_output_token_on_its_one_gpu(cuda_run):
    _, runs = cuda_run
    for label, run in runs.items():
        energy = run["energy"]
        assert energy["available"] and len(energy["gpus"]) == 1, (label, energy)
        # the counter, or where a pass is shorter than two of its updates (vLLM's tiny pass), the
        # sampled power integrated instead (lab/accounting/energy.py)
        assert energy["method"] in (COUNTER, SHORT_PASS_INTEGRAL), (label, energy)
        assert energy["energy_j"] > 0 and energy["j_per_output_token"] > 0, label
