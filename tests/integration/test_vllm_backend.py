"""The vLLM backend on the real vllm-cpu engine and the synthetic:tiny model (no fakes).

One engine start for the whole module (about 30-80 s on 2 cores): the `timed_run` fixture runs a
warm-up and then a timed pass of requests with mixed prompt and output lengths; the tests check
what that pass recorded.
"""

from __future__ import annotations

import random

import pytest

from lab.backends.base import Clock
from lab.backends.vllm import DEFAULT_CPU_KV_CACHE_BYTES, VllmBackend
from lab.backends.vllm_config import check_cpu_block_size
from lab.backends.vllm_step_facts import FACTS_KEY, SCHEDULER_CLS, take_step_facts
from lab.config import EngineSettings, RunSpec
from lab.errors import LabInputError
from lab.pass_records import CompileCount
from lab.workloads import Request

BLOCK_SIZE = 32  # vLLM 0.32's CPU attention takes multiples of 32 only
KV_CACHE_BYTES = 64 << 20
# synthetic:tiny: 2 layers, 1 KV head, head_dim 64, float32 -> 2 * 2 * 32 * 1 * 64 * 4 bytes a block.
TINY_KV_BYTES_PER_BLOCK = 2 * 2 * BLOCK_SIZE * 1 * 64 * 4
NUM_REQUESTS = 24


def _spec(model: str, **settings) -> RunSpec:
    return RunSpec("vllm", "offline", EngineSettings(model=model, workload="seed", **settings))


def _requests() -> list[Request]:
    """Prompts of 1-60 tokens and outputs of 1-40: some requests end while others still run."""
    rng = random.Random(0)
    return [
        Request(i, tuple(rng.randrange(3, 300) for _ in range(rng.randrange(1, 61))), rng.randrange(1, 41))
        for i in range(NUM_REQUESTS)
    ]


@pytest.fixture(scope="module")
def backend(tiny_model):
    spec = _spec(str(tiny_model), block_size=BLOCK_SIZE, max_model_len=512, kv_cache_memory_bytes=KV_CACHE_BYTES)
    vllm_backend = VllmBackend(spec, str(tiny_model), "cpu", "float32")
    vllm_backend.load()
    yield vllm_backend
    vllm_backend.close()


@pytest.fixture(scope="module")
def timed_run(backend):
    requests = _requests()
    for call in backend.warmup_plan(requests):
        backend.generate(call, Clock())
    before = backend.compile_snapshot()
    clock = Clock()
    clock.start()
    records = backend.generate(requests, clock)
    return requests, records, backend.kv_samples(), CompileCount.between(before, backend.compile_snapshot())


@pytest.mark.engine
@pytest.mark.vllm_cpu
def test_output_lengths_exact(timed_run):
    requests, records, _, _ = timed_run
    assert [r.request_id for r in records] == [q.request_id for q in requests]
    assert [r.output_tokens for r in records] == [q.output_tokens for q in requests]
    assert [r.prompt_tokens for r in records] == [q.prompt_tokens for q in requests]
    assert all(r.status == "ok" for r in records)


@pytest.mark.engine
@pytest.mark.vllm_cpu
def test_times_are_on_the_runner_clock_from_arrival(timed_run):
    _, records, samples, _ = timed_run
    for record in records:
        assert record.arrival_s == 0.0  # all submitted at t=0; vLLM queues them
        # scheduled: the engine core's own clock (another process), on the runner's clock
        assert record.scheduled_s is not None and 0 < record.scheduled_s <= record.first_token_s <= record.end_s
        times = record.token_times_s
        assert len(times) == record.output_tokens and times == sorted(times)
        assert (times[0], times[-1]) == (record.first_token_s, record.end_s)
        assert record.ttft_s == record.first_token_s and record.queue_s == record.scheduled_s
    assert max(r.end_s for r in records) <= samples[-1].t_s


@pytest.mark.engine
@pytest.mark.vllm_cpu
def test_the_timed_pass_compiled_nothing_and_the_engine_compiled_at_load(backend, timed_run):
    """Read in vLLM's worker, inside the engine-core process (lab.backends.vllm_worker)."""
    *_, compiled = timed_run
    assert compiled is not None and not compiled.compiled, compiled
    assert "vLLM's worker" in compiled.source
    at_load = backend.compile_snapshot()
    assert at_load["frames"] + at_load["graphs"] > 0  # vLLM compiled its model while starting


@pytest.mark.engine
@pytest.mark.vllm_cpu
def test_kv_samples_cover_only_the_timed_pass(timed_run):
    requests, _, samples, _ = timed_run
    assert samples, "no kv samples were taken"
    steps = [s.step for s in samples]
    assert steps == sorted(set(steps))  # one pass, no warm-up samples mixed in
    assert all(0.0 <= s.kv_usage <= 1.0 for s in samples)
    assert max(s.kv_usage for s in samples) > 0
    assert max(s.running for s in samples) > len(requests) // 2  # the batch really ran together
    assert samples[-1].kv_usage == 0.0 and samples[-1].running == 0  # all blocks freed at the end


@pytest.mark.engine
@pytest.mark.vllm_cpu
def test_tokens_stored_fit_the_used_blocks(timed_run):
    _, _, samples, _ = timed_run
    assert all(s.tokens_stored_exact for s in samples)  # the pool fits: no preemption, no queue
    for s in samples:
        assert s.blocks_used is not None
        assert s.blocks_used <= s.num_blocks - 1  # block 0 is the null block
        assert s.tokens_stored <= s.blocks_used * BLOCK_SIZE
        if s.tokens_stored_exact:
            # Paged allocation wastes less than one block per running request.
            assert s.blocks_used * BLOCK_SIZE - s.tokens_stored <= s.running * BLOCK_SIZE
    assert any(s.tokens_stored > 0 for s in samples)


