"""The paged pools' breakdown over D (lab.accounting.paged, lab.accounting.breakdown): hand-computed, on fake
step facts shaped as vLLM's scheduler and hf/continuous report them."""

from __future__ import annotations

import pytest

from lab.accounting import paged
from lab.accounting.breakdown import run_breakdown
from lab.records import BackendResult, KvSample, RequestRecord

B = 16  # block size


def test_a_decoding_request_stores_prompt_plus_outputs_minus_one_and_async_adds_one_look_ahead():
    # P = 20, 5 tokens out, max 10. Synchronous: 24 computed. Async: the next step is scheduled: 25.
    assert paged.vllm_request(20, 24, 5, 10) == (24, 29, 0)
    assert paged.vllm_request(20, 25, 5, 10) == (24, 29, 1)


def test_a_scheduled_prompt_counts_as_token_states_before_its_first_token():
    assert paged.vllm_request(20, 20, 0, 10) == (20, 29, 0)  # whole prompt scheduled
    assert paged.vllm_request(300, 128, 0, 10) == (128, 309, 0)  # a chunk of a long prompt


def test_a_request_splits_its_blocks_into_states_reservation_and_tail():
    # 24 stored in 2 blocks (32 slots), 29 at most: 5 to come, 3 never reached.
    assert paged.request_slots(24, 29, 2, B) == (24, 5, 3)
    assert paged.request_slots(32, 32, 2, B) == (32, 0, 0)
    assert paged.request_slots(24, 40, 2, B) == (24, 8, 0)  # the next block is not allocated yet


def test_step_sums_add_the_running_requests_and_keep_the_look_ahead_and_prompts_apart():
    facts = {"free_blocks": 6, "num_blocks": 11, "requests": [[20, 25, 5, 10, 2], [20, 20, 0, 10, 2]]}
    step = paged.vllm_step_sums(facts, B)
    # (24 stored, 5 reserved incl. 1 look-ahead, 3 tail) + (20 stored, 9 reserved, 3 tail)
    assert step == paged.PagedStep(
        token_state_slots=44,
        reservation_slots=14,
        lookahead_slots=1,
        internal_slots=6,
        held_blocks=4,
        scheduled_prompt_slots=20,
    )


def _sample(step: int, t_s: float, used: int, held: int, states: int, reserved: int, internal: int, waiting=0):
    return KvSample(
        t_s=t_s,
        step=step,
        blocks_used=used,
        blocks_free=10 - used,
        usable_blocks=10,
        held_blocks=held,
        token_state_slots=states,
        reservation_slots=reserved,
        lookahead_slots=0,
        internal_slots=internal,
        scheduled_prompt_slots=0,
        waiting=waiting,
    )


def test_a_sample_covers_d_exactly_with_free_blocks_and_the_residual():
    slots = paged.sample_breakdown(_sample(0, 0.1, used=5, held=4, states=44, reserved=14, internal=6), B)
    assert (slots.token_states, slots.reservation, slots.internal_fragmentation) == (44, 14, 6)
    assert slots.other == 16 and slots.free == 5 * B  # one block used beyond the tables; five free
    assert slots.budget() == 10 * B and slots.total() == 5 * B


def test_each_sample_holds_until_the_next_and_the_last_weighs_nothing():
    assert paged.forward_weights([0.5, 0.75, 1.5]) == [0.25, 0.75, 0.0]
    assert paged.forward_weights([]) == []


def _fake_vllm_run(samples: list[KvSample]):
    fake_result = BackendResult(
        "vllm", "offline", status="ok", engine={"block_size": B}, model={"kv_bytes_per_token": 2}
    )
    fake_records = [RequestRecord(0, 20, 10, 0.0, 0.1, 1.0)]
    return run_breakdown(fake_result, samples, fake_records)


