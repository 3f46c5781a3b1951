"""The vLLM backend's KV samples (`lab.backends.vllm.VllmBackend.kv_samples` defines each field), built
after the timed pass from what each step left.

During the pass the backend keeps, per step, only a `StepRow`: the step's number, its time on the
runner's clock, the scheduler's scalar stats, this process's in-flight count and the step facts as the
engine core sent them (their per-request rows still packed, `lab.backends.vllm_facts_codec`). The sums
over the running requests (`lab.accounting.paged.vllm_step_sums`), one Python call per request per
step, run in `kv_sample` when the samples are asked for, outside the timed loop. Every figure is the
one the loop used to compute in place: the inputs are the same values, read at the same step.
"""

from __future__ import annotations

from typing import NamedTuple

from lab.accounting import kv
from lab.accounting.paged import vllm_step_sums
from lab.backends import vllm_facts_codec as codec
from lab.backends import vllm_sharing as sharing
from lab.backends.vllm_progress import InFlight
from lab.gc_pauses import between
from lab.records import KvSample


class StepRow(NamedTuple):
    """One step as the timed loop saw it (scalars and the engine's facts; no vLLM objects kept)."""

    step: int
    t_s: float
    kv_usage: float
    running: int
    waiting: int
    in_flight_requests: int | None  # None: beam search, whose requests this process does not see
    in_flight_tokens: int | None
    prefix_queries: int | None
    prefix_hits: int | None
    facts: dict | None


def step_row(step: int, t_s: float, stats, facts: dict | None, in_flight: InFlight | None) -> StepRow:
    """What a KV sample needs of one step's `SchedulerStats`, step facts and in-flight count, read now."""
    queries, hits = sharing.prefix_counts(stats)
    return StepRow(
        step,
        t_s,
        float(stats.kv_cache_usage),
        int(stats.num_running_reqs),
        int(stats.num_waiting_reqs),
        None if in_flight is None else in_flight.requests,
        None if in_flight is None else in_flight.tokens_stored,
        queries,
        hits,
        facts,
    )


def kv_sample(row: StepRow, num_blocks: int, block_size: int) -> KvSample:
    """The step's KV sample (`VllmBackend.kv_samples`)."""
    blocks_used = kv.blocks_used_from_usage(row.kv_usage, num_blocks) if num_blocks > 1 else None
    beam = row.in_flight_requests is None  # beam search's one-token requests are not seen here: no token count
    overcounted = beam or row.in_flight_requests > row.running  # or some request was preempted
    sample = KvSample(
        t_s=row.t_s,
        step=row.step,
        kv_usage=row.kv_usage,
        blocks_used=blocks_used,
        num_blocks=num_blocks,
        running=row.running,
        waiting=row.waiting,
        tokens_stored=None if overcounted else row.in_flight_tokens,
        tokens_stored_exact=None if beam else row.in_flight_requests == row.running,
        prefix_queries=row.prefix_queries,
        prefix_hits=row.prefix_hits,
    )
    facts = row.facts
    if facts is not None:
        sums = vllm_step_sums(dict(facts, requests=codec.unpack(facts["requests"])), block_size)
        usable = kv.usable_blocks(int(facts["num_blocks"]))
        sample.usable_blocks, sample.blocks_free = usable, int(facts["free_blocks"])
        sample.blocks_used = usable - sample.blocks_free  # exact, not from the rounded usage
        sample.held_blocks, sample.token_state_slots = sums.held_blocks, sums.token_state_slots
        sample.reservation_slots, sample.lookahead_slots = sums.reservation_slots, sums.lookahead_slots
        sample.internal_slots, sample.scheduled_prompt_slots = sums.internal_slots, sums.scheduled_prompt_slots
    return sample


def engine_core_totals(rows: list[StepRow]) -> dict | None:
    """The engine core's running totals (`lab.backends.vllm_step_facts`) as its last step reported them."""
    for row in reversed(rows):
        if row.facts is not None and "engine_core" in row.facts:
            return row.facts["engine_core"]
    return None


def engine_core_pass(before: dict | None, after: dict | None) -> dict | None:
    """The engine core's collections and step-facts seconds between two of its totals (None: not reported)."""
    if after is None:
        return None
    facts_s = after["facts_s"] - (before["facts_s"] if before else 0.0)
    return dict(between(before, after), step_facts_s=facts_s, source="engine core (lab.gc_pauses.GcTally)")
