"""Where the KV-cache memory went, per backend/mode: the PagedAttention paper's Figure 2 for a run.

From one backend/mode's typed records (no torch, no vllm): its result (hf: per-batch shapes and the
cache tensors' own bytes; vLLM: the KV pool), its request records and its KV samples (vLLM: one per
engine step; hf/continuous: one per engine step, with each request's blocks). The categories and how
each backend maps onto them are defined in `lab.accounting.kv` (hf/continuous: `lab.accounting.continuous`).

Time-averaged. Each step's breakdown is weighted by how long that step took, so the shares are
slot-seconds: what the memory held on average over the timed pass, as the paper's "average
percentage of memory wastes". vLLM: step i lasts `t_s[i] - t_s[i-1]` (its samples' runner-clock
times). hf: from the batch record's `step_s` (the clock at each step) where it has them, else each
of a batch's N steps lasts `(end_s - start_s) / N`.

Measurement against arithmetic (`checks` of each entry):
- hf: the cache tensors' bytes at the end of each batch against batch x slots x bytes per token,
  with slots = W + N - 1 for the dynamic cache and, for the static cache, the largest W + N - 1 of
  any call so far (transformers keeps a static cache's length across calls, warm-up included); on
  CUDA also the allocator's peak minus the weights against the cache bytes (the rest is activations
  and logits).
- vLLM: blocks in use as the scheduler reported them against sum(ceil(tokens / block_size)) over
  the requests running at that step, rebuilt from the records (a request runs from the step of its
  first token to the step of its last, one token per step). A step where they differ by more than
  2% is counted and the likely reason given.
"""

from __future__ import annotations

import bisect

from lab.accounting.continuous import continuous_breakdown
from lab.accounting.kv import (
    CATEGORIES,
    SlotBreakdown,
    blocks_needed,
    dynamic_batch_step,
    dynamic_cache_slots,
    final_tokens,
    integrate,
    paged_step,
    static_batch_step,
    static_cache_slots,
)
from lab.records import BackendResult, BreakdownEntry, HfBatch, KvSample, RequestRecord

TOLERANCE = 0.02  # arithmetic and measurement "agree" within 2%
DETAILS = ("padding", "finished", "unused_tail", "block_tail")

APPROACH = {
    "hf/sequential": "dynamic cache, batch 1: grows one slot per step, no padding",
    "hf/batched": "dynamic cache, left-padded batch: grows per step; padding and finished sequences waste",
    "hf/static-cache": "static cache sized by transformers to W + N - 1 (the largest call so far), allocated up front",
    "vllm/offline": "paged: blocks of block_size tokens, allocated as tokens arrive",
    "hf/continuous": "paged inside transformers: blocks of block_size tokens from a pool sized as vLLM's, "
    "allocated as tokens arrive (read from its block tables)",
}


# ----------------------------------------------------------------------------- hf


def hf_batch_steps(batch: HfBatch, static: bool, bytes_per_token: int) -> list[tuple[float, SlotBreakdown]]:
    """(duration s, breakdown) of each decoding step of one hf batch (see module docstring)."""
    steps = batch.generated_tokens
    if steps < 1:
        return []
    size, width = batch.batch_size, batch.padded_prompt_tokens
    durations = step_durations_s(batch)
    external = None
    if batch.peak_reserved_bytes is not None and batch.peak_allocated_bytes is not None:
        external = (batch.peak_reserved_bytes - batch.peak_allocated_bytes) / bytes_per_token
    measured = batch.cache_bytes
    slots_per_sequence = batch.cache_slots_per_sequence or width + steps - 1
    final_slots = static_cache_slots(size, slots_per_sequence) if static else dynamic_cache_slots(size, width, steps)
    other = max(measured / bytes_per_token - final_slots, 0.0) if measured is not None else 0.0
    out = []
    for step in range(1, steps + 1):
        if static:
            step_slots = static_batch_step(batch.prompt_tokens, batch.output_tokens, step, slots_per_sequence)
        else:
            step_slots = dynamic_batch_step(batch.prompt_tokens, batch.output_tokens, step)
        out.append((durations[step - 1], step_slots + SlotBreakdown(external_fragmentation=external, other=other)))
    return out


def step_durations_s(batch: HfBatch) -> list[float]:
    """Each decoding step's seconds: from the batch's `step_s` clock readings where recorded, else
    its duration split evenly over its `generated_tokens` steps."""
    steps, times = batch.generated_tokens, batch.step_s
    if times and len(times) == steps:
        return [t - previous for previous, t in zip([batch.start_s, *times[:-1]], times)]
    return [(batch.end_s - batch.start_s) / steps] * steps


def is_static_cache(result: BackendResult) -> bool:
    return (result.engine or {}).get("cache_implementation") == "static"


