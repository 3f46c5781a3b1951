"""`lab capacity` on synthetic:tiny with a budget of ten vLLM blocks: arithmetic by hand, then measured.

Two vLLM engine starts (at the budget, and the curve's point at max_num_seqs 2) and five transformers
processes, each in its own process as `lab experiment` runs them. synthetic:tiny stores 1,024 KV
bytes per token (2 x 2 layers x 1 KV head x 64 x 4 B), so the budget of 10 x 32 x 1,024 B holds 320
token slots; vLLM makes it 10 blocks of 32, 9 usable.
"""

from __future__ import annotations

import json

import pytest

from lab import run_folder as rf
from lab.config import CapacitySpec, EngineSettings
from lab.experiments.capacity import run_capacity
from lab.launchers.native import NativeLauncher

pytestmark = [pytest.mark.engine, pytest.mark.vllm_cpu]

BUDGET_BYTES = 10 * 32 * 1024
# Every request ends at 59 stored tokens (2 blocks); prompts of 20-50 tokens.
LENGTHS = [(40, 20), (30, 30), (50, 10), (20, 40)] * 2


@pytest.fixture(scope="module")
def capacity_run(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("capacity")
    workload = folder / "work.jsonl"
    workload.write_text("".join(json.dumps({"prompt_tokens": p, "output_tokens": o}) + "\n" for p, o in LENGTHS))
    engine = EngineSettings(
        model=str(tiny_model), workload=f"file:{workload}", device="cpu", block_size=32, max_model_len=256
    )
    spec = CapacitySpec(engine, BUDGET_BYTES, max_len=128, concurrency=(2,), collect=False)
    results = folder / "results"
    finished = run_capacity(spec, results, NativeLauncher(tiny_model.parent.parent), lambda _: None)
    assert finished.failed == [] and finished.runs >= 2
    return results, finished.path, rf.read_json(finished.path / rf.CAPACITY_JSON)


def test_the_run_folder_is_complete_and_final(capacity_run):
    results, run_dir, _ = capacity_run
    assert run_dir.parent == results and not run_dir.name.startswith(rf.TMP_PREFIX)
    assert not [p for p in results.iterdir() if p.name.startswith(rf.TMP_PREFIX)]
    for name in (rf.MANIFEST, rf.CAPACITY_JSON, rf.CAPACITY_MD):
        assert (run_dir / name).is_file()
    assert rf.read_json(run_dir / rf.MANIFEST)["kind"] == "capacity"
    assert "Orca (Max) 7.00" in (run_dir / rf.CAPACITY_MD).read_text()
    assert "![Throughput against concurrency](capacity.png)" in (run_dir / rf.CAPACITY_MD).read_text()
    assert (run_dir / "capacity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_arithmetic_by_hand(capacity_run):
    arithmetic = capacity_run[2]["arithmetic"]
    assert arithmetic["static"]["concurrency"] == 2  # 320 slots // 128 reserved per request
    # Batches of 3 need 3 x (50 + 30 - 1) and 3 x (40 + 40 - 1) = 237 slots; a batch of 4, 4 x 89 = 356 > 320.
    assert arithmetic["padded"]["concurrency"] == 3
    # First step: prompts of 2, 1, 2, 1, 2, 1 blocks are admitted before the 7th (2 blocks) finds 0 free.
    assert arithmetic["paged"]["concurrency"] == 6
    assert arithmetic["paged"]["num_blocks"] == 10


def test_measured_points_fit_the_budget(capacity_run):
    points = {p["point"]: p for p in capacity_run[2]["measured"]}
    assert all(p["status"] == "ok" for p in points.values()), [p["error"] for p in points.values()]
    batched = points["hf-batched-b3"]
    assert batched["max_cache_bytes"] == 3 * 79 * 1024 <= BUDGET_BYTES
    assert points["hf-static-cache-b2"]["max_cache_bytes"] <= BUDGET_BYTES
    vllm = points["vllm-offline-budget"]
    assert vllm["kv_pool_bytes"] == BUDGET_BYTES and vllm["num_blocks"] == 10
    assert all(p["output_tokens_per_s"] > 0 for p in points.values())


def test_vllm_runs_more_requests_at_once_and_the_simulation_predicts_it(capacity_run):
    data = capacity_run[2]
    vllm = next(p for p in data["measured"] if p["point"] == "vllm-offline-budget")
    simulated = data["arithmetic"]["paged_engine_limits"]
    assert (
        vllm["max_running"] > data["arithmetic"]["padded"]["concurrency"] > data["arithmetic"]["static"]["concurrency"]
    )
    assert abs(vllm["max_running"] - simulated["concurrency"]) <= 1
    assert vllm["mean_running"] == pytest.approx(simulated["mean_running"], rel=0.15)


def test_the_curve_has_points_for_vllm_limited_by_max_num_seqs(capacity_run):
    data = capacity_run[2]
    curve = {(r["approach"], r["concurrency"]): r for r in data["curve"]}
    assert set(curve) == {("hf/batched", 2), ("hf/batched", 3), ("vllm/offline", 2)}
    assert all(r["status"] == "ok" and r["output_tokens_per_s"] > 0 for r in curve.values())
    vllm = next(p for p in data["measured"] if p["point"] == "vllm-offline-c2")
    assert vllm["max_num_seqs"] == 2 and vllm["max_running"] <= 2  # the engine honoured the setting
    assert 1 < curve[("vllm/offline", 2)]["mean_running"] <= 2


def test_hf_continuous_runs_in_the_same_pool(capacity_run):
    point = next(p for p in capacity_run[2]["measured"] if p["point"] == "hf-continuous-budget")
    assert point["status"] == "ok" and point["requests"] == len(LENGTHS)
    assert point["kv_pool_bytes"] == (10 - 2) * 32 * 1024  # transformers' two reserved blocks in the same budget
    assert point["max_running"] > capacity_run[2]["arithmetic"]["padded"]["concurrency"]
