"""hf batches of several sequences per request (--n samples, --beam-width beams): transformers expands the
cache to requests x sequences rows, and the accounting counts every row. Exact expectations computed by hand.

The hand case: 2 requests, prompts 3 and 10 (W = 10), outputs 2 and 5 (N = 5), 2 sequences each, so 4 rows
of W + N - 1 = 14 slots at the end of the call; 8 bytes per token.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.accounting import bandwidth, kv
from lab.accounting.breakdown import hf_batch_steps, hf_cache_checks
from lab.config import EngineSettings
from lab.records import BackendResult, HfBatch
from lab.report.run_view import RunView, with_batch_sequences

FIXTURE = Path(__file__).parents[1] / "fixtures" / "run-cpu-tiny"
BYTES_PER_TOKEN = 8
TWO_SAMPLES = HfBatch(
    batch_size=2,
    padded_prompt_tokens=10,
    generated_tokens=5,
    prompt_tokens=[3, 10],
    output_tokens=[2, 5],
    start_s=0.0,
    end_s=1.0,
    cache_bytes=2 * 2 * 14 * BYTES_PER_TOKEN,  # requests x sequences x (W + N - 1) x bytes/token
    cache_slots_per_sequence=14,
    step_s=[0.2, 0.4, 0.6, 0.8, 1.0],
    sequences_per_request=2,
)


def _result(batch: HfBatch, static: bool = False, pinned: int | None = None) -> BackendResult:
    engine = {"batches": [batch.to_dict()], "cache_implementation": "static" if static else "dynamic"}
    if pinned:
        engine["static_cache_len"] = pinned
    return BackendResult(
        backend="hf", mode="batched", status="ok", model={"kv_bytes_per_token": BYTES_PER_TOKEN}, engine=engine
    )


def test_the_cache_bytes_of_two_requests_with_two_samples_agree_with_four_rows():
    assert TWO_SAMPLES.rows == 4
    check = hf_cache_checks(_result(TWO_SAMPLES))
    assert check["batches"][0]["arithmetic_bytes"] == 448 == TWO_SAMPLES.cache_bytes
    assert (check["agree"], check["total"]) == (1, 1)
    assert "requests x sequences" in check["formula"]
    one_row_each = dataclasses.replace(TWO_SAMPLES, sequences_per_request=1)  # the old count: half the bytes
    assert hf_cache_checks(_result(one_row_each))["agree"] == 0


def test_every_sample_holds_its_own_prompt_and_tokens_and_nothing_is_left_over():
    steps = hf_batch_steps(TWO_SAMPLES, static=False, bytes_per_token=BYTES_PER_TOKEN)
    total = kv.integrate(steps)
    # One row each: request 1 stores 3,4,4,4,4 and request 2 10..14 over steps 1..5: 79 slots; two rows each: 158.
    assert total.token_states == pytest.approx(158 * 0.2)
    # Padding: 7 slots in each of request 1's two rows at every step; finished: its rows' tokens 3..5.
    assert total.padding == pytest.approx(2 * 7 * 5 * 0.2)
    assert total.finished == pytest.approx(2 * (1 + 2 + 3) * 0.2)
    assert total.other == 0
    assert total.total() == pytest.approx(4 * (10 + 11 + 12 + 13 + 14) * 0.2)  # 4 rows of W + k - 1


def test_beam_width_two_counts_the_same_rows_as_two_samples():
    beams = EngineSettings("synthetic:tiny", "fixed", beam_width=2)
    assert beams.sequences == 2 == EngineSettings("synthetic:tiny", "fixed", n=2).sequences
    batch = dataclasses.replace(TWO_SAMPLES, sequences_per_request=beams.sequences)
    assert hf_cache_checks(_result(batch))["agree"] == 1
    assert kv.integrate(hf_batch_steps(batch, static=False, bytes_per_token=BYTES_PER_TOKEN)).other == 0


def test_a_static_batchs_padded_row_is_copied_per_sequence_too():
    # 2 requests + 1 filler row, 2 samples each: 6 rows of the pinned 14 slots.
    batch = dataclasses.replace(TWO_SAMPLES, padded_rows=1, cache_bytes=6 * 14 * BYTES_PER_TOKEN)
    assert hf_cache_checks(_result(batch, static=True, pinned=14))["agree"] == 1
    steps = hf_batch_steps(batch, static=True, bytes_per_token=BYTES_PER_TOKEN)
    total = kv.integrate(steps)
    assert total.other == 0 and total.total() == pytest.approx(6 * 14 * 5 * 0.2)
    # The filler's two rows hold 28 slots of padding at every step, beside request 1's 2 x 7.
    assert total.padding == pytest.approx((2 * 14 + 2 * 7) * 5 * 0.2)


def test_every_sample_row_is_read_at_each_decode_step():
    steps = bandwidth.hf_decode_steps(TWO_SAMPLES, static=False)
    # step k (2..5) reads 4 rows x (W + k - 1); useful: each row's P_i + k - 1 while O_i >= k
    assert [(slots, useful) for _, slots, useful in steps] == [
        (4 * 11, 2 * (4 + 11)),
        (4 * 12, 2 * 12),
        (4 * 13, 2 * 13),
        (4 * 14, 2 * 14),
    ]


def test_batches_of_older_runs_take_their_sequences_from_the_runs_settings(tmp_path):
    old = _result(TWO_SAMPLES)
    old.engine["batches"][0].pop("sequences_per_request")
    assert old.hf_batches[0].sequences_per_request == 1  # read alone, an older batch is one row per request
    assert with_batch_sequences(old, 2).hf_batches[0].sequences_per_request == 2
    newer = _result(dataclasses.replace(TWO_SAMPLES, sequences_per_request=3))
    assert with_batch_sequences(newer, 2).hf_batches[0].sequences_per_request == 3  # its own record wins
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)  # written before the field and before --n: one sequence a request
    view = RunView(run_dir)
    hf = next(run for run in view.runs if run.label == "hf/batched")
    assert {b.sequences_per_request for b in view.part(hf).result.hf_batches} == {1}
    manifest = rf.read_json(run_dir / rf.MANIFEST)
    manifest["config"]["engine"]["n"] = 2
    rf.write_json(run_dir / rf.MANIFEST, manifest)
    view = RunView(run_dir)
    assert {b.sequences_per_request for b in view.part(hf).result.hf_batches} == {2}
