"""hf/continuous on the real transformers engine (continuous batching on the CPU) and synthetic:tiny: no fakes.

synthetic:tiny stores 1,024 KV bytes per token (2 x 2 layers x 1 KV head x 64 x 4 B): a block of 32
tokens is 32 KiB. The module's pool is 64 blocks' worth of budget, 62 usable (transformers keeps two
reserved blocks in the same memory). Its attention mask caps max_batch_tokens at 128, so the 150-token
prompt is prefilled in two chunks. Outputs differ, so requests finish while others run.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.accounting.breakdown import run_breakdown
from lab.accounting.kv import blocks_needed
from lab.accounting.paged import forward_weights
from lab.backends.base import Clock
from lab.backends.hf_continuous import HfContinuousBackend
from lab.backends.hf_continuous_hooks import VERIFIED_TRANSFORMERS
from lab.config import EngineSettings, RunSpec
from lab.continuous_settings import parse_continuous_settings
from lab.errors import LabInputError
from lab.experiments.merge import summarize_run
from lab.records import BackendResult, KvSample, RequestRecord
from lab.report.run_view import RunPart
from lab.runner import run_backend
from lab.workloads import Request

pytestmark = pytest.mark.engine

BLOCK_SIZE = 32
BLOCK_BYTES = 2 * 2 * BLOCK_SIZE * 1 * 64 * 4
BUDGET_BYTES = 64 * BLOCK_BYTES
# (prompt tokens, output tokens); one output of 1 token, one prompt longer than a step's 128 tokens.
LENGTHS = [(11, 38), (57, 6), (150, 20), (34, 1), (33, 26), (3, 45), (9, 33), (90, 12)]


def _engine(model: Path, workload: str = "seed", **settings) -> EngineSettings:
    return EngineSettings(
        model=str(model), workload=workload, device="cpu", block_size=BLOCK_SIZE, max_model_len=512, **settings
    )


def _requests(lengths=LENGTHS) -> list[Request]:
    rng = random.Random(0)
    return [Request(i, tuple(rng.randrange(3, 300) for _ in range(p)), o) for i, (p, o) in enumerate(lengths)]


def _loaded(model: Path, **settings) -> HfContinuousBackend:
    spec = RunSpec("hf", "continuous", _engine(model, **settings))
    backend = HfContinuousBackend(spec, str(model), "cpu", "float32")
    backend.load()
    return backend


def _timed(backend: HfContinuousBackend, requests: list[Request]):
    backend.generate(backend.warmup_requests(requests), Clock())
    clock = Clock()
    clock.start()
    return backend.generate(requests, clock), backend.kv_samples()


@pytest.fixture(scope="module")
def backend(tiny_model):
    loaded = _loaded(tiny_model, kv_cache_memory_bytes=BUDGET_BYTES)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def timed_run(backend):
    manager = backend._manager
    records, samples = _timed(backend, _requests())
    return records, samples, manager


def test_output_lengths_exact_on_mixed_lengths(timed_run):
    records, _, _ = timed_run
    assert [(r.prompt_tokens, r.output_tokens) for r in records] == LENGTHS
    assert all(r.status == "ok" for r in records), [r.error for r in records]


def test_every_token_is_timed_on_the_runner_clock(timed_run):
    records, samples, _ = timed_run
    last_step = samples[-1].t_s
    for r in records:
        times = r.token_times_s
        assert len(times) == r.output_tokens and times == sorted(times)
        assert r.arrival_s == 0.0 < times[0] == r.first_token_s and times[-1] == r.end_s <= last_step
        assert r.ttft_s == r.first_token_s and r.queue_s + r.service_s == pytest.approx(r.e2e_s)


def test_queueing_shows_as_arrival_then_first_scheduled_then_first_token(timed_run):
    records, _, _ = timed_run
    for r in records:
        assert r.arrival_s == 0.0 <= r.submitted_s <= r.scheduled_s < r.first_token_s
    # 128 tokens a step: the first prompts fill the first step, so later ones wait for a later step.
    assert max(r.scheduled_s for r in records) > min(r.first_token_s for r in records)
    assert max(r.queue_s for r in records) > min(r.ttft_s for r in records)


def test_kv_samples_read_block_tables_that_match_the_arithmetic(timed_run):
    _, samples, _ = timed_run
    assert len(samples) > max(o for _, o in LENGTHS)  # one per engine step
    for s in samples:
        blocks = [b for _, _, b in s.per_request]
        assert s.blocks_used == sum(blocks) and s.blocks_used + s.blocks_free == s.num_blocks == 62
        # Exact in transformers 5.18+ (this environment's 5.19); 5.17 may allocate a block ahead (tests/gpu).
        assert blocks == [blocks_needed(t, BLOCK_SIZE) for _, t, _ in s.per_request]
        assert s.tokens_stored == sum(t for _, t, _ in s.per_request) and s.running == len(blocks)
    assert max(s.blocks_used for s in samples) > 0 and samples[-1].blocks_used == 0


def test_a_request_stores_prompt_plus_generated_minus_one(timed_run):
    records, samples, _ = timed_run
    most = {}
    for s in samples:
        for request_id, tokens, _ in s.per_request:
            most[request_id] = max(most.get(request_id, 0), tokens)
    # Seen last after its next-to-last token: P + (O - 1) - 1 stored. A 1-token request is gone after its prefill.
    expected = {r.request_id: r.prompt_tokens + r.output_tokens - 2 for r in records if r.output_tokens > 1}
    assert {k: v for k, v in most.items() if k in expected} == expected


def test_the_pool_is_the_budget_in_vllms_blocks(backend, timed_run):
    info = backend.engine_info()
    assert info["kv_bytes_per_block"] == info["kv_bytes_per_block_lab"] == BLOCK_BYTES
    assert info["num_blocks"] == info["num_blocks_requested"] == 64 - 2
    assert info["kv_pool_bytes"] + info["kv_reserved_bytes"] == BUDGET_BYTES
    assert info["continuous_batching_config"]["allow_block_sharing"] is False
    assert info["continuous_batching_config"]["max_batch_tokens"] == 128
    assert info["steps_last_pass"] == len(timed_run[1]) and info["step_tap_error"] is None


def test_one_manager_serves_the_warm_up_and_the_timed_passes(backend, timed_run):
    _, _, manager_before = timed_run
    records, _ = _timed(backend, _requests()[:3])
    assert backend._manager is manager_before and manager_before.is_running()
    assert all(r.status == "ok" for r in records)


def test_the_kv_hook_is_verified_on_this_transformers(backend):
    """Pinned: the hook reads private objects; a new transformers needs this module's tests and a look at its source."""
    import transformers

    assert transformers.__version__ in VERIFIED_TRANSFORMERS
    layout = {"5.17.0": "group_cache_managers", "5.19.0": "cache_allocators"}[transformers.__version__]
    assert backend.engine_info()["kv_hook_verified"] and backend.engine_info()["cache_layout"] == layout


