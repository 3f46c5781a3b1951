"""The paged pools (vLLM, hf/continuous): each engine step's KV memory over D, the pool set aside for KV.

D, the KV budget of a paged engine, is its pool's usable blocks x block_size slots: vLLM's
`num_blocks - 1` (block 0 is its reserved null block, which vLLM's own usage leaves out too),
hf/continuous's `num_blocks` (transformers' two trash blocks are allocated beside them). Pure
functions over the per-step facts the engines report (`lab.backends.vllm_step_facts`,
`lab.backends.hf_continuous`); nothing here imports torch or an engine.

One running request at one step, holding b blocks of B slots, with s tokens stored and at most
f = P + O - 1 ever (`kv.final_tokens`):
- token states: s, the tokens computed so far; a prompt already scheduled counts whole (or the part
  of it scheduled, for a prompt cut into chunks) although its first token is not out yet;
- reservation: min(b x B, f) - s, slots its own later tokens will fill. The look-ahead slot async
  scheduling allocates for the token the step in flight feeds in is one of them;
- internal fragmentation: b x B - max(f, s), slots beyond its final length (its last block's tail).
Across the pool:
- external fragmentation & others: the free blocks x B, held by no request. The paper's Figure 2
  books them there ("external fragmentation & others", Orca's unused memory); any free block fits
  any request, so there is no other external fragmentation;
- residual: blocks the pool counts as used beyond the running requests' tables, x B. Every block
  should be in a table: a residual above 1% fails the run's own check.
The shares of D add to 1: token states + reservation + internal + free + residual = usable blocks x B.
The shares of the memory held leave the free blocks out.

vLLM's scheduler reports, per running request, `[P, computed tokens c, output tokens g, max tokens m,
blocks b]` after it applied a step's outputs (with async scheduling, after it scheduled the next
step: `c` then counts that step's tokens too). Stored tokens s = c before the first output token
(the scheduled prompt), else min(c, P + g - 1); c - s is the look-ahead; f = P + m - 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lab.accounting.kv import SlotBreakdown
from lab.records import KvSample

RESIDUAL_LIMIT = 0.01  # a residual above 1% of the memory held fails the run's check


@dataclass(frozen=True)
class PagedStep:
    """The pool after one engine step, in slots (tokens) and blocks, summed over the running requests."""

    token_state_slots: int
    reservation_slots: int
    lookahead_slots: int  # of the reservation: slots allocated one step ahead (async scheduling)
    internal_slots: int
    held_blocks: int  # blocks in the running requests' tables
    scheduled_prompt_slots: int  # of the token states: prompts scheduled whose first token is not out yet


def request_slots(stored: int, final: int, blocks: int, block_size: int) -> tuple[int, int, int]:
    """(token states, reservation, internal fragmentation) of one request: see the module docstring."""
    slots = blocks * block_size
    reservation = max(min(slots, final) - stored, 0)
    return stored, reservation, max(slots - stored - reservation, 0)


def vllm_request(prompt: int, computed: int, outputs: int, max_tokens: int) -> tuple[int, int, int]:
    """(stored tokens, final tokens, look-ahead slots) of one request as vLLM's scheduler reports it."""
    stored = computed if outputs == 0 else min(computed, prompt + outputs - 1)
    return stored, prompt + max_tokens - 1, computed - stored


def step_sums(requests: Iterable[tuple[int, int, int, int, bool]], block_size: int) -> PagedStep:
    """Sums over `(stored, final, blocks, lookahead, prompt_only)` of the running requests of one step."""
    states = reserved = ahead = internal = held = prompts = 0
    for stored, final, blocks, lookahead, prompt_only in requests:
        s, r, i = request_slots(stored, final, blocks, block_size)
        states += s
        reserved += r
        internal += i
        held += blocks
        ahead += lookahead
        prompts += s if prompt_only else 0
    return PagedStep(states, reserved, ahead, internal, held, prompts)


