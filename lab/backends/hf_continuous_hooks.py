"""transformers' private continuous-batching objects, as hf/continuous reads and wraps them.

Everything the lab touches inside transformers' `ContinuousBatchingManager` beyond its public API
(`add_request`, `get_result`, `start`, `stop`) is here, so that a new transformers version has one
file to check:

- the paged cache's block tables and free blocks (`cache_view`): transformers 5.17 keeps them in
  `PagedAttentionCache.group_cache_managers` and a `BlockManager`; 5.18+ in `cache_allocators` and a
  `CachePool` of sectors;
- the batch processor's `update_batch`, wrapped once per engine step (`StepTap`), and the
  scheduler's `active_requests` / `waiting_requests`, `RequestState.generated_tokens` and
  `current_len()`, read after it;
- the attention implementation names (`paged_attention_name`), which changed in 5.18;
- parallel sampling's forks (`parent_id`: transformers names them `<id>__child#k`) and the blocks its
  prefix cache keeps after their requests finished (`forget_cached_blocks`, `AllocatorsView.free_blocks`).

VERIFIED_TRANSFORMERS lists the versions these were checked against, by reading their source and
by tests: tests/unit (fakes of both layouts), tests/integration (5.19, the CPU environment) and
tests/gpu (5.17, the GPU machine). Nothing here imports torch; transformers only inside the one
function that asks it (so that the readers are tested against fakes without it).
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

VERIFIED_TRANSFORMERS = ("5.17.0", "5.19.0")
CHILD_MARK = "__child#"  # the forks of request R are "R__child#0", "R__child#1", ... (5.17, 5.19: update_batch)


class AllocatorsView:
    """The paged cache of transformers 5.18+: `cache_allocators` (one per attention type) and a `pool` of sectors."""

    layout = "cache_allocators"

    def __init__(self, cache) -> None:
        self.cache = cache
        self.allocators = list(cache.cache_allocators.values())
        self.groups = len(self.allocators)

    @property
    def num_blocks(self) -> int:
        return int(self.cache.num_blocks)

    @property
    def block_size(self) -> int:
        return int(self.allocators[0].tokens_per_page)

    def bytes_per_block(self) -> int:
        return int(self.allocators[0].bytes_per_block)

    def reserved_bytes(self) -> int:
        """The two trash sectors ahead of the pool (a sector is one block when block bytes are a multiple of 128)."""
        return 2 * int(self.cache.bytes_per_sector)

    def blocks_of(self, request_id: str) -> int:
        return sum(len(a.block_table.get(request_id, ())) for a in self.allocators)

    def free_blocks(self) -> int:
        """Free blocks of the (one) allocator, those in the pool's unassigned sectors, and the blocks its
        prefix cache keeps for their content only (no request holds them; transformers evicts them when
        it needs room), as 5.17's count and vLLM's free queue include them."""
        allocator, pool = self.allocators[0], self.cache.pool
        ledger = getattr(allocator, "ledger", None)  # 5.19 (not checked in 5.18)
        cached = len(ledger.cached_blocks) if ledger is not None else 0
        unassigned = pool.num_free_sectors * allocator.blocks_per_sector
        return int(pool.count_free_blocks(allocator.index) + unassigned + cached)


class GroupsView:
    """The paged cache of transformers 5.17: `group_cache_managers` and a `BlockManager`."""

    layout = "group_cache_managers"

    def __init__(self, cache) -> None:
        self.cache = cache
        self.groups = len(cache.group_cache_managers)

    @property
    def num_blocks(self) -> int:
        return int(self.cache.num_blocks)

    @property
    def block_size(self) -> int:
        return int(self.cache.block_size)

    def bytes_per_block(self) -> int:
        # 2 (K and V) x layers x block_size x kv_heads x head_dim x dtype bytes: the layers are the cache tensors
        layers = len(self.cache.key_cache)
        element = self.cache.key_cache[0].element_size()
        return 2 * layers * self.block_size * self.cache.num_key_value_heads * self.cache.head_dim * element

    def reserved_bytes(self) -> int:
        """The two trash blocks after the pool."""
        return 2 * self.bytes_per_block()

    def blocks_of(self, request_id: str) -> int:
        return int(self.cache.blocks_in_use(request_id))

    def free_blocks(self) -> int:
        return int(self.cache.get_num_free_blocks())


def cache_view(cache) -> AllocatorsView | GroupsView:
    """The reader for this transformers version's paged cache; RuntimeError for a layout not known here."""
    if hasattr(cache, "cache_allocators") and hasattr(cache, "pool"):
        view = AllocatorsView(cache)
    elif hasattr(cache, "group_cache_managers") and hasattr(cache, "get_num_free_blocks"):
        view = GroupsView(cache)
    else:
        raise RuntimeError(
            f"hf/continuous: transformers' paged cache ({type(cache).__name__}) has neither layout "
            "known to the lab (5.17, 5.18+): run with --no-kv-samples, or pin transformers to 5.17 "
            "or 5.19"
        )
    if view.groups != 1:
        raise RuntimeError(
            f"hf/continuous: the model's cache has {view.groups} attention groups (sliding-window "
            "layers); the KV samples assume one full-attention group: run with --no-kv-samples"
        )
    return view


