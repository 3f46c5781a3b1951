"""hf/continuous's memory sharing, its pure parts: the options it gives transformers, the grouping of
forked sequences into requests, the readers of transformers' cached blocks (against fakes of both
layouts), and the sharing report's rows, sentence and plot for it. The real engine forks in
tests/integration/test_sharing_engines.py (transformers 5.19) and tests/gpu (5.17)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lab.backends.hf_continuous_hooks import AllocatorsView, cache_view, forget_cached_blocks, parent_id
from lab.backends.hf_continuous_sharing import (
    Sequences,
    block_sharing,
    check_prompts,
    generation_options,
    pass_seed,
)
from lab.config import EngineSettings, ExperimentSpec
from lab.errors import LabInputError
from lab.experiments.sharing import SharingPoint, check_sharing_spec
from lab.records import BackendResult, KvSample, RunSummary
from lab.report.run_view import RunPart
from lab.report.sharing import SharingRow, _with_memory, forking_observation
from lab.report.sharing_plot import plot_saving
from lab.workloads import Request


def engine(**kw) -> EngineSettings:
    return EngineSettings(model="m", workload="seed", **kw)


def test_n_samples_ask_transformers_for_forks_with_hf_batcheds_sampling():
    options = generation_options(engine(n=3))
    assert options == {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "num_return_sequences": 3}
    assert generation_options(engine()) == {"do_sample": False}


def test_beams_are_refused_naming_what_transformers_lacks():
    with pytest.raises(LabInputError, match="reads no num_beams"):
        generation_options(engine(beam_width=2))


def test_block_sharing_is_on_only_where_the_point_shares_something():
    assert block_sharing(engine(n=2)) and block_sharing(engine(shared_prefix_tokens=64))
    assert not block_sharing(engine())


def test_samples_are_seeded_the_same_every_pass_and_greedy_needs_no_seed():
    assert pass_seed(engine(n=2, seed=5)) == pass_seed(engine(n=2, seed=5)) != pass_seed(engine(n=2, seed=6))
    assert pass_seed(engine()) is None


def test_one_token_prompts_cannot_be_forked():
    requests = [Request(0, (5, 6), 4), Request(1, (7,), 4)]
    with pytest.raises(LabInputError, match=r"requests \[1\] have one-token prompts"):
        check_prompts(requests, 2)
    check_prompts(requests, 1)  # no fork: any prompt


def test_a_request_completes_when_all_its_sequences_are_in_parent_first():
    def out(request_id):  # a fake of transformers' GenerationOutput: its id and error are read here
        return SimpleNamespace(request_id=request_id, error=None)

    sequences = Sequences(3)
    assert not sequences.add(out("1-4__child#1")) and not sequences.add(out("1-4"))
    assert [o.request_id for o in sequences.of("1-4")] == ["1-4", "1-4__child#1"]  # partial, in order
    assert sequences.add(out("1-4__child#0"))
    assert [o.request_id for o in sequences.of("1-4")] == ["1-4", "1-4__child#0", "1-4__child#1"]
    assert sequences.of("1-5") == [] and parent_id("1-4__child#0") == "1-4" == parent_id("1-4")


def test_a_failed_sequence_completes_its_request_once():
    def out(request_id, error=None):  # a fake of transformers' GenerationOutput
        return SimpleNamespace(request_id=request_id, error=error)

    sequences = Sequences(2)
    assert sequences.add(out("1-0", error="out of memory"))  # failed before its fork: nothing more will come
    assert not sequences.add(out("1-0__child#0"))  # a late sibling is kept for the record, not counted again
    assert len(sequences.of("1-0")) == 2


def test_a_sweep_takes_hf_continuous_for_samples_and_refuses_it_for_beams():
    spec = ExperimentSpec(engine=engine(), runs=(("hf", "continuous"),))
    assert check_sharing_spec(spec, [SharingPoint(n=2)]).runs == (("hf", "continuous"),)
    with pytest.raises(LabInputError, match="--beam-width 4: hf/continuous has no beam search"):
        check_sharing_spec(spec, [SharingPoint(n=2), SharingPoint(beam_width=4)])


# -- transformers' cached blocks: fakes of the attributes read, as 5.19 and 5.17 define them --------------


class FakeCache519:
    """transformers 5.19 PagedAttentionCache: one allocator, its ledger's cached blocks, a pool of sectors."""

    def __init__(self, cached: list[int]) -> None:
        ledger = SimpleNamespace(cached_blocks=dict.fromkeys(cached))
        self.allocator = SimpleNamespace(index=0, block_table={}, tokens_per_page=16, blocks_per_sector=1,
                                         ledger=ledger)  # fmt: skip
        self.cache_allocators = {"full_attention": self.allocator}
        self.pool = SimpleNamespace(num_free_sectors=2, count_free_blocks=lambda index: 1, returned=[])
        self.num_blocks = 10

    def evict_cached_blocks(self) -> bool:
        self.pool.returned += list(self.allocator.ledger.cached_blocks)
        self.allocator.ledger.cached_blocks.clear()
        return bool(self.pool.returned)


