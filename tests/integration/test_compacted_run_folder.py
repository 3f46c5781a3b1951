"""scripts/compact_results.py on a real run of synthetic:tiny: the per-run copies go, the report stays."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.merged_rows import MERGED_FILES
from lab.report.run_view import RunView

pytestmark = pytest.mark.engine

RUNS = ("hf/batched", "hf/sequential")
REQUESTS, OUTPUT_TOKENS, PASSES = 4, 8, 2  # the seed workload's requests
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "compact_results.py"


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("results")
    proc = subprocess.run(
        [sys.executable, "-m", "lab", "experiment", "--backends", ",".join(RUNS), "--model", str(tiny_model),
         "--device", "cpu", "--workload", "seed", "--output-tokens", str(OUTPUT_TOKENS), "--repeats", str(PASSES),
         "--results", str(results)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def lab_report(run_dir: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "lab", "report", str(run_dir)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (run_dir / rf.REPORT).read_text()


def compact_results(run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the script imports lab, as it does run from the repository
    return subprocess.run([sys.executable, str(SCRIPT), str(run_dir)], capture_output=True, text=True, env=env)


def test_compacting_keeps_each_line_once_and_the_report_regenerates_identically(run_dir, tmp_path):
    before = lab_report(run_dir)
    compact = tmp_path / run_dir.name
    shutil.copytree(run_dir, compact)
    proc = compact_results(compact)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = [label.replace("/", "-") for label in RUNS]
    left = {name: [f for f in MERGED_FILES if rf.existing(compact / rf.RUNS / name / f)] for name in names}
    assert left == dict.fromkeys(names, [])
    assert all(rf.existing(compact / f) for f in (rf.RECORDS, rf.KV_SAMPLES, rf.KV_PASSES, rf.TIMELINE))
    timeline = rf.read_jsonl(compact / rf.TIMELINE)
    assert [row["run"] for row in timeline if row["kind"] == "header"] == names  # the collector's lines kept
    assert lab_report(compact) == before
    view = RunView(compact)
    for name in names:
        records = view.records(name)
        assert [r.output_tokens for r in records] == [OUTPUT_TOKENS] * (REQUESTS * PASSES), name
    again = compact_results(compact)
    assert again.returncode == 0 and again.stdout == "", again.stdout  # nothing left to do