def parent_id(request_id: str) -> str:
    """The request a sequence belongs to: itself, or the request transformers forked it from."""
    return request_id.split(CHILD_MARK, 1)[0]


def forget_cached_blocks(cache) -> int:
    """Drop the blocks transformers' prefix cache keeps after their requests finished (so that a pass
    never hits blocks an earlier pass computed); the number dropped. Only while no request runs.

    5.18+: `PagedAttentionCache.evict_cached_blocks` (the ledgers' `cached_blocks` back to the pool).
    5.17: the BlockManager's initialized blocks (complete, unreferenced, hashed) become uninitialized
    through `has_enough_free_blocks`, which does exactly that for as many blocks as it is asked for.
    """
    if hasattr(cache, "cache_allocators"):
        cached = sum(len(a.ledger.cached_blocks) for a in cache.cache_allocators.values())
        cache.evict_cached_blocks()
        return cached
    manager = cache._block_manager
    cached = len(manager._init_block_ids)
    manager.has_enough_free_blocks(manager.num_free_blocks)
    return cached


def paged_attention_name(kernel: str, plain_sdpa_is_paged: bool) -> str:
    """The attention implementation transformers' continuous batching wants for `kernel`.

    transformers 5.17 names the paged kernels 'paged|sdpa', 'paged|flash_attention_2'; later
    versions take plain 'sdpa' and 'flash_attention_2' (and deprecate the prefix). 'paged|eager'
    keeps its prefix in both. `plain_sdpa_is_paged` says which naming the installed version uses.
    """
    if kernel == "eager":
        return "paged|eager"
    return kernel if plain_sdpa_is_paged else f"paged|{kernel}"


def plain_sdpa_is_paged() -> bool:
    """Whether transformers' continuous batching treats plain 'sdpa' as its masked paged kernel (5.18+)."""
    from transformers.generation.continuous_batching.utils import (  # noqa: PLC0415 - heavy: transformers, in the hf process only
        attn_mask_is_needed,
    )

    return bool(attn_mask_is_needed(SimpleNamespace(_attn_implementation="sdpa")))


class StepTap:
    """Calls `on_step(before)` in the manager's thread after every engine step.

    It shadows `update_batch` on this one batch processor: the step's tokens are applied, finished
    requests freed and delivered, then `on_step` reads the engine. `before` maps each request the step
    ran (the active ones going in) to `(its state, tokens it had generated)`: the same state object
    after the update tells how many tokens the step gave it. `idle` is clear while a step's update and
    `on_step` run, so the main thread can wait for the last step's work after the last result. A
    failure in `on_step` stops it for good, never the generation: it is kept in `error`.
    """

    def __init__(self, processor, on_step) -> None:
        self.processor = processor
        self._update = processor.update_batch
        self._on_step = on_step
        self.idle = threading.Event()
        self.idle.set()
        self.error: str | None = None
        self.last_step = time.perf_counter()  # when the last step's update ended: a stalled engine shows here
        processor.update_batch = self._update_then_sample

    def _update_then_sample(self) -> None:
        self.idle.clear()
        try:
            active = self.processor.scheduler.active_requests
            before = {rid: (state, len(state.generated_tokens)) for rid, state in active.items()}
            self._update()
            self.last_step = time.perf_counter()
            if self.error is None:
                try:
                    self._on_step(before)
                except Exception as exc:  # noqa: BLE001 - sampling must not break the engine
                    self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.idle.set()
