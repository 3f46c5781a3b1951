"""hf/continuous on CUDA (`pytest -m gpu`): transformers' paged cache on the GPU, on synthetic:tiny.

Two runs of `lab experiment --backends hf/batched,hf/continuous` on a mixed-length workload: with
transformers' defaults for the kernel's settings, and with CUDA graphs on and max_batch_tokens 1024
(graphs captured at load and during the warm-up, never in the timed pass). The GPU machine has
transformers 5.17 (its cache layout `group_cache_managers`), the CPU tests 5.19: this is where the
KV hook is checked against 5.17.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.accounting.breakdown import run_breakdown
from lab.accounting.kv import blocks_needed
from lab.hardware.nvml import gpu_count
from lab.records import BackendResult, KvSample, RequestRecord

pytestmark = pytest.mark.gpu

BLOCK_SIZE = 16
LENGTHS = [(11, 38), (57, 6), (150, 20), (34, 1), (33, 26), (3, 45), (9, 33), (90, 12)] * 4
SETTINGS = {"defaults": None, "graphs": "cuda_graphs=on,max_batch_tokens=1024"}


def _require_gpu():
    count, reason = gpu_count()
    if not count:
        pytest.skip(f"no NVIDIA GPU visible to NVML: {reason}")


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def gpu_run(request, tiny_model, tmp_path_factory):
    _require_gpu()
    folder = tmp_path_factory.mktemp(f"continuous-{request.param}")
    workload = folder / "mixed.jsonl"
    workload.write_text("".join(json.dumps({"prompt_tokens": p, "output_tokens": o}) + "\n" for p, o in LENGTHS))
    command = [
        sys.executable,
        "-m",
        "lab",
        "experiment",
        "--backends",
        "hf/batched,hf/continuous",
        "--model",
        str(tiny_model),
        "--device",
        "cuda",
        "--workload",
        f"file:{workload}",
        "--batch-size",
        "8",
        "--block-size",
        str(BLOCK_SIZE),
        "--kv-cache-memory",
        "256MiB",
        "--repeats",
        "1",
        "--results",
        str(folder / "results"),
    ]
    if SETTINGS[request.param]:
        command += ["--hf-continuous", SETTINGS[request.param]]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    runs = {f"{r['backend']}/{r['mode']}": r for r in rf.read_json(run_dir / rf.SUMMARY)["runs"]}
    return request.param, run_dir, runs


def _continuous_records(run_dir: Path) -> list[dict]:
    return [r for r in rf.read_jsonl(run_dir / rf.RECORDS) if r["mode"] == "continuous"]


def test_exact_token_counts_and_every_token_timed_on_cuda(gpu_run):
    _, run_dir, runs = gpu_run
    assert runs["hf/continuous"]["status"] == "ok" and runs["hf/continuous"]["device"] == "cuda"
    records = sorted(_continuous_records(run_dir), key=lambda r: r["request_id"])
    expected = [(p, o, "ok") for p, o in LENGTHS]
    assert [(r["prompt_tokens"], r["output_tokens"], r["status"]) for r in records] == expected
    for r in records:
        times = r["token_times_s"]
        assert len(times) == r["output_tokens"] and times == sorted(times)
        assert r["arrival_s"] == 0.0 <= r["scheduled_s"] <= r["first_token_s"] == times[0] and times[-1] == r["end_s"]


def test_the_settings_reached_transformers(gpu_run):
    name, _, runs = gpu_run
    engine = runs["hf/continuous"]["engine"]
    config = engine["continuous_batching_config"]
    assert config["allow_block_sharing"] is False and engine["block_size"] == BLOCK_SIZE
    if name == "graphs":
        assert config["use_cuda_graph"] == [True, True] and config["max_batch_tokens"] == 1024
    else:
        assert config["use_cuda_graph"] == [False, False]  # transformers' choice for sdpa (a mask is needed)


def test_kv_samples_from_5_17s_block_tables(gpu_run):
    _, run_dir, runs = gpu_run
    engine = runs["hf/continuous"]["engine"]
    assert engine["kv_hook_verified"], f"transformers {engine['transformers_version']}: check the KV hook first"
    samples = [s for s in rf.read_jsonl(run_dir / rf.KV_SAMPLES) if s["run"] == "hf-continuous"]
    assert samples and max(s["blocks_used"] for s in samples) > 0
    for s in samples:
        blocks = [b for _, _, b in s["per_request"]]
        assert s["blocks_used"] == sum(blocks) and s["blocks_used"] + s["blocks_free"] == s["num_blocks"]
        # 5.17 may allocate one block ahead when it schedules a prompt
        assert all(0 <= b - blocks_needed(t, BLOCK_SIZE) <= 1 for _, t, b in s["per_request"])


def _breakdown(run_dir: Path, name: str):
    part = rf.RunFolder(run_dir).part(name)
    result = BackendResult.from_dict(rf.read_json(part.result))
    samples = [KvSample.from_dict(s) for s in rf.iter_jsonl(part.kv_samples)]
    records = [RequestRecord.from_dict(r) for r in rf.iter_jsonl(part.records)]
    return run_breakdown(result, samples, records)


def test_breakdown_shares_add_to_100_percent_on_cuda(gpu_run):
    _, run_dir, _ = gpu_run
    continuous, batched = _breakdown(run_dir, "hf-continuous"), _breakdown(run_dir, "hf-batched")
    shares = continuous.shares
    assert sum(v for v in shares.values() if v is not None) == pytest.approx(1.0)
    assert shares["token_states"] > batched.shares["token_states"]


def test_the_pool_is_in_the_allocator_and_nvml(gpu_run):
    _, _, runs = gpu_run
    run = runs["hf/continuous"]
    engine, alloc = run["engine"], run["memory"]["allocator"]
    assert engine["kv_pool_bytes"] + engine["kv_reserved_bytes"] <= 256 * 2**20
    assert alloc["peak_allocated_bytes"] >= alloc["weights_allocated_bytes"] + engine["kv_pool_bytes"]
    assert run["memory"]["whole_process"]["nvml_tree_peak_mib"] * 2**20 >= alloc["peak_reserved_bytes"]


def test_vllms_pool_rule_on_the_card(tiny_model, tmp_path):
    """No --kv-cache-memory: the pool is gpu_memory_utilization x the card - what is in use, as vLLM's."""
    _require_gpu()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab",
            "run",
            "--backend",
            "hf",
            "--mode",
            "continuous",
            "--model",
            str(tiny_model),
            "--device",
            "cuda",
            "--workload",
            "seed",
            "--output-tokens",
            "8",
            "--gpu-memory-utilization",
            "0.1",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = rf.read_json(rf.PartFolder(tmp_path / "run").result)
    engine, total = result["engine"], result["environment"]["nvml"]["gpus"][0]["memory_total_mib"] * 2**20
    assert engine["kv_pool_rule"].startswith("vLLM's rule: 0.1")
    assert 0 < engine["kv_budget_bytes"] < 0.1 * total
    assert engine["kv_pool_bytes"] + engine["kv_reserved_bytes"] <= engine["kv_budget_bytes"]


