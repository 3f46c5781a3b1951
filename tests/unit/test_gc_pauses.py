"""lab.gc_pauses' arithmetic: pauses summed per generation, and running totals differenced per window.

The collector here is a fake: a plain list stands for `gc.callbacks` and the test calls the registered
callback as CPython would ("start", then "stop" with the generation), with a fake clock advanced by hand.
"""

from __future__ import annotations

import gc

import pytest

from lab.gc_pauses import GcPauses, GcTally, between, summarize
from lab.pass_records import TimedPass


class FakeClock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def fake_collection(callbacks: list, clock: FakeClock, generation: int, seconds: float) -> None:
    """One collection as CPython reports it to every callback in gc.callbacks."""
    for callback in list(callbacks):
        callback("start", {"generation": generation})
    clock.t += seconds
    for callback in list(callbacks):
        callback("stop", {"generation": generation, "collected": 0, "uncollectable": 0})


def test_pauses_are_summed_per_generation_with_the_longest():
    callbacks, clock = [], FakeClock()
    with GcPauses(callbacks, clock) as pauses:
        for generation, seconds in ((0, 0.001), (0, 0.003), (1, 0.010), (2, 0.450)):
            fake_collection(callbacks, clock, generation, seconds)
            clock.t += 1.0  # time between collections is not a pause
    assert callbacks == []  # the callback leaves with the window
    totals = pauses.totals()
    assert totals["count"] == 4
    assert totals["total_ms"] == pytest.approx(464.0)
    assert totals["max_ms"] == pytest.approx(450.0)
    assert totals["by_generation"]["0"] == {"count": 2, "total_ms": pytest.approx(4.0), "max_ms": pytest.approx(3.0)}
    assert totals["by_generation"]["2"]["count"] == 1
    assert sorted(totals["by_generation"]) == ["0", "1", "2"]


def test_collections_outside_the_window_are_not_counted():
    callbacks, clock = [], FakeClock()
    pauses = GcPauses(callbacks, clock)
    fake_collection(callbacks, clock, 2, 1.0)  # before start: not registered yet
    pauses.start()
    fake_collection(callbacks, clock, 0, 0.002)
    assert pauses.stop()["count"] == 1
    fake_collection(callbacks, clock, 2, 1.0)  # after stop
    assert pauses.totals()["count"] == 1 and pauses.totals()["total_ms"] == pytest.approx(2.0)


def test_no_collection_gives_zeros():
    assert summarize([]) == {"count": 0, "total_ms": 0.0, "max_ms": 0.0, "by_generation": {}, "frozen_objects": None}


def test_freeze_moves_the_heap_to_the_permanent_generation_and_is_recorded():
    keep = [[i] for i in range(1000)]  # tracked objects alive now
    try:
        with GcPauses(callbacks=[], freeze=True) as pauses:
            assert gc.get_freeze_count() >= len(keep)
        assert pauses.totals()["frozen_objects"] >= len(keep)
    finally:
        gc.unfreeze()  # this test process's own heap back as it was


def test_tally_totals_difference_into_one_windows_collections():
    callbacks, clock = [], FakeClock()
    tally = GcTally(callbacks, clock).start()
    fake_collection(callbacks, clock, 0, 0.004)
    before = tally.totals()
    fake_collection(callbacks, clock, 2, 0.300)
    fake_collection(callbacks, clock, 1, 0.020)
    window = between(before, tally.totals())
    assert window["count"] == 2 and window["full_count"] == 1
    assert window["total_ms"] == pytest.approx(320.0) and window["full_ms"] == pytest.approx(300.0)
    assert window["max_ms_so_far"] == pytest.approx(300.0)
    assert between(None, tally.totals())["count"] == 3  # no earlier totals: since the tally started


def test_a_timed_pass_keeps_its_pauses_through_result_json():
    pauses = summarize([(2, 0.5), (0, 0.001)], frozen_objects=123)
    engine = {"count": 7, "total_ms": 3.0, "full_count": 0, "full_ms": 0.0, "max_ms_so_far": 1.0}
    loaded = TimedPass.from_dict(TimedPass(0, 9.0, gc=pauses, engine_gc=engine).to_dict())
    assert loaded.gc == pauses and loaded.engine_gc == engine
    older = TimedPass.from_dict({"index": 0, "duration_s": 9.0})  # a run from before these fields
    assert older.gc is None and older.engine_gc is None
