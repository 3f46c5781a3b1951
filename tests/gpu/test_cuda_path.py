"""The CUDA path, on an NVIDIA host (`make test-gpu` or `pytest -m gpu`): the real engines on synthetic:tiny."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf
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
            "2",
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


def test_every_backend_has_energy_per_output_token_on_its_one_gpu(cuda_run):
    _, runs = cuda_run
    for label, run in runs.items():
        energy = run["energy"]
        assert energy["available"] and len(energy["gpus"]) == 1, (label, energy)
        assert energy["method"] == "nvml energy counter", label
        assert energy["energy_j"] > 0 and energy["j_per_output_token"] > 0, label
