"""Run folders: atomic, never overwritten, only a torn last line skipped; typed records round-trip."""

import gzip

import pytest

from lab import run_folder as rf
from lab.errors import LabInputError
from lab.records import BackendResult, KvSample, RequestRecord


def test_run_folder_is_renamed_only_when_finished(tmp_path):
    with rf.creating(tmp_path, "run-1") as folder:
        assert folder.path.name == ".tmp-run-1" and not (tmp_path / "run-1").exists()
        assert folder.run_id == "run-1"
        rf.write_json(folder.manifest, {"a": 1})
    final = tmp_path / "run-1"
    assert not folder.path.exists()
    assert rf.read_json(final / rf.MANIFEST) == {"a": 1}


def test_an_existing_run_is_never_overwritten(tmp_path):
    (tmp_path / "run-1").mkdir()
    with pytest.raises(LabInputError, match="never overwritten"):
        with rf.creating(tmp_path, "run-1"):
            pass


def test_a_run_created_meanwhile_under_the_same_name_is_not_overwritten(tmp_path):
    with pytest.raises(LabInputError, match="never overwritten"):
        with rf.creating(tmp_path, "run-2"):
            (tmp_path / "run-2").mkdir()
    assert not (tmp_path / ".tmp-run-2").exists()


def test_a_failed_run_leaves_no_temporary_folder(tmp_path):
    with pytest.raises(RuntimeError):
        with rf.creating(tmp_path, "run-3") as folder:
            (folder.path / "half-written").write_text("x")
            raise RuntimeError("a step failed")
    assert list(tmp_path.iterdir()) == []


def test_jsonl_round_trip_and_torn_last_line(tmp_path):
    path = tmp_path / "x.jsonl"
    rf.write_jsonl(path, [{"a": 1}, {"a": 2}])
    with path.open("a") as f:
        f.write('{"a": 3')  # a writer killed mid-line
    assert rf.read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert rf.read_jsonl(tmp_path / "missing.jsonl") == []


def test_a_skipped_torn_last_line_is_named_by_its_number(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a"')
    lines = rf.JsonLines(path)
    assert list(lines) == [{"a": 1}, {"a": 2}]
    assert lines.torn_line == 4
    path.write_text('{"a": 1}\n')
    assert list(lines) == [{"a": 1}] and lines.torn_line is None


@pytest.mark.parametrize(
    "text, line",
    [
        ('{"a": 1}\nnot json\n{"a": 2}\n', 2),  # a malformed line in the middle
        ('{"a": 1}\n{"a": 2\n', 2),  # the last line, but whole (it ends with its newline): not torn
        ('{"a": 1}\n{"a": 2\n\n{"a": 3}', 2),  # a bad line followed by more, even after a blank one
    ],
)
def test_any_other_malformed_line_is_an_error_naming_the_file_and_the_line(tmp_path, text, line):
    path = tmp_path / "x.jsonl"
    path.write_text(text)
    with pytest.raises(rf.MalformedJsonLine, match=rf"x\.jsonl, line {line}: not valid JSON") as caught:
        rf.read_jsonl(path)
    assert isinstance(caught.value, LabInputError)  # `lab report` on a damaged folder exits 2


def test_a_gzipped_jsonl_file_is_read_with_the_same_rules(tmp_path):
    import gzip

    with gzip.open(tmp_path / "x.jsonl.gz", "wt") as f:
        f.write('{"a": 1}\nbad\n{"a": 2}\n')
    with pytest.raises(rf.MalformedJsonLine, match="line 2"):
        rf.read_jsonl(tmp_path / "x.jsonl")


def test_atomic_write_replaces_the_whole_file_and_leaves_no_part_file(tmp_path):
    path = tmp_path / "report.md"
    rf.atomic_write(path, "old")
    rf.atomic_write(path, "new")
    rf.atomic_write(tmp_path / "plot.png", b"\x89PNG")
    assert path.read_text() == "new" and (tmp_path / "plot.png").read_bytes() == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "report.md"]


def test_run_ids_are_unique():
    assert len({rf.new_run_id("x") for _ in range(50)}) == 50


def test_a_part_folder_names_every_file_of_one_backend_process(tmp_path):
    part = rf.RunFolder(tmp_path / ".tmp-run-4").part("hf-batched")
    assert part.path == tmp_path / ".tmp-run-4" / "runs" / "hf-batched"
    assert (part.result.name, part.records.name, part.kv_samples.name, part.timeline.name) == (
        "result.json",
        "records.jsonl",
        "kv.jsonl",
        "timeline.jsonl",
    )


def test_kv_samples_of_every_pass_fall_back_to_kv_jsonl_in_a_run_that_kept_only_its_last(tmp_path):
    part = rf.RunFolder(tmp_path / "run").part("vllm-offline")
    part.path.mkdir(parents=True)
    rf.write_jsonl(part.kv_samples, [{"t_s": 0.1, "step": 0}])
    assert part.kv_every_pass() == part.kv_samples  # an older run: kv.jsonl alone
    gzipped = part.kv_passes.with_name(part.kv_passes.name + ".gz")
    with gzip.open(gzipped, "wt") as out:  # as committed runs keep long files
        out.write('{"t_s": 0.1, "step": 0, "pass_index": 0}\n')
    assert part.kv_every_pass() == part.kv_passes and rf.read_jsonl(part.kv_every_pass())[0]["pass_index"] == 0


def test_records_round_trip_and_read_older_runs():
    times = [0.75, 1.0, 1.5, 1.75, 2.0]
    record = RequestRecord(
        3, 10, 5, 0.75, 2.0, scheduled_s=0.5, token_times_s=times, batch=1, backend="hf", mode="batched"
    )
    data = record.to_dict()
    assert data["ttft_s"] == 0.75 and data["e2e_s"] == 2.0  # from arrival, t=0
    assert data["queue_s"] == 0.5 and data["service_s"] == 1.5
    assert RequestRecord.from_dict(data) == record
    old = {"t_s": 0.1, "step": 0, "kv_usage": 0.5, "future_field": 1}  # no tokens_stored_exact, an unknown key
    assert KvSample.from_dict(old) == KvSample(t_s=0.1, step=0, kv_usage=0.5)
    result = BackendResult("vllm", "offline", status="ok", phases=[{"phase": "generate", "start": 1.0, "end": 2.0}])
    assert BackendResult.from_dict(result.to_dict()) == result
    assert result.phase("generate") == (1.0, 2.0) and result.phase("load") is None
    assert "traceback" not in result.to_dict() and result.to_dict()["error"] is None