def test_n_samples_forked_by_5_17_share_their_prompt_blocks(tiny_model, tmp_path):
    """A sharing point, n=2, hf/continuous alone: transformers 5.17 forks each request after its prompt
    and shares the full blocks (its BlockManager's reference counts); the pool then holds fewer blocks
    than the sequences' tables list, and every sequence has its exact length."""
    _require_gpu()
    workload = tmp_path / "mixed.jsonl"
    workload.write_text("".join(json.dumps({"prompt_tokens": p, "output_tokens": o}) + "\n" for p, o in LENGTHS))
    command = [sys.executable, "-m", "lab", "experiment", "--backends", "hf/continuous", "--n", "2"]
    command += ["--model", str(tiny_model), "--device", "cuda", "--workload", f"file:{workload}"]
    command += ["--block-size", str(BLOCK_SIZE), "--kv-cache-memory", "256MiB", "--repeats", "1"]
    proc = subprocess.run(
        [*command, "--results", str(tmp_path / "results")], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (point,) = rf.RunFolder(Path(proc.stdout.strip().splitlines()[-1])).points.iterdir()
    part = rf.RunFolder(point).part("hf-continuous")
    result = rf.read_json(part.result)
    assert result["status"] == "ok" and result["engine"]["continuous_batching_config"]["allow_block_sharing"] is True
    records = sorted(rf.iter_jsonl(part.records), key=lambda r: r["request_id"])
    assert [(r["output_tokens"], len(r["token_times_s"]), r["status"]) for r in records] == [
        (2 * o, o, "ok") for _, o in LENGTHS
    ]
    samples = list(rf.iter_jsonl(part.kv_samples))
    assert all(s["blocks_used"] <= s["held_blocks"] for s in samples if s["per_request"])
    assert all(s["blocks_used"] + s["blocks_free"] == s["num_blocks"] for s in samples)
    assert sum(s["blocks_used"] for s in samples) < sum(s["held_blocks"] for s in samples)
