"""KV accounting of hf/continuous (transformers' paged cache): its pool, and where its memory went.

Pure functions over numbers and typed records; nothing here imports torch or transformers.

The pool. hf/continuous gets the KV memory vLLM gets, by the same rules (`lab.config`'s defaults):
`--kv-cache-memory` bytes when given; else, on a GPU, vLLM's rule
`gpu_memory_utilization x total memory - memory in use` (0.5 when not given); on the CPU, 1 GiB.
The bytes become blocks with vLLM's block formula, `2 x layers x block_size x kv_heads x head_dim x
dtype bytes`. Both engines keep blocks no request can use inside the same memory: vLLM one null block
among its `num_blocks`, transformers two "trash" blocks that padding tokens read and write, allocated
beside its `num_blocks`. So transformers gets `num_blocks = budget // block bytes - 2`: the same
memory, all of its `num_blocks` usable.

Memory beside the pool. With sdpa or eager attention transformers packs a step's requests into one
sequence and attends densely under a mask of `max_batch_tokens x (pool tokens + max_batch_tokens)`
elements of the model's dtype, allocated once, full size, beside the pool (none with flash). The mask
grows with the pool, so the lab caps `max_batch_tokens` (`auto_max_batch_tokens`).

The breakdown. Each KV sample (`lab.backends.hf_continuous`) lists the running requests as
`(request_id, tokens_stored, blocks)`, read from the engine's block tables after the step. A request
holding b blocks of size B with t tokens stored, that will store f = prompt + output - 1 at most:
token states t, reservation min(bB, f) - t, internal fragmentation the rest of its bB slots.
Blocks the pool counts as used beyond the requests' tables are "other". External fragmentation is
0: any free block fits any request. Steps are weighted by their duration, as for vLLM.
"""

from __future__ import annotations

from collections.abc import Callable

from lab.accounting import capacity
from lab.accounting.kv import SlotBreakdown, blocks_needed, final_tokens, integrate
from lab.config import DEFAULT_CPU_KV_CACHE_BYTES, DEFAULT_GPU_MEMORY_UTILIZATION
from lab.errors import LabInputError
from lab.records import BackendResult, KvSample, RequestRecord

DEFAULT_MAX_BATCH_TOKENS = 8192  # transformers' own default (PagedAttentionMemoryHandler)
MIN_AUTO_BATCH_TOKENS = 64
RESERVED_BLOCKS = 2  # transformers' read and write trash blocks (one sector each, a sector one block here)
CHECK_KIND = "hf/continuous blocks"
TOLERANCE = 0.02
GIB = 2**30


# ----------------------------------------------------------------------------- the pool


def pool_budget_bytes(
    kv_cache_memory_bytes: int | None,
    gpu_memory_utilization: float | None,
    device: str,
    read_memory: Callable[[], tuple[int, int]],
) -> tuple[int, str]:
    """(KV bytes, the rule that gave them). `read_memory()` -> (total bytes, bytes in use now), read if needed."""
    if kv_cache_memory_bytes is not None:
        return kv_cache_memory_bytes, "--kv-cache-memory"
    if gpu_memory_utilization is None and device == "cpu":
        return DEFAULT_CPU_KV_CACHE_BYTES, "CPU default (1 GiB, as the vLLM backend)"
    utilization = gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    total, in_use = read_memory()
    budget = int(utilization * total) - in_use
    if budget <= 0:
        raise LabInputError(
            f"hf/continuous: no KV memory left by vLLM's rule: {utilization} x {total / GIB:.1f} GiB total - "
            f"{in_use / GIB:.1f} GiB in use = {budget / GIB:.2f} GiB. Give --kv-cache-memory (e.g. 4GiB) or a "
            f"larger --gpu-memory-utilization"
        )
    return budget, f"vLLM's rule: {utilization} x total - in use"


def bytes_per_block(kv_bytes_per_token: int, block_size: int) -> int:
    """2 x layers x block_size x kv_heads x head_dim x dtype bytes = bytes per token x block_size."""
    return kv_bytes_per_token * block_size


def num_blocks_for_budget(budget_bytes: int, block_bytes: int) -> int:
    """Usable blocks the budget buys: budget // block bytes - 2 trash blocks; LabInputError when none."""
    blocks = budget_bytes // block_bytes - RESERVED_BLOCKS
    if blocks < 1:
        raise LabInputError(
            f"hf/continuous: a KV budget of {budget_bytes:,} B holds {budget_bytes // block_bytes} "
            f"blocks of {block_bytes:,} B, {RESERVED_BLOCKS} of them transformers' reserved ones; give "
            f"a larger --kv-cache-memory or a smaller block size"
        )
    return blocks


def check_requests_fit(lengths: list[tuple[int, int]], num_blocks: int, block_size: int) -> None:
    """LabInputError when one `(prompt, output)` request alone needs more blocks than the pool has.

    A request stores at most P + O - 1 tokens (`lab.kv.final_tokens`), in ceil(that / block_size)
    blocks; transformers would stop with "No requests can be scheduled" on one that cannot fit.
    """
    if not lengths:
        return
    prompt, output = max(lengths, key=lambda po: final_tokens(*po))
    need = blocks_needed(final_tokens(prompt, output), block_size)
    if need > num_blocks:
        raise LabInputError(
            f"hf/continuous: a request of {prompt} prompt + {output} output tokens needs {need} blocks of "
            f"{block_size} tokens and the KV pool has {num_blocks}: give at least {need} blocks' worth of "
            f"--kv-cache-memory"
        )