def hf_cache_checks(result: BackendResult) -> dict:
    """The cache tensors' bytes of each batch against the arithmetic (and, on CUDA, the allocator)."""
    bytes_per_token, static = result.kv_bytes_per_token, is_static_cache(result)
    weights = (result.engine or {}).get("weights_allocated_bytes")
    batches = result.hf_batches
    rows, longest = [], 0
    if (result.warmup or {}).get("requests") and batches:
        # The warm-up ran the first batch's shape: it sized the static cache first.
        longest = batches[0].padded_prompt_tokens + batches[0].generated_tokens - 1
    for b in batches:
        call_length = b.padded_prompt_tokens + b.generated_tokens - 1
        longest = max(longest, call_length)
        slots = longest if static else call_length
        expected = b.batch_size * slots * bytes_per_token if bytes_per_token else None
        measured = b.cache_bytes
        row = {
            "batch": b.batch,
            "cache_bytes": measured,
            "arithmetic_bytes": expected,
            "slots_per_sequence": b.cache_slots_per_sequence,
            "arithmetic_slots_per_sequence": slots,
            "agrees": measured is not None
            and expected is not None
            and abs(measured - expected) <= TOLERANCE * expected,
        }
        if b.peak_allocated_bytes is not None and weights is not None:
            row["allocator_peak_minus_weights_bytes"] = b.peak_allocated_bytes - weights
            row["allocator_reserved_minus_allocated_bytes"] = b.peak_reserved_bytes - b.peak_allocated_bytes
        rows.append(row)
    return {
        "kind": "hf cache tensors",
        "formula": "batch x (W + N - 1) x bytes/token" + (" (W + N - 1: the largest call so far)" if static else ""),
        "batches": rows,
        "agree": sum(r["agrees"] for r in rows),
        "total": len(rows),
    }


def hf_breakdown(result: BackendResult) -> dict:
    static, bytes_per_token = is_static_cache(result), result.kv_bytes_per_token
    steps = [s for b in result.hf_batches for s in hf_batch_steps(b, static, bytes_per_token)]
    return {
        "slot_seconds": integrate(steps),
        "duration_s": sum(w for w, _ in steps),
        "checks": hf_cache_checks(result),
        "external_note": None
        if result.device == "cuda"
        else "not measurable on the CPU (no caching allocator to read)",
    }


# ----------------------------------------------------------------------------- vLLM


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


def vllm_breakdown(result: BackendResult, samples: list[KvSample], records: list[RequestRecord]) -> dict:
    engine = result.engine or {}
    block_size = engine["block_size"]
    samples = sorted(samples, key=lambda s: s.step)
    running = vllm_running_per_sample(samples, records)
    steps, previous, usage_s = [], 0.0, 0.0
    for sample, reqs in zip(samples, running):
        weight, previous = sample.t_s - previous, sample.t_s
        steps.append((weight, paged_step(reqs, block_size, sample.blocks_used)))
        usage_s += (sample.kv_usage or 0.0) * weight
    duration = sum(w for w, _ in steps)
    return {
        "slot_seconds": integrate(steps),
        "duration_s": duration,
        "pool_occupancy_mean": usage_s / duration if duration else None,
        "checks": vllm_block_check(samples, running, block_size, engine),
        "external_note": None,
    }


# ----------------------------------------------------------------------------- one backend/mode


def run_breakdown(
    result: BackendResult, samples: list[KvSample], records: list[RequestRecord]
) -> BreakdownEntry | None:
    """One finished backend/mode's breakdown, or None where it recorded nothing to account."""
    engine = result.engine or {}
    if result.backend == "vllm":
        if not samples or not engine.get("block_size"):
            return None
        found = vllm_breakdown(result, samples, records)
    elif result.label == "hf/continuous":
        if not samples or not engine.get("block_size"):
            return None
        found = continuous_breakdown(result, samples, records)
    elif engine.get("batches"):
        found = hf_breakdown(result)
    else:
        return None
    slots: SlotBreakdown = found["slot_seconds"]
    total, duration = slots.total(), found["duration_s"]
    bytes_per_token = result.kv_bytes_per_token
    return BreakdownEntry(
        run=result.label,
        backend=result.backend,
        mode=result.mode,
        approach=APPROACH.get(result.label, ""),
        shares=slots.shares(),
        internal_detail_shares={d: (getattr(slots, d) / total if total else 0.0) for d in DETAILS},
        external_fragmentation_measured=slots.external_fragmentation is not None,
        external_note=found["external_note"],
        slot_seconds={c: getattr(slots, c) for c in CATEGORIES},
        duration_s=duration,
        mean_slots_held=total / duration if duration else None,
        mean_kv_bytes_held=total / duration * bytes_per_token if duration and bytes_per_token else None,
        kv_bytes_per_token=bytes_per_token,
        pool_occupancy_mean=found.get("pool_occupancy_mean"),
        weighting="time: each step weighted by its duration",
        checks=found["checks"],
    )
