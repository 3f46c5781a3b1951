"""Where the KV-cache memory went, per backend/mode: the PagedAttention paper's Figure 2 for a run.

From one backend/mode's typed records (no torch, no vllm): its result (hf: per-batch shapes and the
cache tensors' own bytes; the paged engines: their pool), its request records and its KV samples
(the paged engines: one per engine step, with the engine's own per-step sums). The categories, D
(the memory each approach sets aside for KV) and how each backend maps onto them: `lab.accounting.kv`;
the paged pools: `lab.accounting.paged`.

Time-averaged. Each step's breakdown is weighted by how long it lasted, so the shares are
slot-seconds: what the memory held on average over the timed pass, as the paper's "average
percentage of memory wastes". Paged engines: a sample holds until the next one (`t_s[i+1] - t_s[i]`;
the time before the first sample, the hand-over and the first step, has no sample). hf: from the
batch record's `step_s` (the clock at each step) where it has them, else each of a batch's N steps
lasts `(end_s - start_s) / N`.

Two views of the same slot-seconds: shares of D (free pool blocks under "external fragmentation &
others", as the paper books them) and shares of the memory held (free blocks left out). The
residual ("other") above 1% of the memory held fails the run's check. The torch allocator's slack
that cannot be traced to the KV tensors is not KV: `allocator_slack_bytes`, reported in MiB apart.

Measurement against arithmetic (`checks` of each entry):
- hf: the cache tensors' bytes at the end of each batch against rows x slots x bytes per token,
  with slots = W + N - 1 for the dynamic cache and, for the static cache, the length it was pinned
  to (`engine.static_cache_len`: the workload's longest W + N - 1; in runs before it was pinned, the
  largest W + N - 1 of any call so far, warm-up included) and rows including the copies that fill
  the last static batch (`padded_rows`), each request's row repeated per sequence
  (`sequences_per_request`: --n samples or --beam-width beams, as transformers expands the cache); on
  CUDA also the allocator's peak minus the weights against the cache bytes (the rest is activations
  and logits).
- paged: the pool's used blocks against the blocks in the running requests' tables, per step (the
  residual); hf/continuous also its tables against ceil(tokens / block_size). vLLM runs without
  step facts: `lab.accounting.vllm_rebuild`.
"""

from __future__ import annotations

from lab.accounting import paged
from lab.accounting.continuous import block_check
from lab.accounting.kv import (
    CATEGORIES,
    SlotBreakdown,
    allocator_rounding_slots,
    dynamic_batch_step,
    dynamic_cache_slots,
    integrate,
    static_batch_step,
    static_cache_slots,
)
from lab.accounting.vllm_rebuild import rebuilt_breakdown
from lab.records import BackendResult, BreakdownEntry, HfBatch, KvSample, RequestRecord

TOLERANCE = 0.02  # arithmetic and measurement "agree" within 2%
DETAILS = ("padding", "finished", "unused_tail", "block_tail")

APPROACH = {
    "hf/sequential": "dynamic cache, batch 1: grows one slot per step, no padding",
    "hf/batched": "dynamic cache, left-padded batch: grows per step; padding and finished sequences waste",
    "hf/static-cache": "static cache allocated up front, pinned to the longest W + N - 1; compiled on CUDA",
    "hf/static-cache-eager": "static cache allocated up front, pinned to the longest W + N - 1; never compiled",
    "vllm/offline": "paged: blocks of block_size tokens, allocated as tokens arrive",
    "hf/continuous": "paged inside transformers: blocks of block_size tokens from a pool sized as vLLM's, "
    "allocated as tokens arrive (read from its block tables)",
}


# ----------------------------------------------------------------------------- hf


