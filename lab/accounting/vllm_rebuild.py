"""vLLM runs recorded before the scheduler reported its step facts: their breakdown rebuilt from the records.

Older runs (and a vLLM whose scheduler class could not be replaced) have, per engine step, only the
pool's usage and the requests this process saw. The running requests are rebuilt from the records
(a request runs from the step of its first token to the step of its last, one token per step), and
what the pool holds beyond them is the residual ("other"): prefills scheduled before their first
token, async scheduling's look-ahead. `lab.accounting.paged` replaces this where step facts exist.
"""

from __future__ import annotations

import bisect
import dataclasses

from lab.accounting.kv import SlotBreakdown, blocks_needed, final_tokens, integrate, paged_step, usable_blocks
from lab.accounting.paged import forward_weights, saturation
from lab.records import BackendResult, KvSample, RequestRecord

TOLERANCE = 0.02  # arithmetic and measurement "agree" within 2%


def vllm_running_per_sample(samples: list[KvSample], records: list[RequestRecord]) -> list[list[tuple[int, int]]]:
    """For each KV sample, the running requests as (tokens stored, final tokens), rebuilt from records.

    A request runs from the sample at its first token (stored = prompt) to the sample before its last
    (it is freed in the step that finishes it), one token per step: stored = P + (step - first step).
    """
    times = [s.t_s for s in samples]
    running: list[list[tuple[int, int]]] = [[] for _ in samples]
    for r in records:
        if not r.ok or r.first_token_s is None:
            continue
        first = bisect.bisect_left(times, r.first_token_s)
        end = bisect.bisect_left(times, r.end_s)
        if first >= len(samples):
            continue
        final = final_tokens(r.prompt_tokens, r.output_tokens)
        for i in range(first, min(end, len(samples))):
            stored = r.prompt_tokens + samples[i].step - samples[first].step
            running[i].append((min(stored, final), final))
    return running


def vllm_block_check(
    samples: list[KvSample], running: list[list[tuple[int, int]]], block_size: int, engine: dict
) -> dict:
    """Blocks in use (measured) against sum(ceil(tokens / block_size)) of the rebuilt running requests."""
    rows, measured_bs, arith_bs = [], 0.0, 0.0
    previous = 0.0
    for sample, reqs in zip(samples, running):
        weight, previous = sample.t_s - previous, sample.t_s
        arith = sum(blocks_needed(t, block_size) for t, _ in reqs)
        measured = sample.blocks_used
        if measured is None:
            continue
        measured_bs += measured * weight
        arith_bs += arith * weight
        off = abs(measured - arith) / measured if measured else (1.0 if arith else 0.0)
        rows.append(
            {
                "step": sample.step,
                "blocks_used": measured,
                "arithmetic_blocks": arith,
                "running": sample.running,
                "rebuilt_running": len(reqs),
                "tokens_stored": sample.tokens_stored,
                "rebuilt_tokens": sum(t for t, _ in reqs),
                "tokens_stored_exact": sample.tokens_stored_exact,
                "off": off,
            }
        )
    bad = [r for r in rows if r["off"] > TOLERANCE]
    return {
        "kind": "vLLM blocks",
        "formula": "sum over running requests of ceil(tokens / block_size)",
        "steps": len(rows),
        "agree": len(rows) - len(bad),
        "total": len(rows),
        "disagreeing_steps": bad[:20],
        "max_off": max((r["off"] for r in rows), default=0.0),
        "time_averaged_off": abs(measured_bs - arith_bs) / measured_bs if measured_bs else 0.0,
        "tokens_stored_match": all(
            r["tokens_stored"] == r["rebuilt_tokens"] for r in rows if r["tokens_stored"] is not None
        ),
        "reasons": disagreement_reasons(bad, engine),
    }


def disagreement_reasons(bad: list[dict], engine: dict) -> list[str]:
    """Why measured blocks and arithmetic differ at the given steps (empty when none do)."""
    if not bad:
        return []
    reasons = []
    if any(r["running"] != r["rebuilt_running"] or r["tokens_stored_exact"] is False for r in bad):
        reasons.append(
            "the scheduler ran requests this process could not see (a chunked prefill not yet "
            "producing a token, or a preempted request): their blocks are held but not in the arithmetic"
        )
    if engine.get("async_scheduling"):
        reasons.append(
            "async scheduling: the next step is scheduled, and its slots allocated, before this step's output is seen"
        )
    if any(r["arithmetic_blocks"] > r["blocks_used"] for r in bad):
        reasons.append(
            "fewer blocks in use than the arithmetic needs: a request preempted (its blocks freed while "
            "it waits to be recomputed) is rebuilt here as still running, or a step without a sample "
            "shifted the rebuilt token counts"
        )
    return reasons or ["not explained by the recorded figures"]


def rebuilt_breakdown(result: BackendResult, samples: list[KvSample], records: list[RequestRecord]) -> dict:
    """The breakdown of a vLLM run without step facts: the rebuilt requests, the pool's free blocks, and
    the rest of the used blocks as the residual; each sample weighted until the next (`paged.forward_weights`)."""
    engine = result.engine or {}
    block_size = engine["block_size"]
    samples = sorted(samples, key=lambda s: s.step)
    running = vllm_running_per_sample(samples, records)
    weights = forward_weights([s.t_s for s in samples])
    steps = []
    for sample, reqs, weight in zip(samples, running, weights):
        step = paged_step(reqs, block_size, sample.blocks_used)
        free = (usable_blocks(sample.num_blocks or 0) - (sample.blocks_used or 0)) * block_size
        steps.append((weight, step + SlotBreakdown(free=max(free, 0))))
    facts = [
        dataclasses.replace(s, usable_blocks=usable_blocks(s.num_blocks or 0), held_blocks=s.blocks_used)
        for s in samples
    ]
    return {
        "slot_seconds": integrate(steps),
        "duration_s": sum(weights),
        "checks": vllm_block_check(samples, running, block_size, engine),
        "external_note": None,
        "saturation": saturation(facts, weights),
        "method": "rebuilt from the records: this run has no step facts from vLLM's scheduler",
        "budget": f"the KV pool: {usable_blocks(samples[0].num_blocks or 0):,} usable blocks x {block_size} slots "
        "(its null block left out)",
    }