@pytest.mark.engine
@pytest.mark.vllm_cpu
def test_packed_step_facts_give_every_running_requests_blocks_and_tokens(backend, timed_run):
    """The per-request facts travel packed (vllm_facts_codec) and are summed after the pass: the tables
    hold exactly the blocks the pool counts as used, and (a synchronous scheduler, prompts in one step)
    the token states are the tokens the frontend counted, step by step."""
    _, _, samples, _ = timed_run
    assert all(s.has_step_facts for s in samples)
    assert all(s.held_blocks == s.blocks_used for s in samples)  # no residual: every used block in a table
    exact = [s for s in samples if s.tokens_stored_exact and not s.scheduled_prompt_slots]
    assert exact and all(s.token_state_slots == s.tokens_stored for s in exact)
    assert backend.kv_samples() == samples  # built once, after the pass: the same samples every call
    core = backend.engine_gc()  # the engine core's own collections in the pass, and its facts' cost
    assert core is not None and core["count"] >= core["full_count"] >= 0 and core["step_facts_s"] > 0


@pytest.mark.engine
@pytest.mark.vllm_cpu
def test_kv_usage_source_agrees_with_get_metrics(backend, timed_run):
    """The sampled figures are the ones vLLM's own gauges show (read here after the pass)."""
    from vllm.v1.metrics.reader import Gauge

    _, _, samples, _ = timed_run
    gauges = {m.name: m.value for m in backend._llm.get_metrics() if isinstance(m, Gauge)}
    assert gauges["vllm:kv_cache_usage_perc"] == samples[-1].kv_usage
    assert gauges["vllm:num_requests_running"] == samples[-1].running


@pytest.mark.engine
@pytest.mark.vllm_cpu
def test_engine_info_reports_the_pool(backend):
    info = backend.engine_info()
    assert info["vllm_version"]
    assert info["block_size"] == BLOCK_SIZE
    assert info["kv_bytes_per_block"] == TINY_KV_BYTES_PER_BLOCK
    # The engine sizes its pool as whole blocks of the pinned bytes: our formula must match its count.
    assert info["num_blocks"] == KV_CACHE_BYTES // TINY_KV_BYTES_PER_BLOCK
    assert info["kv_pool_bytes"] == info["num_blocks"] * TINY_KV_BYTES_PER_BLOCK
    assert info["kv_tokens_capacity"] == (info["num_blocks"] - 1) * BLOCK_SIZE
    assert info["kv_cache_memory_bytes"] == KV_CACHE_BYTES
    assert info["enable_prefix_caching"] is False
    assert info["cuda_graphs"] is False
    assert info["max_num_seqs"] > 0 and info["max_num_batched_tokens"] > 0


def test_cpu_kv_pool_defaults_to_a_small_pinned_size(monkeypatch, tmp_path):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    kwargs = VllmBackend(_spec("m"), str(tmp_path), "cpu", "float32").engine_kwargs()
    assert kwargs["kv_cache_memory_bytes"] == DEFAULT_CPU_KV_CACHE_BYTES
    assert "gpu_memory_utilization" not in kwargs
    assert kwargs["load_format"] == "dummy"  # a folder without weight files
    assert kwargs["enable_prefix_caching"] is False and kwargs["disable_log_stats"] is False


def test_pinned_kv_bytes_win_over_utilisation():
    spec = _spec("m", kv_cache_memory_bytes=1 << 28, gpu_memory_utilization=0.9)
    kwargs = VllmBackend(spec, "org/model", "cuda", "bfloat16").engine_kwargs()
    assert kwargs["kv_cache_memory_bytes"] == 1 << 28
    assert "gpu_memory_utilization" not in kwargs
    assert "load_format" not in kwargs  # not a local folder: vLLM loads it as usual


def test_kv_samples_bring_the_step_facts_scheduler_and_max_num_seqs_reaches_vllm():
    sampled = VllmBackend(_spec("m", max_num_seqs=4), "org/model", "cuda", "bfloat16").engine_kwargs()
    assert sampled["scheduler_cls"] == SCHEDULER_CLS and sampled["max_num_seqs"] == 4
    plain = VllmBackend(_spec("m", sample_kv_every_step=False), "org/model", "cuda", "bfloat16").engine_kwargs()
    assert "scheduler_cls" not in plain and "max_num_seqs" not in plain  # vLLM's own scheduler and limit, as bench


def test_the_step_facts_leave_vllms_own_stats_as_they_were():
    class FakeStats:  # SchedulerStats' one free-form field, as the engine core sends it
        kv_connector_stats = {"connector": {"bytes": 1}, FACTS_KEY: {"free_blocks": 3}}

    stats = FakeStats()
    assert take_step_facts(stats) == {"free_blocks": 3} and stats.kv_connector_stats == {"connector": {"bytes": 1}}
    alone = FakeStats()
    alone.kv_connector_stats = {FACTS_KEY: {"free_blocks": 3}}
    take_step_facts(alone)
    assert alone.kv_connector_stats is None and take_step_facts(alone) is None


@pytest.mark.engine
@pytest.mark.vllm_cpu
def test_cpu_block_size_16_is_refused_with_the_fix():
    pytest.importorskip("vllm")
    with pytest.raises(LabInputError, match="--block-size 32"):
        check_cpu_block_size(16)
    check_cpu_block_size(BLOCK_SIZE)  # accepted: no error
