"""Which merged lines are a backend/mode's, when its own copy is wholly merged, and reading a compacted folder."""

import json

from lab import run_folder as rf
from lab.merged_rows import RunRows, as_merged, not_merged, rows_of_run, run_of, whole_timeline


def record(backend: str, mode: str, request_id: int) -> dict:
    return {"request_id": request_id, "backend": backend, "mode": mode, "output_tokens": 8}


def test_a_record_belongs_to_its_backend_and_mode_a_sample_to_its_run():
    assert run_of(record("hf", "batched", 0), rf.RECORDS) == "hf-batched"
    assert run_of({"run": "vllm-offline", "kv_usage": 0.5}, rf.KV_SAMPLES) == "vllm-offline"
    assert run_of({"kind": "header", "run": "hf-batched"}, rf.TIMELINE) == "hf-batched"
    assert run_of({"kv_usage": 0.5}, rf.KV_PASSES) is None


def test_rows_of_run_keeps_only_that_run_in_order():
    merged = [record("hf", "batched", 0), record("hf", "sequential", 0), record("hf", "batched", 1)]
    assert [r["request_id"] for r in rows_of_run(merged, rf.RECORDS, "hf-batched")] == [0, 1]
    assert rows_of_run(merged, rf.RECORDS, "vllm-offline") == []


def test_an_own_file_wholly_in_the_merged_file_may_go():
    own = [record("hf", "batched", 0), record("hf", "batched", 1)]
    merged = [record("hf", "sequential", 0), *own]
    assert not_merged(own, None, merged, rf.RECORDS, "hf-batched") is None
    kv = [{"step": 1, "kv_usage": 0.1}, {"step": 2, "kv_usage": 0.2}]
    merged_kv = [as_merged(row, rf.KV_SAMPLES, "hf-batched") for row in kv]
    assert merged_kv[0] == {"step": 1, "kv_usage": 0.1, "run": "hf-batched"}
    assert not_merged(kv, None, merged_kv, rf.KV_SAMPLES, "hf-batched") is None


def test_an_own_file_not_wholly_in_the_merged_file_is_refused():
    own = [record("hf", "batched", 0), record("hf", "batched", 1)]
    assert "holds 1 lines" in not_merged(own, None, own[:1], rf.RECORDS, "hf-batched")
    changed = [own[0], dict(own[1], output_tokens=7)]
    assert "not the same" in not_merged(own, None, changed, rf.RECORDS, "hf-batched")
    assert "not the same" in not_merged(own, None, own[::-1], rf.RECORDS, "hf-batched")  # order kept
    extra = [*own, record("hf", "batched", 2)]
    assert "holds 3 lines" in not_merged(own, None, extra, rf.RECORDS, "hf-batched")
    assert "holds 0 lines" in not_merged(own, None, [], rf.RECORDS, "hf-batched")


def test_an_own_file_with_a_torn_last_line_is_kept_though_its_whole_lines_are_merged():
    own = [record("hf", "batched", 0)]
    assert "line (2) is torn" in not_merged(own, 2, own, rf.RECORDS, "hf-batched")


def test_kv_lines_with_a_run_of_their_own_are_kept():
    own, merged = [{"step": 1, "run": "other"}], [{"step": 1, "run": "hf-batched"}]
    assert "'run' of their own" in not_merged(own, None, merged, rf.KV_SAMPLES, "hf-batched")


def timeline(run: str, times: list[float]) -> list[dict]:
    samples = [{"kind": "sample", "run": run, "t": t} for t in times]
    return [{"kind": "header", "run": run}, *samples, {"kind": "summary", "run": run, "samples": len(times)}]


def test_the_whole_timeline_puts_each_runs_header_and_summary_around_its_samples():
    a, b = timeline("hf-batched", [1.0, 2.0]), timeline("vllm-offline", [3.0])
    samples = [row for row in a + b if row["kind"] == "sample"]
    assert whole_timeline(samples, [a, b]) == a + b
    assert whole_timeline(a + b, [a, b]) == a + b  # already whole: unchanged


def test_the_whole_timeline_is_refused_where_the_merged_samples_differ():
    a, b = timeline("hf-batched", [1.0, 2.0]), timeline("vllm-offline", [3.0])
    assert whole_timeline([a[1], b[1]], [a, b]) is None  # a sample missing
    assert whole_timeline([a[1], a[2], b[1], {"kind": "sample", "run": "x"}], [a, b]) is None  # one more
    assert whole_timeline([b[1], a[1], a[2]], [a, b]) is None  # another order


def write_lines(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_run_rows_read_the_own_file_else_the_merged_files_lines_of_the_run(tmp_path):
    folder = rf.RunFolder(tmp_path)
    own = [record("hf", "batched", 9)]
    write_lines(folder.part("hf-batched").records, own)
    write_lines(folder.records, [record("hf", "batched", 0), record("hf", "sequential", 0)])
    write_lines(folder.kv_samples, [{"step": 1, "run": "hf-batched"}, {"step": 1, "run": "hf-sequential"}])
    rows = RunRows(folder)
    assert rows.of(rf.RECORDS, "hf-batched") == own  # the own file where it is there
    assert rows.of(rf.RECORDS, "hf-sequential") == [record("hf", "sequential", 0)]
    assert rows.of(rf.KV_SAMPLES, "hf-sequential") == [{"step": 1}]  # as the own file held it
    assert rows.of(rf.KV_PASSES, "hf-sequential") == []


def test_every_pass_kv_comes_from_kv_passes_else_from_an_older_runs_kv(tmp_path):
    folder = rf.RunFolder(tmp_path)
    write_lines(folder.kv_samples, [{"step": 2, "run": "hf-batched"}])
    assert RunRows(folder).kv_every_pass("hf-batched") == [{"step": 2}]  # written before kv_passes
    write_lines(folder.kv_passes, [{"step": 1, "run": "hf-batched"}, {"step": 2, "run": "hf-batched"}])
    assert RunRows(folder).kv_every_pass("hf-batched") == [{"step": 1}, {"step": 2}]
    write_lines(folder.part("hf-batched").kv_samples, [{"step": 2}])  # the last pass's own copy kept
    assert RunRows(folder).kv_every_pass("hf-batched") == [{"step": 1}, {"step": 2}]
