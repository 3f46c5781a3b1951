"""scripts/compact_results.py's per-folder step on a folder written for the test: what it removes, and what it keeps.

The folder holds only what `compact_run` reads: summary.json's backend/modes, the merged files and the
runs' own copies (tests/integration/test_compacted_run_folder.py compacts a real run and regenerates its report).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compact_results.py"


@pytest.fixture(scope="module")
def compact():
    spec = importlib.util.spec_from_file_location("compact_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def lines(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def record(mode: str, request_id: int) -> dict:
    return {"request_id": request_id, "backend": "hf", "mode": mode, "output_tokens": 8}


def collector(run: str) -> list[dict]:
    return [{"kind": "header", "run": run}, {"kind": "sample", "run": run, "t": 1.0}, {"kind": "summary", "run": run}]


def folder_of_two_runs(path: Path) -> rf.RunFolder:
    """hf-batched wholly merged; hf-sequential's second record missing from the merged file."""
    folder = rf.RunFolder(path)
    folder.part("hf-batched").path.mkdir(parents=True)
    folder.part("hf-sequential").path.mkdir(parents=True)
    rf.write_json(folder.summary, {"runs": [{"backend": "hf", "mode": mode} for mode in ("batched", "sequential")]})
    batched = [record("batched", 0), record("batched", 1)]
    sequential = [record("sequential", 0), record("sequential", 1)]
    folder.part("hf-batched").records.write_text(lines(batched))
    folder.part("hf-sequential").records.write_text(lines(sequential))
    folder.records.write_text(lines(batched + sequential[:1]))
    folder.part("hf-batched").timeline.write_text(lines(collector("hf-batched")))
    folder.part("hf-sequential").timeline.write_text(lines(collector("hf-sequential")) + '{"kind": "sam')  # torn
    samples = [row for run in ("hf-batched", "hf-sequential") for row in collector(run) if row["kind"] == "sample"]
    folder.timeline.write_text(lines(samples))
    return folder


def test_only_copies_wholly_in_the_merged_file_are_removed(compact, tmp_path):
    folder = folder_of_two_runs(tmp_path)
    done = compact.compact_run(tmp_path, apply=True)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in done.removed) == [
        "runs/hf-batched/records.jsonl",
        "runs/hf-batched/timeline.jsonl",
    ]
    kept = {p.relative_to(tmp_path).as_posix(): why for p, why in done.kept}
    assert "holds 1 lines of hf-sequential" in kept["runs/hf-sequential/records.jsonl"]
    assert "line (4) is torn" in kept["runs/hf-sequential/timeline.jsonl"]
    assert folder.part("hf-sequential").records.exists() and folder.part("hf-sequential").timeline.exists()
    assert not folder.part("hf-batched").records.exists()
    merged = rf.read_jsonl(folder.timeline)  # the collectors' header and summary lines put back
    assert merged == collector("hf-batched") + collector("hf-sequential")


def test_a_dry_run_changes_nothing(compact, tmp_path):
    folder_of_two_runs(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    done = compact.compact_run(tmp_path, apply=False)
    assert len(done.removed) == 2 and done.timeline_rewritten
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_copies_without_a_merged_file_stay(compact, tmp_path):
    folder = folder_of_two_runs(tmp_path)
    folder.records.unlink()
    done = compact.compact_run(tmp_path, apply=True)
    assert {why for p, why in done.kept if p.name == rf.RECORDS} == {"no merged records.jsonl"}
    assert folder.part("hf-batched").records.exists()
