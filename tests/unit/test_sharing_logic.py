"""Memory sharing's pure logic: the saving arithmetic by hand, the sweep's points, its bad input."""

from __future__ import annotations

import math

import pytest

from lab.accounting.sharing import memory_saving, pool_use, requests_per_budget
from lab.config import EngineSettings, ExperimentSpec, parse_backends
from lab.errors import LabInputError
from lab.experiments.sharing import SharingPoint, check_sharing_spec, parse_counts, sharing_points
from lab.online_settings import OnlineSettings
from lab.records import KvSample
from lab.report.sharing import SharingRow, observation
from lab.workloads import build_workload


class FakeTokenizer:
    """A fake: workloads of token counts never encode text."""

    def encode(self, text, add_special_tokens=False):
        return [1] * len(text)


def test_memory_saving_is_blocks_saved_over_blocks_without_sharing():
    # Two samples of one request, prompt 64 tokens = 4 blocks of 16, outputs 32 tokens = 2 blocks each:
    # without sharing 2 x (4 + 2) = 12 blocks; with the prompt shared 4 + 2 x 2 = 8; saved 4 of 12.
    assert memory_saving(8, 12) == pytest.approx(4 / 12)
    assert memory_saving(12, 12) == 0.0
    assert memory_saving(5, 0) is None


def test_pool_use_takes_step_means_peaks_tables_and_the_hit_rate():
    samples = [
        KvSample(
            t_s=0.0,
            step=0,
            blocks_used=8,
            held_blocks=12,
            usable_blocks=100,
            running=2,
            prefix_queries=128,
            prefix_hits=64,
        ),
        KvSample(
            t_s=1.0,
            step=1,
            blocks_used=10,
            held_blocks=14,
            usable_blocks=100,
            running=2,
            prefix_queries=0,
            prefix_hits=0,
        ),
    ]
    use = pool_use(samples, sequences=2)
    assert use.mean_blocks == 9.0 and use.peak_blocks == 10 and use.mean_table_blocks == 13.0
    assert use.in_run_saving == pytest.approx(1 - 9 / 13)
    assert use.hit_rate == 0.5
    # 100 usable blocks at 10 blocks per request (2 running sequences = 1 request of n=2)
    assert use.requests_per_budget == pytest.approx(10.0)


def test_pool_use_leaves_blocks_unknown_when_no_step_held_any():
    samples = [KvSample(t_s=0.0, step=0, blocks_used=0, held_blocks=0, prefix_queries=10, prefix_hits=5)]
    use = pool_use(samples)
    assert use.mean_blocks is None and use.hit_rate == 0.5


def test_requests_per_budget_is_budget_over_blocks_per_request():
    assert requests_per_budget(100, 30, 3) == 10.0
    assert requests_per_budget(None, 30, 3) is None


def test_points_cover_every_n_and_beam_with_every_prefix():
    points = sharing_points((1, 2), (4,), (0, 80))
    assert [p.label for p in points] == [
        "n=1",
        "n=1, prefix=80",
        "n=2",
        "n=2, prefix=80",
        "beam=4",
        "beam=4, prefix=80",
    ]
    assert sharing_points((), (), (341,)) == [SharingPoint(1, 1, 341)]


@pytest.mark.parametrize(
    ("text", "option", "minimum"), [("0", "--n", 1), ("2,x", "--beam-width", 1), ("-1", "--shared-prefix-tokens", 0)]
)
def test_bad_sweep_values_are_input_errors_naming_the_option(text, option, minimum):
    with pytest.raises(LabInputError, match=option):
        parse_counts(text, option, minimum)


def test_samples_and_beams_together_are_refused():
    with pytest.raises(LabInputError, match="--n 2 and --beam-width 2"):
        EngineSettings(model="m", workload="seed", n=2, beam_width=2)


def test_vllm_shared_runs_only_when_named():
    assert ("vllm", "shared") not in parse_backends("hf,vllm")
    assert parse_backends("vllm/shared") == (("vllm", "shared"),)


def test_shared_prefix_starts_every_prompt_and_leaves_their_own_ids():
    plain = build_workload("sharegpt-like", FakeTokenizer(), list(range(10, 60)), 2048, seed=3, num_requests=4)
    shared = build_workload(
        "sharegpt-like", FakeTokenizer(), list(range(10, 60)), 2048, seed=3, num_requests=4, shared_prefix_tokens=80
    )
    prefix = shared[0].prompt_token_ids[:80]
    for before, after in zip(plain, shared):
        assert after.prompt_token_ids == prefix + before.prompt_token_ids
        assert after.output_tokens == before.output_tokens


def test_samples_beams_or_a_shared_prefix_with_arrivals_over_time_are_refused():
    """Issues 16 and 17 do not combine (lab.config.SHARING_ONLINE): a spec file cannot get past the CLI's check."""
    over_time = (OnlineSettings(request_rates=(1.0, math.inf)), OnlineSettings(max_concurrency=2))
    for online in over_time:
        for sharing in ({"n": 2}, {"beam_width": 2}, {"shared_prefix_tokens": 80}):
            with pytest.raises(LabInputError, match="a memory-sharing sweep runs offline"):
                EngineSettings(model="m", workload="seed", online=online, **sharing)
    # Offline (every request at t=0) they run; one sequence a request takes arrivals (vllm/shared alone).
    assert EngineSettings(model="m", workload="seed", n=2, online=OnlineSettings(request_rates=(math.inf,))).n == 2
    assert EngineSettings(model="m", workload="seed", online=over_time[0]).online.is_sweep


def test_beam_search_on_vllm_with_a_model_folder_without_tokenizer_is_refused_up_front(tmp_path):
    # vLLM's beam search reads the tokenizer (EOS, the returned text): without one it failed mid-run.
    (tmp_path / "config.json").write_text("{}")
    spec = ExperimentSpec(EngineSettings(model=str(tmp_path), workload="seed"), runs=parse_backends("hf/batched,vllm"))
    with pytest.raises(LabInputError, match="--beam-width 2 with vLLM: vLLM's beam search needs the model's tokenizer"):
        check_sharing_spec(spec, [SharingPoint(beam_width=2)])
    assert check_sharing_spec(spec, [SharingPoint(n=2)]).runs[-1] == ("vllm", "shared")  # samples need none
    hf_only = ExperimentSpec(spec.engine, runs=parse_backends("hf/batched"))
    assert check_sharing_spec(hf_only, [SharingPoint(beam_width=2)]).runs == (("hf", "batched"),)
    (tmp_path / "tokenizer.json").write_text("{}")
    assert check_sharing_spec(spec, [SharingPoint(beam_width=2)])


def test_the_baseline_point_reports_what_sharing_on_changed_with_nothing_to_share():
    # n=1 on the H100 (2026-11-27): vllm/shared beside vllm/offline, 0% hits, 1.20x throughput (noise)
    offline = SharingRow("n=1", "baseline", "vllm/offline", "ok", 3501, 1466.6, mean_blocks=128.4)
    measured = {"mean_blocks": 128.4, "saving": -0.0, "hit_rate": 0.0, "gain_over_unshared": 1.204}
    shared = SharingRow("n=1", "baseline", "vllm/shared", "ok", 3501, 1765.7, **measured)
    line = observation("baseline", [offline, shared])
    assert line.startswith("n=1: the baseline, one sequence per request and nothing to share")
    assert "held -0.0% fewer blocks (hit rate 0%) and ran at 1.20x the throughput" in line
    assert observation("baseline", [offline]) is None  # no vllm/shared: nothing to say
