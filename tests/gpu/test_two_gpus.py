"""`--tensor-parallel-size 2` on two GPUs (`pytest -m gpu` on a host with at least two): transformers as
two torchrun ranks (NCCL), vLLM with a worker per GPU, on synthetic:tiny-tp; memory, KV pool and
energy per GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.hardware.nvml import gpu_count
from lab.models.build import build_model

pytestmark = pytest.mark.gpu

OUTPUT_TOKENS = 16
REQUESTS = 8


@pytest.fixture(scope="module")
def two_gpu_run(tmp_path_factory):
    count, reason = gpu_count()
    if count < 2:
        pytest.skip(f"needs 2 GPUs for tensor parallelism: NVML sees {count} ({reason or 'one GPU'})")
    model = build_model("synthetic:tiny-tp", tmp_path_factory.mktemp("cache"))
    results = tmp_path_factory.mktemp("results")
    options = f"--device cuda --tensor-parallel-size 2 --num-requests {REQUESTS} --output-tokens {OUTPUT_TOKENS}"
    argv = [sys.executable, "-m", "lab", "experiment", *options.split(), "--batch-size", "4", "--kv-cache-memory"]
    argv += ["1GiB", "--model", str(model), "--backends", "hf/batched,vllm", "--results", str(results)]
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_GPUS", "CUDA_VISIBLE_DEVICES")}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env | {"LAB_GPUS": "0,1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    return run_dir, {f"{r['backend']}/{r['mode']}": r for r in rf.read_json(run_dir / rf.SUMMARY)["runs"]}


def test_both_backends_run_on_two_gpus_with_every_token(two_gpu_run):
    _, runs = two_gpu_run
    assert {label: r["status"] for label, r in runs.items()} == {"hf/batched": "ok", "vllm/offline": "ok"}
    for r in runs.values():
        assert r["metrics"]["output_tokens"] == REQUESTS * OUTPUT_TOKENS
        assert r["engine"]["tensor_parallel_size"] == 2


def test_each_backend_holds_memory_on_both_gpus(two_gpu_run):
    _, runs = two_gpu_run
    for label, r in runs.items():
        assert r["memory"]["gpus_used"] == [0, 1], label
        per_gpu = r["memory"]["per_gpu"]["whole_process"]
        assert all(per_gpu[g]["nvml_tree_peak_mib"] > 0 for g in ("0", "1")), (label, per_gpu)
        total = r["memory"]["whole_process"]["nvml_tree_peak_mib"]
        assert total >= max(per_gpu[g]["nvml_tree_peak_mib"] for g in ("0", "1")), label


def test_vllm_workers_one_per_gpu_are_children_in_the_watched_tree(two_gpu_run):
    run_dir, _ = two_gpu_run
    root = int((run_dir / rf.RUNS / "vllm-offline" / rf.PID).read_text())
    samples = [s for s in rf.read_jsonl(run_dir / rf.TIMELINE) if s["run"] == "vllm-offline"]
    on_gpu: dict[int, set[int]] = {0: set(), 1: set()}
    for s in samples:
        for g in s["gpus"]:
            if g["gpu"] in on_gpu:
                on_gpu[g["gpu"]] |= {int(pid) for pid, mib in g["proc_gpu_mib"].items() if mib}
    assert on_gpu.get(0) and on_gpu.get(1) and not on_gpu[0] & on_gpu[1], on_gpu  # a worker per GPU
    assert root not in on_gpu[0] | on_gpu[1], "the workers are children of the engine core, not the root"


def test_vllm_gives_each_gpu_the_pool_asked_for(two_gpu_run):
    _, runs = two_gpu_run
    engine = runs["vllm/offline"]["engine"]
    assert engine["kv_heads_per_gpu"] == 2
    assert engine["kv_pool_bytes_total"] == 2 * engine["kv_pool_bytes"]
    assert abs(engine["kv_pool_bytes"] - 2**30) <= 0.05 * 2**30  # --kv-cache-memory is per GPU


def test_energy_per_output_token_comes_from_both_gpus_counters(two_gpu_run):
    run_dir, runs = two_gpu_run
    for label, r in runs.items():
        energy = r["energy"]
        assert energy["available"] and energy["gpus"] == [0, 1], (label, energy)
        assert energy["method"] == "nvml energy counter", label
        assert all(g["energy_j"] > 0 for g in energy["per_gpu"]), label
        assert energy["j_per_output_token"] == pytest.approx(energy["energy_j"] / (REQUESTS * OUTPUT_TOKENS))
    report = (run_dir / rf.REPORT).read_text()
    assert "## Memory per GPU" in report and "J per output token" in report
    assert (run_dir / "gpu_memory.png").is_file()
