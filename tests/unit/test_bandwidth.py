"""Decode bandwidth: the bytes each decode step must read, from hand-made step records."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.accounting import bandwidth
from lab.records import BackendResult, HfBatch, KvSample, RequestRecord
from lab.report.analyses import analyse
from lab.report.kv_markdown import bandwidth_section
from lab.report.run_view import RunView

FIXTURE = Path(__file__).parents[1] / "fixtures" / "run-cpu-tiny"
MODEL = {
    "weights_bytes": 1000,
    "vocab_size": 10,
    "hidden_size": 4,
    "dtype_bytes": 2,
    "tie_word_embeddings": False,
    "kv_bytes_per_token": 8,
}


def test_an_untied_embedding_table_is_not_read_by_a_decode_step():
    assert bandwidth.weight_bytes_read_per_step(MODEL) == 1000 - 10 * 4 * 2
    assert bandwidth.weight_bytes_read_per_step({**MODEL, "tie_word_embeddings": True}) == 1000


def test_hf_dynamic_steps_attend_the_padded_prompt_plus_the_tokens_so_far():
    batch = HfBatch(
        batch_size=3,
        padded_prompt_tokens=10,
        step_s=[0.5, 0.6, 0.8],
        cache_slots_per_sequence=12,
        prompt_tokens=[10, 4, 7],
        output_tokens=[3, 3, 2],
    )
    steps = bandwidth.hf_decode_steps(batch, static=False)
    # step 1 is the prefill; step k attends W + k - 1 slots per sequence; useful: P_i + k - 1 while O_i >= k
    assert steps == [(pytest.approx(0.1), 3 * 11, 11 + 5 + 8), (pytest.approx(0.2), 3 * 12, 12 + 6)]


def test_hf_static_steps_attend_every_slot_of_the_cache_but_only_own_tokens_are_useful():
    batch = HfBatch(
        batch_size=2,
        padded_prompt_tokens=10,
        step_s=[0.5, 0.6, 0.8],
        cache_slots_per_sequence=40,
        prompt_tokens=[10, 6],
        output_tokens=[3, 3],
    )
    assert [(slots, useful) for _, slots, useful in bandwidth.hf_decode_steps(batch, static=True)] == [
        (80, 11 + 7),
        (80, 12 + 8),
    ]


def test_older_hf_batches_without_lengths_have_no_useful_figure():
    batch = HfBatch(batch_size=2, padded_prompt_tokens=10, step_s=[0.5, 0.6], cache_slots_per_sequence=40)
    found = bandwidth.decode_traffic(bandwidth.hf_decode_steps(batch, static=True), 0, 1)
    assert found["useful_kv_bytes_per_step_mean"] is None and found["useful_gb_s"] is None


def test_hf_batches_without_step_times_give_no_steps():
    assert bandwidth.hf_decode_steps(HfBatch(batch_size=2, padded_prompt_tokens=4), static=False) == []


def test_vllm_steps_skip_prefills_and_count_the_fed_token():
    samples = [
        KvSample(step=0, t_s=0.10, tokens_stored=20, running=2, tokens_stored_exact=True),  # prefill
        KvSample(step=1, t_s=0.12, tokens_stored=22, running=2, tokens_stored_exact=True),
        KvSample(step=2, t_s=0.15, tokens_stored=30, running=3, tokens_stored_exact=True),  # a new prefill
        KvSample(step=3, t_s=0.16, tokens_stored=0, running=0, tokens_stored_exact=True),  # all finish
    ]
    records = [RequestRecord(i, 1, 1, first, 1.0) for i, first in enumerate((0.10, 0.10, 0.15))]
    steps = bandwidth.vllm_decode_steps(samples, records)
    assert steps == [(pytest.approx(0.02), 22, 22), (pytest.approx(0.01), 33, 33)]  # paged: every slot is useful


def _vllm_steps(exact: list[bool]) -> tuple[list[KvSample], list[RequestRecord]]:
    """A prefill (the sample at t = 0.1, when both requests got their first token), then one prefill-free step
    per entry, the sample before it exact or not."""
    samples = [
        KvSample(step=i, t_s=0.1 + i / 10, tokens_stored=20 + 2 * i, running=2, tokens_stored_exact=is_exact)
        for i, is_exact in enumerate([*exact, True])
    ]
    return samples, [RequestRecord(i, 10, 5, 0.1, 1.0) for i in range(2)]


def test_vllm_bandwidth_from_a_few_exact_steps_of_many_is_left_out_with_why():
    # n > 1: this process's count is inexact at nearly every step; the one exact step is not the decode phase.
    samples, records = _vllm_steps([False, False, True, False, False])
    assert len(bandwidth.vllm_decode_steps(samples, records)) == 1
    why = bandwidth.vllm_omission(samples, records)
    assert why is not None and "exact in 1 of 5 prefill-free steps" in why
    vllm = BackendResult(backend="vllm", mode="offline", status="ok", model=MODEL, engine={})
    assert bandwidth.run_bandwidth(vllm, samples, records, peak=None) is None
    assert bandwidth.omission(vllm, samples, records) == why
    lines = bandwidth_section([], None, "no GPU seen by NVML", {"vllm/offline": why})
    assert f"- vllm/offline: {why}" in lines


def test_vllm_bandwidth_from_mostly_exact_steps_counts_the_exact_ones():
    samples, records = _vllm_steps([True, True, False, True, True])  # 4 of 5 steps follow an exact sample
    assert bandwidth.vllm_omission(samples, records) is None
    vllm = BackendResult(backend="vllm", mode="offline", status="ok", model=MODEL, engine={})
    found = bandwidth.run_bandwidth(vllm, samples, records, peak=None)
    assert found is not None and found.decode_steps == 5 - 1


def test_decode_traffic_is_bytes_over_seconds():
    steps = [(0.5, 100, 50), (0.5, 300, 150)]
    found = bandwidth.decode_traffic(steps, weight_bytes=1_000_000_000, kv_bytes_per_token=10)
    assert found["decode_steps"] == 2 and found["steps_per_s"] == 2.0
    assert found["kv_bytes_per_step_mean"] == 2000 and found["useful_kv_bytes_per_step_mean"] == 1000
    assert found["achieved_gb_s"] == pytest.approx((2e9 + 4000) / 1e9)
    assert found["useful_gb_s"] == pytest.approx((2e9 + 2000) / 1e9)


def test_peak_comes_from_the_manifest_and_a_cpu_run_has_no_share(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    manifest = rf.read_json(run_dir / rf.MANIFEST)
    manifest["host"]["nvml"] = {"available": True, "gpus": [{"name": "GPU X", "peak_memory_bandwidth_gb_s": 3352.0}]}
    rf.write_json(run_dir / rf.MANIFEST, manifest)
    assert bandwidth.peak_gb_s(manifest) == (3352.0, "GPU X")
    found = analyse(RunView(run_dir))
    assert (found.peak_gb_s, found.peak_source) == (3352.0, "GPU X")
    lines = bandwidth_section(found.bandwidth, found.peak_gb_s, found.peak_source)
    assert lines[0] == "## Decode bandwidth"
    vllm_row = next(line for line in "\n".join(lines).splitlines() if line.startswith("| vllm/offline"))
    assert vllm_row.rstrip(" |").endswith("-")  # the fixture ran on the CPU: no GPU peak applies