class FakeBlockManager517:
    """transformers 5.17 BlockManager: uninitialized and initialized (complete, unreferenced) free blocks."""

    def __init__(self, uninit: list[int], init: list[int]) -> None:
        self._uninit_block_ids, self._init_block_ids = list(uninit), dict.fromkeys(init)

    @property
    def num_free_blocks(self) -> int:
        return len(self._uninit_block_ids) + len(self._init_block_ids)

    def has_enough_free_blocks(self, n_blocks: int) -> bool:  # as 5.17's: uninitializes what it lacks
        while len(self._uninit_block_ids) < n_blocks and self._init_block_ids:
            self._uninit_block_ids.append(self._init_block_ids.popitem()[0])
        return len(self._uninit_block_ids) >= n_blocks


def test_blocks_kept_only_for_their_content_count_free_in_5_19():
    view = cache_view(FakeCache519(cached=[7, 8, 9]))
    assert isinstance(view, AllocatorsView) and view.free_blocks() == 1 + 2 * 1 + 3


def test_cached_blocks_are_dropped_before_a_pass_in_both_layouts():
    cache = FakeCache519(cached=[7, 8])
    assert forget_cached_blocks(cache) == 2 and cache.pool.returned == [7, 8]
    manager = FakeBlockManager517(uninit=[1, 2], init=[5, 6, 7])
    assert forget_cached_blocks(SimpleNamespace(_block_manager=manager)) == 3
    assert manager._init_block_ids == {} and sorted(manager._uninit_block_ids) == [1, 2, 5, 6, 7]


# -- the sharing report ------------------------------------------------------------------------------------


def continuous_part(samples: list[KvSample]) -> RunPart:
    result = BackendResult(backend="hf", mode="continuous", status="ok", engine={"kv_bytes_per_block": 1024})
    return RunPart(RunSummary(backend="hf", mode="continuous", status="ok"), result, [], samples)


def test_hf_continuous_saving_is_its_tables_against_its_pool():
    # Two requests of n=2 with a 5-block prompt shared by each pair and one block of their own per sequence:
    # tables 2 x 2 x 6 = 24 blocks; physical 2 x (5 + 2) = 14; saved 10 of 24.
    samples = [KvSample(t_s=s, step=s, blocks_used=14, held_blocks=24, usable_blocks=100, running=4) for s in (0, 1)]
    row = _with_memory(
        SharingRow("n=2", "parallel sampling", "hf/continuous", "ok", 96, 1.0), continuous_part(samples), 2
    )
    assert row.mean_blocks == 14 and row.saving == row.in_run_saving == pytest.approx(10 / 24)
    assert row.mean_kv_bytes == 14 * 1024 and row.requests_per_budget == pytest.approx(100 / 7)
    assert "held 41.7% fewer blocks" in forking_observation("parallel sampling", [row])
    assert "outside the paper's parallel sampling range" in forking_observation("parallel sampling", [row])
    assert forking_observation("baseline", [row]) is None


def test_the_saving_plot_draws_hf_continuous_without_vllm(tmp_path):
    row = SharingRow("n=2", "parallel sampling", "hf/continuous", "ok", 96, 1.0, saving=0.25)
    assert plot_saving([row], tmp_path / "saving.png") and (tmp_path / "saving.png").stat().st_size > 0
    assert not plot_saving([SharingRow("n=2", "parallel sampling", "hf/batched", "ok", 96, 1.0)], tmp_path / "x.png")
