"""The readers of transformers' private continuous-batching objects, against fakes of both known layouts.

The fakes copy the attributes the lab reads, as transformers 5.17 (`group_cache_managers`, a
`BlockManager`) and 5.18+ (`cache_allocators`, a pool of sectors) define them; the real engine is
tested in tests/integration/test_hf_continuous.py (the installed version) and tests/gpu (5.17).
"""

from types import SimpleNamespace

import pytest

from lab.backends.hf_continuous_hooks import (
    AllocatorsView,
    GroupsView,
    StepTap,
    cache_view,
    paged_attention_name,
)


class FakePool519:
    """transformers 5.18+ CachePool: free sectors, and free blocks per allocator."""

    def __init__(self, free_sectors: int, free_blocks: int) -> None:
        self.num_free_sectors = free_sectors
        self._free_blocks = free_blocks

    def count_free_blocks(self, index: int) -> int:
        return self._free_blocks


def fake_cache_519(tables: dict, free_sectors: int = 3, free_blocks: int = 1):
    allocator = SimpleNamespace(
        index=0, block_table=tables, tokens_per_page=16, bytes_per_block=360_448, blocks_per_sector=1
    )
    return SimpleNamespace(
        cache_allocators={"full_attention": allocator},
        pool=FakePool519(free_sectors, free_blocks),
        num_blocks=10,
        bytes_per_sector=360_448,
    )


class FakeCache517:
    """transformers 5.17 PagedAttentionCache: per-group block tables behind blocks_in_use()."""

    def __init__(self, tables: dict, free: int) -> None:
        self.group_cache_managers = [SimpleNamespace(block_table=tables)]
        self.num_blocks, self.block_size = 10, 16
        self.num_key_value_heads, self.head_dim = 4, 64
        self.key_cache = [SimpleNamespace(element_size=lambda: 2)] * 22
        self._free = free

    def blocks_in_use(self, request_id: str) -> int:
        return len(self.group_cache_managers[0].block_table.get(request_id, ()))

    def get_num_free_blocks(self) -> int:
        return self._free


def test_the_519_layout_counts_block_tables_and_the_free_pool():
    view = cache_view(fake_cache_519({"1-0": [4, 5], "1-1": [6]}))
    assert isinstance(view, AllocatorsView) and view.layout == "cache_allocators"
    assert view.blocks_of("1-0") == 2 and view.blocks_of("1-9") == 0
    assert view.free_blocks() == 3 * 1 + 1 and view.num_blocks == 10 and view.block_size == 16
    assert view.bytes_per_block() == 360_448 and view.reserved_bytes() == 2 * 360_448


def test_the_517_layout_reads_the_same_figures():
    view = cache_view(FakeCache517({"1-0": [4, 5], "1-1": [6]}, free=7))
    assert isinstance(view, GroupsView) and view.layout == "group_cache_managers"
    assert view.blocks_of("1-0") == 2 and view.free_blocks() == 7 and view.num_blocks == 10
    assert view.bytes_per_block() == 2 * 22 * 16 * 4 * 64 * 2  # the lab's block formula, llama-1b in bf16


def test_an_unknown_layout_or_several_groups_stop_with_the_way_out():
    with pytest.raises(RuntimeError, match="--no-kv-samples"):
        cache_view(SimpleNamespace(num_blocks=3))
    two_groups = fake_cache_519({})
    two_groups.cache_allocators["sliding_attention"] = two_groups.cache_allocators["full_attention"]
    with pytest.raises(RuntimeError, match="2 attention groups"):
        cache_view(two_groups)


@pytest.mark.parametrize(
    "kernel, plain_is_paged, name",
    [
        ("sdpa", True, "sdpa"),
        ("sdpa", False, "paged|sdpa"),
        ("eager", True, "paged|eager"),
        ("eager", False, "paged|eager"),
        ("flash_attention_2", True, "flash_attention_2"),
        ("flash_attention_2", False, "paged|flash_attention_2"),
    ],
)
def test_attention_names_follow_the_installed_naming(kernel, plain_is_paged, name):
    assert paged_attention_name(kernel, plain_is_paged) == name


class FakeProcessor:
    """A batch processor whose update_batch finishes request 'b' and advances 'a'."""

    def __init__(self) -> None:
        self.scheduler = SimpleNamespace(
            active_requests={"a": SimpleNamespace(generated_tokens=[1]), "b": SimpleNamespace(generated_tokens=[])}
        )

    def update_batch(self) -> None:
        self.scheduler.active_requests["a"].generated_tokens.append(2)
        del self.scheduler.active_requests["b"]


def test_the_tap_runs_after_each_update_with_each_state_and_its_count_from_before():
    processor, seen = FakeProcessor(), []
    a_state = processor.scheduler.active_requests["a"]
    tap = StepTap(processor, lambda before: seen.append((before, set(processor.scheduler.active_requests))))
    processor.update_batch()
    ((before, active_after),) = seen
    assert active_after == {"a"} and {k: n for k, (_, n) in before.items()} == {"a": 1, "b": 0}
    state, generated = before["a"]
    assert state is a_state and len(state.generated_tokens) - generated == 1  # the token this step gave it
    assert tap.idle.is_set() and tap.error is None


def test_a_failing_sample_stops_sampling_not_the_engine():
    processor, calls = FakeProcessor(), []

    def broken(before):
        calls.append(before)
        raise KeyError("x")

    tap = StepTap(processor, broken)
    processor.update_batch()
    processor.scheduler.active_requests["b"] = SimpleNamespace(generated_tokens=[])
    processor.update_batch()  # no exception reaches the engine's loop
    assert tap.error == "KeyError: 'x'" and len(calls) == 1 and tap.idle.is_set()
