"""lab.backends.vllm_facts_codec: the scheduler's per-request step facts, packed into one bytes object
a step, come back exactly; and a KV sample built after the pass from packed facts (lab.backends.
vllm_kv_samples) has the sums the rows give (lab.accounting.paged.vllm_step_sums)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from lab.accounting import paged
from lab.backends import vllm_facts_codec as codec
from lab.backends.vllm_kv_samples import StepRow, engine_core_pass, engine_core_totals, kv_sample, step_row
from lab.backends.vllm_progress import InFlight

BLOCK = 16


def test_rows_round_trip_exactly_including_large_and_zero_counts():
    rng = random.Random(0)
    rows = [tuple(rng.randrange(0, 1 << 40) for _ in codec.FIELDS) for _ in range(1024)]
    rows += [(0, 0, 0, 0, 0), (128, 255, 127, 128, 16)]
    packed = codec.pack(rows)
    assert isinstance(packed, bytes) and len(packed) == 8 * len(codec.FIELDS) * len(rows)
    assert codec.unpack(packed) == rows
    assert codec.unpack(codec.pack([])) == []


def test_a_row_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="5 ints"):
        codec.pack([(1, 2, 3)])


def _stats(running: int, waiting: int = 0, usage: float = 0.25):
    """A fake of the SchedulerStats fields a sample reads (prefix cache stats absent: off)."""
    return SimpleNamespace(kv_cache_usage=usage, num_running_reqs=running, num_waiting_reqs=waiting)


def test_a_sample_from_packed_facts_has_the_sums_of_the_rows():
    rows = [(20, 25, 5, 10, 2), (20, 20, 0, 10, 2)]
    facts = {"free_blocks": 6, "num_blocks": 11, "requests": codec.pack(rows)}
    in_flight = InFlight(requests=1, tokens_stored=24)  # one request has its first token out
    sample = kv_sample(step_row(3, 1.5, _stats(running=2), facts, in_flight), num_blocks=11, block_size=BLOCK)
    expected = paged.vllm_step_sums({"requests": rows}, BLOCK)
    assert (sample.step, sample.t_s, sample.running) == (3, 1.5, 2)
    assert (sample.usable_blocks, sample.blocks_free, sample.blocks_used) == (10, 6, 4)
    assert sample.held_blocks == expected.held_blocks == 4
    assert sample.token_state_slots == expected.token_state_slots
    assert sample.reservation_slots == expected.reservation_slots
    assert sample.scheduled_prompt_slots == expected.scheduled_prompt_slots
    assert sample.tokens_stored == 24 and sample.tokens_stored_exact is False  # 1 in flight, 2 running


def test_more_requests_in_flight_than_running_leaves_tokens_unknown():
    sample = kv_sample(step_row(0, 0.0, _stats(running=1), None, InFlight(2, 100)), num_blocks=11, block_size=BLOCK)
    assert sample.tokens_stored is None and sample.held_blocks is None  # no facts: no sums either


def test_engine_core_totals_are_the_last_reported_and_differenced_per_call():
    def row(totals):
        return StepRow(0, 0.0, 0.0, 0, 0, 0, 0, None, None, None if totals is None else {"engine_core": totals})

    first = {"count": 10, "total_s": 0.010, "max_s": 0.002, "full_count": 0, "full_s": 0.0, "facts_s": 0.5}
    second = {"count": 15, "total_s": 0.510, "max_s": 0.5, "full_count": 1, "full_s": 0.5, "facts_s": 0.75}
    assert engine_core_totals([row(first), row(second), row(None)]) == second
    window = engine_core_pass(first, second)
    assert window["count"] == 5 and window["full_count"] == 1
    assert window["total_ms"] == pytest.approx(500.0) and window["step_facts_s"] == pytest.approx(0.25)
    assert engine_core_pass(first, None) is None  # no facts (KV samples off)