def hf_batch_steps(
    batch: HfBatch, static: bool, bytes_per_token: int, model: dict | None = None, gpus: int = 1
) -> list[tuple[float, SlotBreakdown]]:
    """(duration s, breakdown) of each decoding step of one hf batch (see module docstring).

    External fragmentation: with `model` (a CUDA run's model facts), the caching allocator's rounding
    of the K/V tensors at that step's size (`kv.allocator_rounding_slots`), on each of `gpus`
    tensor-parallel ranks (each holds kv_heads / gpus of every token); else 0 (the CPU has no caching
    allocator: nothing to trace). A static batch's `padded_rows` (copies filling it to one batch size,
    their tokens discarded) hold their whole rows for no request: internal fragmentation, as padding.
    Every request holds `sequences_per_request` rows (n samples or beams, nothing shared): each row's
    prompt copy and its own tokens are token states, its padding and finished tokens waste.
    """
    steps = batch.generated_tokens
    if steps < 1:
        return []
    size, width = batch.batch_size, batch.padded_prompt_tokens
    durations = step_durations_s(batch)
    measured = batch.cache_bytes
    slots_per_sequence = batch.cache_slots_per_sequence or width + steps - 1
    rows, sequences = batch.rows, batch.sequences_per_request
    own_rows = size * sequences
    final_slots = (
        static_cache_slots(rows, slots_per_sequence) if static else dynamic_cache_slots(own_rows, width, steps)
    )
    other = max(measured / bytes_per_token - final_slots, 0.0) if measured is not None else 0.0
    filler = batch.padded_rows * sequences * slots_per_sequence
    padded = SlotBreakdown(internal_fragmentation=filler, padding=filler)
    prompts, outputs = batch.sequence_lengths()
    out = []
    for step in range(1, steps + 1):
        if static:
            step_slots = static_batch_step(prompts, outputs, step, slots_per_sequence) + padded
        else:
            step_slots = dynamic_batch_step(prompts, outputs, step)
        per_sequence = slots_per_sequence if static else width + step - 1
        external = _rounding(rows, per_sequence, model, gpus) if model else 0.0
        out.append((durations[step - 1], step_slots + SlotBreakdown(external_fragmentation=external, other=other)))
    return out


def _rounding(batch_size: int, slots_per_sequence: int, model: dict, gpus: int) -> float:
    """Rounding slots over every rank: one rank's (its kv_heads / gpus heads) x gpus, in whole-token slots."""
    heads = model["num_kv_heads"]
    per_rank = max(heads // gpus, 1)
    rank_slots = allocator_rounding_slots(
        batch_size, slots_per_sequence, model["num_layers"], per_rank, model["head_dim"], model["dtype_bytes"]
    )
    return rank_slots * per_rank * gpus / heads


def step_durations_s(batch: HfBatch) -> list[float]:
    """Each decoding step's seconds: from the batch's `step_s` clock readings where recorded, else
    its duration split evenly over its `generated_tokens` steps."""
    steps, times = batch.generated_tokens, batch.step_s
    if times and len(times) == steps:
        return [t - previous for previous, t in zip([batch.start_s, *times[:-1]], times)]
    return [(batch.end_s - batch.start_s) / steps] * steps


def static_slots_note(pinned: int | None) -> str:
    return " (W + N - 1: pinned to the workload's longest)" if pinned else " (W + N - 1: the largest call so far)"


def is_static_cache(result: BackendResult) -> bool:
    return (result.engine or {}).get("cache_implementation") == "static"


def hf_cache_checks(result: BackendResult) -> dict:
    """The cache tensors' bytes of each batch against the arithmetic (and, on CUDA, the allocator)."""
    bytes_per_token, static = result.kv_bytes_per_token, is_static_cache(result)
    weights = (result.engine or {}).get("weights_allocated_bytes")
    batches = result.hf_batches
    pinned = (result.engine or {}).get("static_cache_len")
    rows, longest = [], 0
    if (result.warmup or {}).get("requests") and batches:
        # The warm-up ran the first batch's shape: it sized the static cache first.
        longest = batches[0].padded_prompt_tokens + batches[0].generated_tokens - 1
    for b in batches:
        call_length = b.padded_prompt_tokens + b.generated_tokens - 1
        longest = max(longest, call_length)
        slots = (pinned or longest) if static else call_length
        expected = b.rows * slots * bytes_per_token if bytes_per_token else None
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
        "formula": "rows (requests x sequences each) x (W + N - 1) x bytes/token"
        + (static_slots_note(pinned) if static else ""),
        "batches": rows,
        "agree": sum(r["agrees"] for r in rows),
        "total": len(rows),
    }


def hf_breakdown(result: BackendResult) -> dict:
    static, bytes_per_token = is_static_cache(result), result.kv_bytes_per_token
    model = result.model if result.device == "cuda" else None
    gpus = int((result.engine or {}).get("tensor_parallel_size") or 1)
    steps = [s for b in result.hf_batches for s in hf_batch_steps(b, static, bytes_per_token, model, gpus)]
    return {
        "slot_seconds": integrate(steps),
        "duration_s": sum(w for w, _ in steps),
        "checks": hf_cache_checks(result),
        "external_note": "the caching allocator's rounding of the K/V tensors (512 B granules)"
        if result.device == "cuda"
        else "none traceable on the CPU (no caching allocator): 0",
        "budget": "the cache tensors (allocated per call; no budget beyond them)",
        "method": "the batches' shapes and the cache tensors' bytes",
    }