def mask_bytes(max_batch_tokens: int, pool_tokens: int, dtype_bytes: int) -> int:
    """The dense attention mask of sdpa/eager paging: M x (N + M) elements of the model's dtype."""
    return max_batch_tokens * (pool_tokens + max_batch_tokens) * dtype_bytes


def auto_max_batch_tokens(pool_tokens: int, pool_bytes: int, dtype_bytes: int, needs_mask: bool) -> int:
    """transformers' default 8192, halved while its attention mask would be larger than the KV pool itself.

    The rule keeps the memory that paging-with-a-mask costs beside the pool at most the pool's size
    (without it a 1 GiB pool of a small model asks for a mask of tens of GiB). Flash needs no mask.
    """
    tokens = DEFAULT_MAX_BATCH_TOKENS
    if not needs_mask:
        return tokens
    while tokens > MIN_AUTO_BATCH_TOKENS and mask_bytes(tokens, pool_tokens, dtype_bytes) > pool_bytes:
        tokens //= 2
    return tokens


# ----------------------------------------------------------------------------- the breakdown


def request_step(tokens: int, request_final_tokens: int, blocks: int, block_size: int) -> SlotBreakdown:
    """One running request holding `blocks` blocks (measured) and `tokens` tokens: see the module docstring."""
    slots = blocks * block_size
    reservation = max(min(slots, request_final_tokens) - tokens, 0)
    internal = max(slots - tokens - reservation, 0)
    return SlotBreakdown(
        token_states=tokens, reservation=reservation, internal_fragmentation=internal, block_tail=internal
    )


def sample_step(sample: KvSample, finals: dict[int, int], block_size: int) -> SlotBreakdown:
    """All running requests of one KV sample, plus the pool's blocks no request table holds ("other")."""
    total = SlotBreakdown(external_fragmentation=0.0)  # paging: any free block fits any request
    held = 0
    for request_id, tokens, blocks in sample.per_request or []:
        total = total + request_step(tokens, finals.get(request_id, tokens), blocks, block_size)
        held += blocks
    extra_blocks = max((sample.blocks_used or 0) - held, 0)
    return total + SlotBreakdown(other=extra_blocks * block_size)


def final_tokens_by_request(records: list[RequestRecord]) -> dict[int, int]:
    """request_id -> P + O - 1, the most tokens it ever stores (from the records of the same pass)."""
    return {r.request_id: final_tokens(r.prompt_tokens, r.output_tokens) for r in records}


def continuous_breakdown(result: BackendResult, samples: list[KvSample], records: list[RequestRecord]) -> dict:
    """The time-weighted breakdown of an hf/continuous run (the shape `lab.accounting.breakdown` expects)."""
    block_size = (result.engine or {})["block_size"]
    samples = sorted(samples, key=lambda s: s.step)
    finals = final_tokens_by_request(records)
    steps, previous, usage_s = [], 0.0, 0.0
    for sample in samples:
        weight, previous = sample.t_s - previous, sample.t_s
        steps.append((weight, sample_step(sample, finals, block_size)))
        usage_s += (sample.kv_usage or 0.0) * weight
    duration = sum(w for w, _ in steps)
    return {
        "slot_seconds": integrate(steps),
        "duration_s": duration,
        "pool_occupancy_mean": usage_s / duration if duration else None,
        "checks": block_check(samples, block_size),
        "external_note": None,
    }


def block_check(samples: list[KvSample], block_size: int) -> dict:
    """Per step: the pool's blocks in use = sum of the block tables = sum of ceil(tokens / block_size)?"""
    rows = []
    for s in samples:
        per_request = s.per_request or []
        tables = sum(b for _, _, b in per_request)
        arithmetic = sum(blocks_needed(t, block_size) for _, t, _ in per_request)
        pool = s.blocks_used
        off = abs(tables - arithmetic) / tables if tables else (1.0 if arithmetic else 0.0)
        rows.append(
            {
                "step": s.step,
                "blocks_used": pool,
                "table_blocks": tables,
                "arithmetic_blocks": arithmetic,
                "off": off,
                "pool_matches_tables": pool == tables,
            }
        )
    bad = [r for r in rows if r["off"] > TOLERANCE]
    return {
        "kind": CHECK_KIND,
        "formula": "sum over running requests of ceil(tokens / block_size), against the engine's block tables",
        "steps": len(rows),
        "agree": len(rows) - len(bad),
        "total": len(rows),
        "max_off": max((r["off"] for r in rows), default=0.0),
        "pool_matches_tables": all(r["pool_matches_tables"] for r in rows),
        "disagreeing_steps": bad[:20],
        "reasons": [
            "transformers allocated more blocks than the stored tokens need (5.17 allocates up to one block "
            "ahead when a prompt is scheduled)"
        ]
        if any(r["table_blocks"] > r["arithmetic_blocks"] for r in bad)
        else [],
    }


# ----------------------------------------------------------------------------- steps: bandwidth, capacity


def decode_steps(samples: list[KvSample]) -> list[tuple[float, int]]:
    """(seconds, attended slots) of each step without prefill work, as `lab.accounting.bandwidth` counts
    vLLM's: the previous sample's stored tokens plus one per running request (the token each step feeds in)."""
    samples = sorted(samples, key=lambda s: s.step)
    steps = []
    for previous, sample in zip(samples, samples[1:]):
        if sample.prefill_requests or previous.tokens_stored is None:
            continue
        steps.append((sample.t_s - previous.t_s, previous.tokens_stored + (previous.running or 0)))
    return steps


def batched_requests(samples: list[KvSample]) -> dict:
    """Requests each step ran (`batch_requests`), the paper's "batched requests": max, time-weighted mean."""
    return capacity.batched_requests(samples, lambda s: s.batch_requests or 0)