def test_output_lengths_exact_when_the_pool_cannot_hold_every_request_at_once(tiny_model):
    # 10 blocks' budget, 8 usable: the requests need 22 blocks at their longest, at most 6 each.
    small = _loaded(tiny_model, kv_cache_memory_bytes=10 * BLOCK_BYTES)
    try:
        records, samples = _timed(small, _requests())
    finally:
        small.close()
    assert [(r.prompt_tokens, r.output_tokens, r.status) for r in records] == [(p, o, "ok") for p, o in LENGTHS]
    assert max(s.waiting for s in samples) > 0 and max(s.blocks_used for s in samples) <= 8
    # Every token keeps a time, also for a request transformers recomputed (it restarts its timestamps then).
    for r in records:
        times = r.token_times_s
        assert len(times) == r.output_tokens and times == sorted(times) and r.scheduled_s <= times[0]


def test_a_request_larger_than_the_pool_is_a_clear_error(tiny_model):
    small = _loaded(tiny_model, kv_cache_memory_bytes=5 * BLOCK_BYTES)  # 3 usable blocks: 96 tokens
    try:
        with pytest.raises(LabInputError, match="needs 4 blocks of 32 tokens and the KV pool has 3"):
            small.generate(_requests([(90, 12)]), Clock())
    finally:
        small.close()


def test_a_pool_transformers_cannot_fit_is_a_clear_error(tiny_model):
    # A 1 GiB pool of tiny tokens with 65,536 tokens a step asks for a 256 GiB attention mask.
    settings = parse_continuous_settings("max_batch_tokens=65536")
    with pytest.raises(LabInputError, match="transformers cannot fit a pool of 32,766 blocks"):
        _loaded(tiny_model, kv_cache_memory_bytes=1 << 30, hf_continuous=settings)


