"""Run folders: atomic, never overwritten, torn lines skipped."""

import pytest

from lab import records as rec
from lab.errors import LabInputError


def test_run_folder_is_renamed_only_when_finished(tmp_path):
    tmp = rec.start_run_dir(tmp_path, "run-1")
    assert tmp.name == ".tmp-run-1" and not (tmp_path / "run-1").exists()
    rec.write_json(tmp / rec.MANIFEST, {"a": 1})
    final = rec.finish_run_dir(tmp)
    assert final == tmp_path / "run-1" and not tmp.exists()
    assert rec.read_json(final / rec.MANIFEST) == {"a": 1}


def test_an_existing_run_is_never_overwritten(tmp_path):
    (tmp_path / "run-1").mkdir()
    with pytest.raises(LabInputError, match="never overwritten"):
        rec.start_run_dir(tmp_path, "run-1")


def test_discard_removes_only_temporary_folders(tmp_path):
    tmp = rec.start_run_dir(tmp_path, "run-2")
    rec.discard_run_dir(tmp)
    assert not tmp.exists()
    keep = tmp_path / "kept"
    keep.mkdir()
    rec.discard_run_dir(keep)
    assert keep.exists()


def test_jsonl_round_trip_and_torn_last_line(tmp_path):
    path = tmp_path / "x.jsonl"
    rec.write_jsonl(path, [{"a": 1}, {"a": 2}])
    with path.open("a") as f:
        f.write('{"a": 3')  # a writer killed mid-line
    assert rec.read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert rec.read_jsonl(tmp_path / "missing.jsonl") == []


def test_run_ids_are_unique():
    assert len({rec.new_run_id("x") for _ in range(50)}) == 50