def test_the_breakdown_adds_to_100_percent_of_d_and_of_the_memory_held():
    samples = [
        _sample(0, 1.0, used=4, held=4, states=44, reserved=14, internal=6),  # held 1 s
        _sample(1, 2.0, used=8, held=8, states=100, reserved=20, internal=8, waiting=3),  # held 3 s
        _sample(2, 5.0, used=0, held=0, states=0, reserved=0, internal=0),
    ]
    entry = _fake_vllm_run(samples)
    assert entry.duration_s == 4.0
    assert entry.slot_seconds["token_states"] == 44 * 1 + 100 * 3
    assert entry.free_slot_seconds == (6 * 1 + 2 * 3) * B
    assert sum(entry.budget_shares.values()) == pytest.approx(1.0)
    assert sum(entry.shares.values()) == pytest.approx(1.0)
    assert entry.budget_shares["external_fragmentation"] == pytest.approx(12 * B / (10 * B * 4))
    assert entry.shares["external_fragmentation"] == 0.0  # paging: held memory has no external fragmentation
    assert entry.checks["residual"]["ok"] and entry.checks["residual"]["share_of_held"] == 0.0
    assert entry.saturation["pool_occupancy_peak"] == 0.8 and not entry.saturation["saturated"]


def test_a_residual_above_one_percent_fails_the_runs_check():
    samples = [
        _sample(0, 1.0, used=9, held=8, states=100, reserved=20, internal=8, waiting=2),
        _sample(1, 2.0, used=0, held=0, states=0, reserved=0, internal=0),
    ]
    entry = _fake_vllm_run(samples)
    residual = entry.checks["residual"]
    assert residual["share_of_held"] == pytest.approx(1 / 9) and not residual["ok"]
    assert entry.checks["pool"]["steps_with_residual"] == 1 and entry.checks["pool"]["max_residual_blocks"] == 1
    assert entry.saturation["saturated"]  # 90% in use while 2 requests waited


def test_a_run_without_step_facts_is_rebuilt_from_its_records():
    old = [
        KvSample(t_s=0.5, step=0, blocks_used=2, num_blocks=11, running=1, tokens_stored=20, tokens_stored_exact=True),
        KvSample(t_s=1.0, step=1, blocks_used=0, num_blocks=11, running=0, tokens_stored=0, tokens_stored_exact=True),
    ]
    fake_result = BackendResult(
        "vllm", "offline", status="ok", engine={"block_size": B}, model={"kv_bytes_per_token": 2}
    )
    entry = run_breakdown(fake_result, old, [RequestRecord(0, 20, 2, 0.0, 0.5, 1.0)])
    assert entry.method.startswith("rebuilt from the records")
    assert sum(entry.budget_shares.values()) == pytest.approx(1.0)
    assert entry.free_slot_seconds == 8 * B * 0.5  # 10 usable blocks, 2 used, for 0.5 s


def test_with_sharing_on_tables_holding_more_than_the_pool_are_shared_blocks_not_residual():
    # Two requests' tables name the same 3 prompt blocks: 10 in the tables, 7 distinct in the pool.
    samples = [_sample(0, 1.0, used=7, held=10, states=100, reserved=0, internal=0)]
    shared = paged.pool_check(samples, [1.0], sharing=True)
    assert (shared["steps_with_residual"], shared["residual_share_of_held"]) == (0, 0.0)
    assert (shared["steps_with_shared_blocks"], shared["max_shared_blocks"]) == (1, 3) and shared["ok"]
    # The same numbers without sharing are a difference the tables do not explain.
    unshared = paged.pool_check(samples, [1.0], sharing=False)
    assert (unshared["steps_with_residual"], unshared["max_residual_blocks"]) == (1, 3)
    assert unshared["steps_with_shared_blocks"] == 0
    # The pool counting more than the tables stays residual with sharing on too.
    more = paged.pool_check([_sample(0, 1.0, used=12, held=10, states=100, reserved=0, internal=0)], [1.0], True)
    assert (more["steps_with_residual"], more["max_residual_blocks"]) == (1, 2)