# ----------------------------------------------------------------------------- the paged pools


def paged_breakdown(result: BackendResult, samples: list[KvSample], records: list[RequestRecord]) -> dict | None:
    """vLLM or hf/continuous: each sample's step sums (`lab.accounting.paged`), each held until the next.

    vLLM samples without step facts (older runs) are rebuilt from the records instead
    (`lab.accounting.vllm_rebuild`); hf/continuous samples always carry them.
    """
    engine = result.engine or {}
    block_size = engine.get("block_size")
    if not samples or not block_size:
        return None
    samples = sorted(samples, key=lambda s: s.step)
    if not all(s.has_step_facts for s in samples):
        return rebuilt_breakdown(result, samples, records) if result.backend == "vllm" else None
    weights = paged.forward_weights([s.t_s for s in samples])
    steps = [(w, paged.sample_breakdown(s, block_size)) for s, w in zip(samples, weights)]
    sharing = bool(engine.get("enable_prefix_caching"))  # vLLM's prefix cache; hf/continuous's block sharing
    checks = {"kind": "paged pool", "pool": paged.pool_check(samples, weights, sharing)}
    if result.label == "hf/continuous":
        checks["tables"] = block_check(samples, block_size)
    usable = samples[0].usable_blocks
    null = " (its null block left out)" if result.backend == "vllm" else " (its two reserved blocks beside it)"
    return {
        "slot_seconds": integrate(steps),
        "duration_s": sum(weights),
        "checks": checks,
        "external_note": None,
        "saturation": paged.saturation(samples, weights),
        "budget": f"the KV pool: {usable:,} usable blocks x {block_size} slots{null}",
        "method": "the engine's own per-step facts: every running request's blocks and tokens",
    }


# ----------------------------------------------------------------------------- one backend/mode


def run_breakdown(
    result: BackendResult, samples: list[KvSample], records: list[RequestRecord]
) -> BreakdownEntry | None:
    """One finished backend/mode's breakdown, or None where it recorded nothing to account."""
    engine = result.engine or {}
    if result.backend == "vllm" or result.label == "hf/continuous":
        found = paged_breakdown(result, samples, records)
    elif engine.get("batches"):
        found = hf_breakdown(result)
    else:
        return None
    if found is None:
        return None
    slots: SlotBreakdown = found["slot_seconds"]
    total, duration = slots.total(), found["duration_s"]
    bytes_per_token = result.kv_bytes_per_token
    checks = dict(found["checks"], residual=residual_check(slots))
    saturation = found.get("saturation")
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
        pool_occupancy_mean=(saturation or {}).get("pool_occupancy_mean"),
        weighting="time: each step weighted by how long its state lasted",
        checks=checks,
        budget_shares=slots.budget_shares(),
        budget=found.get("budget"),
        mean_budget_slots=slots.budget() / duration if duration else None,
        free_slot_seconds=slots.free,
        method=found.get("method"),
        saturation=saturation,
        allocator_slack_bytes=allocator_slack_bytes(result),
    )


def residual_check(slots: SlotBreakdown) -> dict:
    """The residual ("other") as a share of the memory held and of D, against `paged.RESIDUAL_LIMIT`."""
    held, budget = slots.total(), slots.budget()
    of_held = slots.other / held if held else 0.0
    return {
        "share_of_held": of_held,
        "share_of_budget": slots.other / budget if budget else 0.0,
        "limit": paged.RESIDUAL_LIMIT,
        "ok": of_held <= paged.RESIDUAL_LIMIT,
    }


def allocator_slack_bytes(result: BackendResult) -> int | None:
    """The torch allocator's peak reserved - peak allocated bytes (CUDA only): activations, logits, freed
    caches, graph pools; never a KV share. Split over G ranks the figures are rank 0's: x G."""
    memory = result.memory or {}
    reserved, allocated = memory.get("peak_reserved_bytes"), memory.get("peak_allocated_bytes")
    if reserved is None or allocated is None:
        return None
    return (reserved - allocated) * int((result.engine or {}).get("tensor_parallel_size") or 1)