def vllm_step_sums(facts: dict, block_size: int) -> PagedStep:
    """`step_sums` of the scheduler's facts for one step (`lab.backends.vllm_step_facts`)."""
    rows = []
    for prompt, computed, outputs, max_tokens, blocks in facts["requests"]:
        stored, final, ahead = vllm_request(prompt, computed, outputs, max_tokens)
        rows.append((stored, final, blocks, ahead, outputs == 0))
    return step_sums(rows, block_size)


def sample_breakdown(sample: KvSample, block_size: int) -> SlotBreakdown:
    """One KV sample with step sums (`records.KvSample`) as slots: the categories, free and residual."""
    used = sample.blocks_used or 0
    residual = used - sample.held_blocks
    return SlotBreakdown(
        token_states=sample.token_state_slots,
        reservation=sample.reservation_slots,
        internal_fragmentation=sample.internal_slots,
        external_fragmentation=0.0,  # paging: any free block fits any request
        other=max(residual, 0) * block_size,
        block_tail=sample.internal_slots,
        free=(sample.blocks_free or 0) * block_size,
    )


def forward_weights(times_s: list[float]) -> list[float]:
    """Each sample's weight: the time until the next sample (the pool stays as the sample found it until
    the next step's outputs); the last sample weighs 0. The time before the first sample (the requests
    handed over, the first step) has no sample and is left out."""
    return [later - now for now, later in zip(times_s, times_s[1:])] + [0.0] if times_s else []


def pool_check(samples: list[KvSample], weights: list[float], sharing: bool = False) -> dict:
    """The pool's used blocks against the blocks in the running requests' tables, per step and
    time-weighted (the residual), against RESIDUAL_LIMIT.

    `sharing` (the engine's prefix cache or block sharing on): a block in several requests' tables is
    counted once by the pool, so tables holding more blocks than the pool counts as used are shared
    blocks, reported apart, not residual; the pool counting more than the tables stays residual."""
    rows, shared_rows, residual_s, held_s, budget_s = [], [], 0.0, 0.0, 0.0
    for sample, weight in zip(samples, weights):
        used = sample.blocks_used or 0
        residual = used - sample.held_blocks
        if sharing and residual < 0:
            shared_rows.append(-residual)
            residual = 0
        residual_s += abs(residual) * weight
        held_s += used * weight
        budget_s += (sample.usable_blocks or 0) * weight
        if residual:
            rows.append({"step": sample.step, "blocks_used": used, "held_blocks": sample.held_blocks})
    of_held = residual_s / held_s if held_s else 0.0
    return {
        "kind": "paged pool",
        "formula": "blocks the pool counts as used - blocks in the running requests' tables",
        "residual_share_of_held": of_held,
        "residual_share_of_budget": residual_s / budget_s if budget_s else 0.0,
        "limit": RESIDUAL_LIMIT,
        "ok": of_held <= RESIDUAL_LIMIT,
        "steps": len(samples),
        "steps_with_residual": len(rows),
        "max_residual_blocks": max((abs(r["blocks_used"] - r["held_blocks"]) for r in rows), default=0),
        "residual_steps": rows[:20],
        "sharing": sharing,
        "steps_with_shared_blocks": len(shared_rows),
        "max_shared_blocks": max(shared_rows, default=0),
    }


def saturation(samples: list[KvSample], weights: list[float], threshold: float = 0.9) -> dict:
    """Whether the workload filled the pool: its peak occupancy, the time-weighted mean, and whether
    requests waited while the pool was at least `threshold` in use (a saturated run)."""
    occupancy = [(s.blocks_used or 0) / s.usable_blocks if s.usable_blocks else 0.0 for s in samples]
    total = sum(weights)
    full_and_waiting = [o for o, s in zip(occupancy, samples) if o >= threshold and (s.waiting or 0) > 0]
    return {
        "pool_occupancy_peak": max(occupancy, default=0.0),
        "pool_occupancy_mean": sum(o * w for o, w in zip(occupancy, weights)) / total if total else None,
        "saturated": bool(full_and_waiting),
        "saturation_rule": f"requests waited while at least {threshold:.0%} of the pool was in use",
    }
