"""The KV breakdown and the capacity curve on CUDA (`pytest -m gpu`), where vLLM schedules asynchronously.

One `lab experiment` on synthetic:tiny with a mixed-length workload and a pool sized from it
(`--kv-cache-memory workload:0.5`, so the workload fills it): vLLM's breakdown from its scheduler's
step facts, with async scheduling's look-ahead slots, must leave a residual of at most 1% and add to
100% in both views. Then `lab capacity` with one curve point (max_num_seqs 2): the curve has points
for vLLM. Two vLLM engine starts and one more for the curve (about 1 minute each on an H100).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.accounting.breakdown import run_breakdown
from lab.hardware.nvml import gpu_count
from lab.metrics import passes_of
from lab.records import BackendResult, KvSample, RequestRecord

pytestmark = pytest.mark.gpu

BLOCK_SIZE = 16
LENGTHS = [(11, 38), (57, 6), (150, 20), (34, 1), (33, 26), (3, 45), (9, 33), (90, 12)] * 4
RUNS = ("hf/batched", "hf/continuous", "vllm/offline")


def _require_gpu():
    count, reason = gpu_count()
    if not count:
        pytest.skip(f"no NVIDIA GPU visible to NVML: {reason}")


def _workload(folder: Path) -> Path:
    path = folder / "mixed.jsonl"
    path.write_text("".join(json.dumps({"prompt_tokens": p, "output_tokens": o}) + "\n" for p, o in LENGTHS))
    return path


def _lab(*args: str) -> Path:
    proc = subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory) -> Path:
    _require_gpu()
    folder = tmp_path_factory.mktemp("kv-gpu")
    workload = f"file:{_workload(folder)}"
    return _lab("experiment", "--backends", ",".join(RUNS), "--model", str(tiny_model), "--device", "cuda",
                "--workload", workload, "--batch-size", "8", "--block-size", str(BLOCK_SIZE), "--max-model-len",
                "256", "--kv-cache-memory", "workload:0.5", "--results", str(folder / "results"))  # fmt: skip


def _entry(run_dir: Path, label: str):
    part = rf.RunFolder(run_dir).part(label.replace("/", "-"))
    result = BackendResult.from_dict(rf.read_json(part.result))
    samples = [KvSample.from_dict(s) for s in rf.iter_jsonl(part.kv_samples)]
    every_pass = [RequestRecord.from_dict(r) for r in rf.iter_jsonl(part.records)]
    records = passes_of(every_pass)[-1]  # the KV samples are the last timed pass's (--repeats 3 by default)
    assert result.ok and sorted((r.prompt_tokens, r.output_tokens) for r in records) == sorted(LENGTHS)
    return result, samples, run_breakdown(result, samples, records)


def test_vllm_schedules_asynchronously_and_its_look_ahead_is_reserved_not_residual(run_dir):
    result, samples, entry = _entry(run_dir, "vllm/offline")
    assert result.engine["async_scheduling"] is True and result.engine["step_facts"]
    assert result.engine["step_facts_verified"], f"vLLM {result.engine['vllm_version']}: check its step facts"
    assert sum(s.lookahead_slots for s in samples) > 0  # slots allocated one step ahead
    assert entry.method.startswith("the engine's own per-step facts")
    assert entry.checks["residual"]["share_of_held"] <= 0.01 and entry.checks["residual"]["ok"]


@pytest.mark.parametrize("label", ["vllm/offline", "hf/continuous"])
def test_paged_shares_add_to_100_percent_in_both_views_on_cuda(run_dir, label):
    _, _, entry = _entry(run_dir, label)
    assert sum(entry.budget_shares.values()) == pytest.approx(1.0)
    assert sum(entry.shares.values()) == pytest.approx(1.0)
    assert entry.checks["residual"]["ok"], entry.checks
    assert entry.saturation["saturated"], entry.saturation


def test_hf_allocator_slack_is_reported_apart_not_as_kv(run_dir):
    _, _, entry = _entry(run_dir, "hf/batched")
    assert entry.allocator_slack_bytes is not None and entry.allocator_slack_bytes >= 0
    # external fragmentation is only the allocator's rounding of the K/V tensors, a sliver of the cache
    assert entry.shares["external_fragmentation"] < 0.01
    report = (run_dir / rf.REPORT).read_text()
    assert "allocator slack MiB (torch, not KV)" in report and "FAILS" not in report


def test_the_capacity_curve_has_points_for_vllm_on_cuda(tiny_model, tmp_path):
    _require_gpu()
    run_dir = _lab("capacity", "--model", str(tiny_model), "--device", "cuda", "--workload",
                   f"file:{_workload(tmp_path)}", "--block-size", str(BLOCK_SIZE), "--max-model-len", "256",
                   "--kv-budget", "4MiB", "--max-len", "256", "--concurrency", "2", "--no-collector",
                   "--results", str(tmp_path / "results"))  # fmt: skip
    data = rf.read_json(run_dir / rf.CAPACITY_JSON)
    vllm = [r for r in data["curve"] if r["approach"] == "vllm/offline"]
    assert [(r["concurrency"], r["status"]) for r in vllm] == [(2, "ok")]
    assert 1 < vllm[0]["mean_running"] <= 2 and vllm[0]["output_tokens_per_s"] > 0
    assert (run_dir / "capacity.png").is_file()
