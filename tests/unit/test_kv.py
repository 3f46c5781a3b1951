"""KV-cache accounting (lab.accounting: kv, breakdown, capacity): exact expectations computed by hand.

Conventions (lab/accounting/kv.py): a request of P prompt tokens that has generated g tokens stores P + g - 1;
hf step k produces token k, and after it a dynamic cache holds W + k - 1 slots per sequence.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from lab.accounting import capacity, kv
from lab.accounting.breakdown import hf_batch_steps, step_durations_s
from lab.accounting.vllm_rebuild import vllm_block_check, vllm_running_per_sample
from lab.models import resolve
from lab.records import HfBatch, KvSample, RequestRecord


def test_bytes_per_token_is_the_models_formula():
    assert resolve.kv_bytes_per_token is kv.kv_bytes_per_token  # one formula: model_info uses it, not a copy
    assert kv.kv_bytes_per_token(22, 4, 64, 2) == 22_528  # TinyLlama in bf16
    assert kv.token_state_bytes(17, 22_528) == 382_976


def test_one_request_of_17_tokens_in_blocks_of_16_holds_2_blocks_and_wastes_15_slots():
    assert kv.blocks_needed(17, 16) == 2
    assert kv.paged_slots(17, 16) == 32
    assert kv.paged_internal_fragmentation_slots(17, 16) == 15


def test_block_boundaries():
    assert [kv.blocks_needed(t, 16) for t in (0, 1, 16, 32, 33)] == [0, 1, 1, 2, 3]
    assert kv.paged_internal_fragmentation_slots(16, 16) == 0
    with pytest.raises(ValueError):
        kv.blocks_needed(1, 0)


def test_stored_tokens_leave_out_the_newest_token():
    assert kv.stored_tokens(10, 0) == 10
    assert kv.stored_tokens(10, 1) == 10  # the first token's K/V is written by the next step
    assert kv.stored_tokens(10, 5) == 14
    assert kv.final_tokens(3, 2) == 4


def test_null_block_is_excluded_from_usage():
    assert kv.usable_blocks(2048) == 2047
    assert kv.kv_usage_from_blocks(12, 2048) == 12 / 2047
    assert kv.blocks_used_from_usage(12 / 2047, 2048) == 12
    assert kv.usable_blocks(1) == 0 and kv.kv_usage_from_blocks(0, 1) == 0.0


# A batch of prompts 3 and 10 (padded to W = 10) with outputs 2 and 5 (N = 5).
PROMPTS, OUTPUTS = [3, 10], [2, 5]


def test_padded_batch_by_hand():
    assert kv.padded_length(PROMPTS) == 10
    assert kv.padding_waste_slots(PROMPTS) == 7
    # After the last step: 2 x (10 + 5 - 1) slots; the short sequence stores 3 + 1 own tokens and
    # 3 tokens generated after its own output was done; the long one 10 + 4.
    assert kv.dynamic_cache_slots(2, 10, 5) == 28
    assert kv.own_stored_tokens(PROMPTS, OUTPUTS, 5) == 18
    assert kv.finished_sequence_waste_slots(OUTPUTS, 5) == 3
    assert [kv.finished_sequence_waste_slots(OUTPUTS, k) for k in range(1, 6)] == [0, 0, 1, 2, 3]


def test_dynamic_batch_steps_sum_by_hand():
    steps = [kv.dynamic_batch_step(PROMPTS, OUTPUTS, k) for k in range(1, 6)]
    assert [s.total() for s in steps] == [kv.dynamic_cache_slots(2, 10, k) for k in range(1, 6)] == [20, 22, 24, 26, 28]
    total = kv.integrate((1.0, s) for s in steps)  # equal step times
    assert (total.token_states, total.padding, total.finished, total.reservation) == (79, 35, 6, 0)
    assert total.internal_fragmentation == 41 and total.total() == 120
    assert total.external_fragmentation is None  # not measured: no allocator figure given
    shares = total.shares()
    assert shares["token_states"] == pytest.approx(79 / 120)
    assert shares["external_fragmentation"] is None
    assert math.isclose(sum(v for v in shares.values() if v is not None), 1.0)


def test_static_cache_of_the_call_length_by_hand():
    first = kv.static_batch_step(PROMPTS, OUTPUTS, 1, max_cache_len=14)
    assert (first.token_states, first.reservation, first.internal_fragmentation) == (13, 5, 10)
    assert (first.padding, first.finished, first.unused_tail) == (7, 0, 3)
    last = kv.static_batch_step(PROMPTS, OUTPUTS, 5, max_cache_len=14)
    assert (last.token_states, last.reservation, last.internal_fragmentation) == (18, 0, 10)
    assert (last.padding, last.finished, last.unused_tail) == (7, 3, 0)
    assert first.total() == last.total() == kv.static_cache_slots(2, 14) == 28
    with pytest.raises(ValueError):
        kv.static_batch_step(PROMPTS, OUTPUTS, 1, max_cache_len=13)  # cannot hold W + N - 1


def test_static_cache_reserving_2048_for_a_20_token_request():
    # Prompt 10 + output 10: 19 tokens ever stored; 2048 slots reserved up front.
    steps = [kv.static_batch_step([10], [10], k, max_cache_len=2048) for k in range(1, 11)]
    assert (steps[0].token_states, steps[0].reservation, steps[0].internal_fragmentation) == (10, 9, 2029)
    assert (steps[-1].token_states, steps[-1].reservation, steps[-1].internal_fragmentation) == (19, 0, 2029)
    total = kv.integrate((1.0, s) for s in steps)
    assert (total.token_states, total.reservation, total.internal_fragmentation) == (145, 45, 20290)
    assert total.shares()["token_states"] == pytest.approx(145 / 20480)
    assert capacity.static_capacity(4 << 20, 1024, 2048) == 2  # 4 MiB / (2048 slots x 1 KiB)
    assert capacity.static_capacity(1 << 20, 1024, 2048) == 0


def test_paged_request_splits_its_last_block():
    grows = kv.paged_request_step(17, 40, 16)  # will fill its second block: all reservation
    assert (grows.token_states, grows.reservation, grows.internal_fragmentation) == (17, 15, 0)
    ends = kv.paged_request_step(17, 20, 16)  # ends at 20: 3 slots to come, 12 never reached
    assert (ends.token_states, ends.reservation, ends.internal_fragmentation, ends.block_tail) == (17, 3, 12, 12)


def test_paged_step_other_is_what_the_engine_holds_beyond_the_arithmetic():
    running = [(17, 20), (5, 5)]  # 2 + 1 blocks of 16
    exact = kv.paged_step(running, 16, blocks_used=3)
    assert (exact.token_states, exact.reservation, exact.internal_fragmentation, exact.other) == (22, 3, 23, 0)
    assert exact.external_fragmentation == 0.0  # paging: structurally none
    extra = kv.paged_step(running, 16, blocks_used=4)
    assert extra.other == 16 and extra.total() == 64
    assert math.isclose(sum(extra.shares().values()), 1.0)


def test_padded_batch_capacity_by_hand():
    requests = [(3, 2), (10, 5), (4, 4), (4, 4)]
    assert capacity.padded_batch_kv_bytes([3, 10], [2, 5], 1) == 28
    assert capacity.padded_batch_capacity(28, 1, requests) == 2  # batches of 3: 3 x 14 = 42 > 28
    assert capacity.padded_batch_capacity(13, 1, requests) == 0  # (10, 5) alone needs 14


def test_paged_simulation_without_pressure_runs_everything_together():
    # 10 usable blocks of 16; each request ends at 17 + 4 - 1 = 20 tokens: 2 blocks each.
    sim = capacity.simulate_paged([(17, 4)] * 3, num_blocks=11, block_size=16)
    assert sim.running_per_step == (3, 3, 3, 3)
    assert (sim.max_running, sim.mean_running, sim.preemptions) == (3, 3.0, 0)
    assert capacity.simulate_paged([(17, 4)] * 3, 11, 16, max_num_seqs=2).running_per_step == (2, 2, 2, 2, 1, 1, 1, 1)


def test_paged_simulation_preempts_the_newest_request_when_blocks_run_out():
    # 3 usable blocks of 4; prompts of 4 take 1 block each, the 5th token needs a second block.
    # Step 1: all three admitted. Step 2: r0 needs a block: r2, then r1 itself, are preempted.
    # Steps 3 and 4: r1 and r2 recompute 5 tokens (2 blocks) one at a time.
    sim = capacity.simulate_paged([(4, 2)] * 3, num_blocks=4, block_size=4)
    assert sim.running_per_step == (3, 1, 1, 1)
    assert (sim.preemptions, sim.mean_running) == (2, 1.5)
    with pytest.raises(ValueError):
        capacity.simulate_paged([(16, 2)], num_blocks=4, block_size=4)  # 17 tokens: 5 blocks > 3


def test_a_budget_sized_from_the_workload_holds_a_share_of_its_final_blocks():
    # Final lengths 20 and 40 tokens: 2 + 3 blocks of 16. Half: ceil(2.5) = 3 blocks, at least the largest
    # request's 3, plus 2 reserved (vLLM's null block, transformers' trash blocks).
    assert capacity.workload_budget_bytes([(17, 4), (30, 11)], 2, 16, 0.5) == (3 + 2) * 16 * 2
    assert (
        capacity.workload_budget_bytes([(17, 4), (30, 11)], 2, 16, 0.1) == (3 + 2) * 16 * 2
    )  # never below one request
    assert capacity.workload_budget_bytes([(17, 4), (30, 11)], 2, 16, 1.0) == (5 + 2) * 16 * 2
    # vLLM needs one request of the context in the pool: a 256-token context is 16 blocks.
    assert capacity.workload_budget_bytes([(17, 4), (30, 11)], 2, 16, 0.5, context_tokens=256) == (16 + 2) * 16 * 2


def test_paged_capacity_sizes_the_pool_as_vllm_does():
    # 11 blocks x 16 tokens x 1 B: the first is the null block.
    assert capacity.paged_capacity(11 * 16, 1, 16, [(17, 4)] * 3).max_running == 3


def test_hf_batch_steps_from_a_fake_batch_record():
    fake_batch = HfBatch(
        batch_size=2,
        padded_prompt_tokens=10,
        generated_tokens=5,
        prompt_tokens=PROMPTS,
        output_tokens=OUTPUTS,
        start_s=0.0,
        end_s=1.0,
        cache_bytes=28 * 8,
        cache_slots_per_sequence=14,
    )
    steps = hf_batch_steps(fake_batch, static=False, bytes_per_token=8)
    assert [w for w, _ in steps] == [0.2] * 5
    total = kv.integrate(steps)
    assert total.token_states == pytest.approx(79 * 0.2) and total.other == 0
    assert total.external_fragmentation == 0.0  # CPU: no caching allocator, nothing traced to the KV tensors
    # The allocator's slack is no KV share: peak reserved - peak allocated never enters the breakdown.
    cuda_batch = dataclasses.replace(fake_batch, peak_reserved_bytes=10**6, peak_allocated_bytes=840)
    assert kv.integrate(hf_batch_steps(cuda_batch, static=False, bytes_per_token=8)) == total


def test_hf_external_fragmentation_is_the_allocators_rounding_of_the_kv_tensors():
    # 1 layer, 1 KV head, head_dim 64, fp32: 256 B per token per sequence, 512 B per token (K and V).
    # Batch 2 x 3 slots: 1,536 B tensors, a multiple of 512; batch 1 x 3 slots: 768 B -> 1,024 B each.
    assert kv.allocator_rounding_slots(2, 3, 1, 1, 64, 4) == 0
    assert kv.allocator_rounding_slots(1, 3, 1, 1, 64, 4) == 2 * 256 / 512
    fake_model = {"num_layers": 1, "num_kv_heads": 1, "head_dim": 64, "dtype_bytes": 4}
    fake_batch = HfBatch(
        batch_size=1, padded_prompt_tokens=2, generated_tokens=2, prompt_tokens=[2], output_tokens=[2], end_s=1.0
    )
    steps = hf_batch_steps(fake_batch, static=False, bytes_per_token=512, model=fake_model)
    # step 1: 2 slots (512 B tensors: no rounding); step 2: 3 slots (768 B: 256 B each of K and V)
    assert [s.external_fragmentation for _, s in steps] == [0.0, 1.0]


def test_vllm_running_requests_rebuilt_from_fake_records():
    fake_samples = [
        KvSample(step=i, t_s=float(i + 1), blocks_used=b, running=r, tokens_stored=t, tokens_stored_exact=True)
        for i, (b, r, t) in enumerate([(0, 0, 0), (2, 1, 17), (2, 1, 18), (0, 0, 0)])
    ]
    fake_records = [
        RequestRecord(0, prompt_tokens=17, output_tokens=3, start_s=0.0, first_token_s=2.0, end_s=4.0),
        RequestRecord(1, prompt_tokens=5, output_tokens=1, start_s=0.0, first_token_s=2.0, end_s=2.0),  # freed at once
    ]
    running = vllm_running_per_sample(fake_samples, fake_records)
    assert running == [[], [(17, 19)], [(18, 19)], []]
    check = vllm_block_check(fake_samples, running, 16, {})
    assert (check["agree"], check["total"], check["tokens_stored_match"], check["reasons"]) == (4, 4, True, [])
    off = [dataclasses.replace(s, blocks_used=3) if s.step == 1 else s for s in fake_samples]
    check = vllm_block_check(off, running, 16, {"async_scheduling": True})
    assert check["agree"] == 3 and check["max_off"] == pytest.approx(1 / 3)
    assert any("async scheduling" in reason for reason in check["reasons"])


def test_hf_step_durations_come_from_the_step_clock_where_recorded():
    fake_batch = HfBatch(batch_size=1, padded_prompt_tokens=4, generated_tokens=3, start_s=1.0, end_s=2.0)
    assert step_durations_s(fake_batch) == pytest.approx([1 / 3] * 3)
    assert step_durations_s(dataclasses.replace(fake_batch, step_s=[1.5, 1.75, 2.0])) == pytest.approx(
        [0.5, 0.25, 0.25]
    )