@pytest.fixture(scope="module")
def run_folder(tiny_model, tmp_path_factory):
    """hf/batched and hf/continuous through the runner on the same mixed workload, as `lab experiment` runs them."""
    folder = tmp_path_factory.mktemp("continuous-run")
    workload = folder / "mixed.jsonl"
    workload.write_text("".join(json.dumps({"prompt_tokens": p, "output_tokens": o}) + "\n" for p, o in LENGTHS))
    engine = _engine(tiny_model, f"file:{workload}", batch_size=4, kv_cache_memory_bytes=BUDGET_BYTES)
    parts = {}
    for mode in ("batched", "continuous"):
        spec = RunSpec("hf", mode, engine)
        part = rf.RunFolder(folder).part(spec.name)
        result = run_backend(spec, part.path)
        assert result.ok, result.error
        result = BackendResult.from_dict(rf.read_json(part.result))
        records = [RequestRecord.from_dict(r) for r in rf.iter_jsonl(part.records)]
        samples = [KvSample.from_dict(s) for s in rf.iter_jsonl(part.kv_samples)]
        parts[spec.label] = RunPart(summarize_run(result, records, []), result, records, samples)
    return parts


def test_breakdown_shares_add_to_100_percent_and_match_the_tables(run_folder):
    entries = {label: run_breakdown(p.result, p.kv_samples, p.records) for label, p in run_folder.items()}
    entry = entries["hf/continuous"]
    shares = entry.shares
    assert sum(v for v in shares.values() if v is not None) == pytest.approx(1.0)
    assert shares["external_fragmentation"] == 0.0 and shares["other"] == 0.0
    # Paged: a running request leaves at most block_size - 1 slots of its last block empty.
    assert sum(entry.budget_shares.values()) == pytest.approx(1.0)  # of D: the pool's free blocks included
    # Paged: a running request leaves at most block_size - 1 slots of its last block empty.
    samples = run_folder["hf/continuous"].kv_samples
    running_s = sum(s.running * w for s, w in zip(samples, forward_weights([x.t_s for x in samples])))
    empty_s = entry.slot_seconds["reservation"] + entry.slot_seconds["internal_fragmentation"]
    assert 0 < empty_s <= (BLOCK_SIZE - 1) * running_s
    assert shares["token_states"] > entries["hf/batched"].shares["token_states"]  # no padding, no finished sequences
    tables = entry.checks["tables"]
    assert tables["agree"] == tables["total"] > 0 and tables["pool_matches_tables"]
    assert entry.checks["residual"]["ok"] and entry.checks["pool"]["steps_with_residual"] == 0
    assert 0 < entry.pool_occupancy_mean < 1


def test_the_paging_observation_splits_throughput_into_memory_and_kernels(run_folder):
    from lab.report.paging_observation import paging_inside_transformers, step_profile

    class View:  # what the observation reads of a run folder: each backend/mode's own files
        def part(self, run):
            return run_folder[run.label]

    ok = {label: p.summary for label, p in run_folder.items()}
    entries = [run_breakdown(p.result, p.kv_samples, p.records) for p in run_folder.values()]
    _, verdict, evidence = paging_inside_transformers(View(), ok, entries)
    assert verdict in ("holds", "does not hold")
    c, b = step_profile(View(), ok["hf/continuous"]), step_profile(View(), ok["hf/batched"])
    ratio = ok["hf/continuous"].metric("output_tokens_per_s") / ok["hf/batched"].metric("output_tokens_per_s")
    assert (c.tokens_per_step / b.tokens_per_step) * (c.steps_per_s / b.steps_per_s) == pytest.approx(ratio)
    assert f"({ratio:.2f}x)" in evidence and "comes mostly from" in evidence


def test_lab_experiment_runs_hf_continuous_on_a_mixed_workload(tiny_model, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab",
            "experiment",
            "--backends",
            "hf/continuous",
            "--model",
            str(tiny_model),
            "--device",
            "cpu",
            "--workload",
            "sharegpt-like",
            "--num-requests",
            "8",
            "--kv-cache-memory",
            "8MiB",
            "--repeats",
            "1",
            "--results",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = rf.RunFolder(Path(proc.stdout.strip().splitlines()[-1]))
    records = rf.read_jsonl(folder.records)
    manifest = rf.read_json(folder.manifest)
    assert len(records) == 8 and all(r["status"] == "ok" for r in records)
    assert len({r["output_tokens"] for r in records}) > 1  # the workload's own, mixed lengths
    assert all(len(r["token_times_s"]) == r["output_tokens"] for r in records)
    assert rf.read_jsonl(folder.kv_samples)
    assert manifest["config"]["engine"]["hf_continuous"]["attn"] == "sdpa"
    report = folder.report.read_text()
    assert "| hf/continuous" in report and "- hf/continuous: attention `" in report  # 5.17 names it paged|sdpa
