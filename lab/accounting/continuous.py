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

The breakdown is vLLM's (`lab.accounting.paged`): each KV sample (`lab.backends.hf_continuous`)
sums the running requests' `(tokens stored, blocks)` read from the engine's block tables after the
step. `block_check` holds those tables against ceil(tokens / block_size).
"""

from __future__ import annotations

from collections.abc import Callable

from lab.accounting import capacity
from lab.accounting.kv import blocks_needed, final_tokens
from lab.config import DEFAULT_CPU_KV_CACHE_BYTES, DEFAULT_GPU_MEMORY_UTILIZATION
from lab.errors import LabInputError
from lab.records import KvSample

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


# ----------------------------------------------------------------------------- its block tables


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


def decode_steps(samples: list[KvSample]) -> list[tuple[float, int, int]]:
    """(seconds, attended slots, useful slots: the same) of each step without prefill work, as
    `lab.accounting.bandwidth` counts vLLM's: the previous sample's stored tokens plus one per running
    request (the token each step feeds in)."""
    samples = sorted(samples, key=lambda s: s.step)
    steps = []
    for previous, sample in zip(samples, samples[1:]):
        if sample.prefill_requests or previous.tokens_stored is None:
            continue
        slots = previous.tokens_stored + (previous.running or 0)
        steps.append((sample.t_s - previous.t_s, slots, slots))
    return steps


def batched_requests(samples: list[KvSample]) -> dict:
    """Requests each step ran (`batch_requests`), the paper's "batched requests": max, time-weighted mean."""
    return capacity.batched_requests(samples, lambda s: s.batch_requests or 0)
