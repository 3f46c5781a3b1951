"""report.md's garbage-collection section and conditions note (lab.report.gc_markdown), from passes as
result.json records them (TimedPass.to_dict); older runs, without them, get neither."""

from __future__ import annotations

from lab.gc_pauses import summarize
from lab.pass_records import TimedPass
from lab.records import RunSummary
from lab.report.gc_markdown import frozen_note, gc_section


def _run(passes: list[TimedPass]) -> RunSummary:
    return RunSummary("vllm", "offline", status="ok", passes=[p.to_dict() for p in passes])


def test_each_pass_shows_its_pauses_their_share_and_the_engine_cores():
    lab_gc = summarize([(0, 0.002), (2, 0.498)], frozen_objects=1_234_567)  # 500 ms in a 10 s pass: 5 %
    core = {"count": 40, "total_ms": 12.5, "full_count": 0, "full_ms": 0.0, "max_ms_so_far": 2.0}
    text = "\n".join(gc_section([_run([TimedPass(0, 10.0, gc=lab_gc, engine_gc=core)])]))
    assert "| vllm/offline " in text
    assert "2 (500.0 ms; 1 full; longest 498.0 ms)" in text
    assert "| 5.0 " in text
    assert "1,234,567" in text
    assert "40 (12.5 ms; 0 full, 0.0 ms)" in text
    assert frozen_note([_run([TimedPass(0, 10.0, gc=lab_gc)])]).startswith("; the lab process's heap")


def test_runs_recorded_before_gc_pauses_get_no_section_and_no_note():
    older = _run([TimedPass(0, 10.0)])
    assert gc_section([older]) == [] and frozen_note([older]) == ""
