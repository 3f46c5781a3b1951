"""How a backend process ended after its measured work: summary.json's `process_end` and the report's
section (pure logic, no engine)."""

from lab.experiments.merge import process_end
from lab.records import BackendResult, RunSummary
from lab.report.markdown import process_end_section


def test_process_end_keeps_only_what_went_wrong():
    clean = BackendResult(backend="hf", mode="batched", status="ok", leftover_pids=[])
    assert process_end(clean) is None
    stuck = BackendResult(
        backend="hf",
        mode="static-cache",
        status="ok",
        close_error="distributed teardown still running after 30 s; the process went on without it",
        exit_stuck_s=120.0,
        leftover_pids=[41, 42],
    )
    assert process_end(stuck) == {
        "close_error": "distributed teardown still running after 30 s; the process went on without it",
        "exit_stuck_s": 120.0,
        "leftover_pids": [41, 42],
    }


def test_report_names_each_backend_whose_end_went_wrong_and_only_those():
    ended_well = RunSummary(backend="vllm", mode="offline", status="ok")
    hung = RunSummary(
        backend="hf",
        mode="static-cache",
        status="ok",
        process_end={"close_error": "distributed teardown still running after 30 s", "exit_stuck_s": 120.0},
    )
    assert process_end_section([ended_well]) == []
    lines = process_end_section([ended_well, hung])
    assert "## How the processes ended" in lines
    notes = [line for line in lines if line.startswith("- ")]
    assert notes == [
        "- hf/static-cache: closing its engine failed or hung: distributed teardown still running after 30 s; "
        "still running 120 s after writing its result: stopped, result kept"
    ]


def test_an_older_summary_without_the_field_still_loads():
    summary = RunSummary.from_dict({"backend": "hf", "mode": "batched", "status": "ok"})
    assert summary.process_end is None
    assert process_end_section([summary]) == []
