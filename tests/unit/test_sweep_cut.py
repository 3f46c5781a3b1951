"""A sweep cut off part-way keeps what finished (`lab.experiments.sweep`, `lab.cut`, `lab.rates_kept`):
the cut's reason and exit code, which points are kept and which are named as not run, an online sweep's
finished rates inside one backend's result, and the lines the reports give it. Pure logic, with a fake
supervisor where no process is needed, and the real one (sleeping Python processes) for the signals."""

from __future__ import annotations

import os
import signal
import time

import pytest

from lab import run_folder as rf
from lab.config import CapacitySpec, EngineSettings, RunSpec
from lab.cut import Cut, cut_entry
from lab.errors import Interrupted, LabInputError, StepFailed
from lab.experiments import capacity
from lab.experiments.backend_run import recut
from lab.experiments.steps import Finished
from lab.experiments.sweep import Sweep
from lab.launchers.process import LabProcess
from lab.launchers.supervisor import Supervisor
from lab.rates_kept import FinishedRates, keep_finished_rates
from lab.records import BackendResult, RunSummary
from lab.report.cut_markdown import cut_lines, rates_cut_lines

# ----------------------------------------------------------------------------- the cut and its exit code


def test_a_signal_cut_names_the_signal_and_exits_128_plus_its_number():
    cut = Cut.of(Interrupted(signal.SIGTERM), "n=2", ["n=2", "n=4"])
    assert (cut.reason, cut.signal, cut.cut_at, cut.points_not_run) == (
        "interrupted by SIGTERM",
        "SIGTERM",
        "n=2",
        ["n=2", "n=4"],
    )
    assert cut.exit_code == 143
    assert Cut.of(KeyboardInterrupt()).exit_code == 130  # Ctrl-C where no handler was installed
    assert Cut.of(Interrupted(signal.SIGHUP)).exit_code == 129


def test_an_error_cut_exits_1_never_2_even_for_a_later_points_bad_input():
    failed = Cut.of(StepFailed("building or checking model m failed (exit 1):\nTraceback\nOSError: disk full"), "n=4")
    assert failed.reason == "StepFailed: building or checking model m failed (exit 1):"
    assert failed.detail.endswith("OSError: disk full") and failed.signal is None
    assert failed.exit_code == 1
    assert Cut.of(LabInputError("shared prefix too long"), "prefix=9000").exit_code == 1  # results were written


def test_a_cut_round_trips_through_its_file_form():
    cut = Cut("interrupted by SIGINT", "SIGINT", "hf/batched", ["hf/batched", "vllm/offline"], partial=True)
    assert Cut.from_dict(cut.to_dict()) == cut
    assert "partial" not in Cut("timed out").to_dict() and "detail" not in Cut("timed out").to_dict()
    assert Cut.from_dict(None) is None
    assert cut_entry(None) == {} and cut_entry(cut) == {"cut": cut.to_dict()}


def test_a_cut_run_exits_with_the_cuts_code_over_its_failures():
    cut = Cut.of(Interrupted(signal.SIGTERM), "n=2", ["n=2"])
    assert Finished("x", 2, ["n=1: vllm/shared"], cut).exit_code == 143
    assert Finished("x", 2, ["n=1: vllm/shared"]).exit_code == 1
    assert Finished("x", 2, []).exit_code == 0


# ----------------------------------------------------------------------------- the sweep


class FakeSupervisor:
    """Stands in for `Supervisor` where no process runs: records what the sweep asked of it."""

    def __init__(self) -> None:
        self.stopped_after: list[BaseException] = []
        self.held = 0

    def stop_after(self, exc: BaseException | None) -> None:
        self.stopped_after.append(exc)

    def hold_signals(self) -> None:
        self.held += 1


def fake_points(cut_at: str, exc: BaseException):
    """A run of points 'a', 'b', ... that returns the point's name upper-cased, and raises `exc` at `cut_at`."""

    def run(point: str) -> str:
        if point == cut_at:
            raise exc
        return point.upper()

    return run


def test_every_point_finished_holds_the_signals_while_the_run_is_written():
    processes, said = FakeSupervisor(), []
    sweep = Sweep(processes, said.append)
    assert sweep.run(["a", "b"], str.upper) is True
    swept = sweep.end()
    assert (swept.done, swept.cut) == (["A", "B"], None)
    assert processes.held == 1 and processes.stopped_after == [] and said == []


def test_a_cut_keeps_the_finished_points_and_names_the_rest_as_not_run():
    processes, said, salvaged = FakeSupervisor(), [], []
    stop = Interrupted(signal.SIGTERM)
    sweep = Sweep(processes, said.append, salvage=lambda point, cut: salvaged.append((point, cut)))
    assert sweep.run(["a", "b", "c", "d"], fake_points("c", stop)) is False
    swept = sweep.end()
    assert swept.done == ["A", "B"]
    assert swept.cut == Cut("interrupted by SIGTERM", "SIGTERM", "c", ["c", "d"])
    assert processes.stopped_after == [stop]  # the cut point's processes stopped before its files are touched
    assert salvaged == [("c", swept.cut)]
    assert said == ["cut off (interrupted by SIGTERM at c; not run: c, d): keeping the 2 point(s) that finished"]


def test_a_cut_before_any_point_finished_goes_on_up():
    processes = FakeSupervisor()
    stop = Interrupted(signal.SIGINT)
    with pytest.raises(Interrupted):
        Sweep(processes, print).run(["a", "b"], fake_points("a", stop))
    assert processes.stopped_after == []  # the supervisor's own exit stops them, as before
    with pytest.raises(Interrupted):  # with a salvage that keeps nothing of the cut point: the same
        Sweep(processes, print, salvage=lambda point, cut: None).run(["a", "b"], fake_points("a", stop))


def test_a_cut_point_that_kept_part_of_itself_is_kept_and_marked_partial():
    processes, said = FakeSupervisor(), []
    sweep = Sweep(processes, said.append, salvage=lambda point, cut: f"{point.upper()} (rates 1, 2)")
    sweep.run(["a", "b"], fake_points("a", Interrupted(signal.SIGTERM)))
    swept = sweep.end()
    assert swept.done == ["A (rates 1, 2)"]
    assert swept.cut.partial and swept.cut.points_not_run == ["a", "b"]
    assert said[-1].endswith("keeping the 1 point(s) that finished (the last of them in part)")


def test_one_point_of_an_outer_sweep_is_whole_or_not_at_all():
    processes, salvaged = FakeSupervisor(), []
    stop = Interrupted(signal.SIGTERM)
    sweep = Sweep(processes, print, salvage=lambda point, cut: salvaged.append(point) or "kept", keep=False)
    with pytest.raises(Interrupted):
        sweep.run(["a", "b"], fake_points("b", stop))
    # Its cut point is still told (its log shown, its files removed), but nothing is kept: the cut goes on up.
    assert processes.stopped_after == [stop] and salvaged == ["b"] and sweep.cut is None
    inner = Sweep(FakeSupervisor(), print, keep=False)
    inner.run(["a"], str.upper)
    inner.end()
    assert inner.processes.held == 0  # the outer sweep's handler stays: its own cut must still be seen


def test_a_cut_holds_the_signals_before_anything_else():
    """A second signal while the cut point is stopped and the finished points are kept must not cut that
    short: the hold comes first, before the processes are stopped."""
    order: list[str] = []

    class Recording(FakeSupervisor):
        def hold_signals(self) -> None:
            order.append("hold")

        def stop_after(self, exc: BaseException | None) -> None:
            order.append("stop")

    sweep = Sweep(Recording(), print, salvage=lambda point, cut: order.append("salvage"))
    sweep.run(["a", "b"], fake_points("b", Interrupted(signal.SIGINT)))
    assert order == ["hold", "stop", "salvage"]


def test_a_second_call_runs_nothing_once_cut_and_counts_the_first_calls_points():
    """`lab capacity`: its first point decides the later ones, so it runs them in two calls."""
    processes, said = FakeSupervisor(), []
    sweep = Sweep(processes, said.append, salvage=lambda point, cut: None)
    assert sweep.run(["budget"], str.upper)
    assert not sweep.run(["x", "y"], fake_points("x", StepFailed("building the model failed")))
    assert not sweep.run(["z"], str.upper)
    swept = sweep.end()
    assert swept.done == ["BUDGET"] and swept.cut.points_not_run == ["x", "y"] and swept.cut.exit_code == 1
    assert said[0] == "error at x: building the model failed"


def test_an_unexpected_error_that_cuts_a_sweep_is_shown_with_its_traceback():
    said: list[str] = []
    sweep = Sweep(FakeSupervisor(), said.append)
    sweep.run(["a", "b"], fake_points("b", OSError(28, "No space left on device")))
    assert sweep.end().cut.reason == "OSError: [Errno 28] No space left on device"
    assert said[0].startswith("error at b:\nTraceback (most recent call last):")


def test_sigterm_during_a_point_stops_its_process_and_holds_signals_until_the_run_is_written(fake_launcher):
    before = signal.getsignal(signal.SIGTERM)
    started: list[LabProcess] = []

    def run(point: str) -> str:
        if point == "b":  # a backend that runs until the SIGTERM arrives
            started.append(processes.start("hf", [], f"hf-{point}"))
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        return point.upper()

    with Supervisor(fake_launcher, "run-3", print, grace_s=2) as processes:
        sweep = Sweep(processes, print)
        sweep.run(["a", "b", "c"], run)
        swept = sweep.end()
        assert processes.running == [] and started[0].returncode is not None  # stopped, not orphaned
        os.kill(os.getpid(), signal.SIGTERM)  # while the run is written: held, it cuts nothing short
    assert (
        swept.done == ["A"] and swept.cut.reason == "interrupted by SIGTERM" and swept.cut.points_not_run == ["b", "c"]
    )
    assert signal.getsignal(signal.SIGTERM) is before


# ----------------------------------------------------------------------------- an online sweep's finished rates


def result_cut_at_second_rate() -> BackendResult:
    """A backend's result after rate 1's two passes and the first pass of rate 4 (of 1, 4, inf), cut in
    the second pass of rate 4 (its phase ended by the runner's `end_open`)."""
    phases = [{"phase": "load", "start": 0, "end": 1}, {"phase": "warmup", "start": 1, "end": 2}]
    phases += [{"phase": "repeat", "start": 2 + k, "end": 2.5 + k} for k in range(4)]
    passes = [{"index": k, "duration_s": 0.5, "memory": {"peak_allocated_bytes": 100 + k}} for k in range(3)]
    return BackendResult(
        "hf",
        "batched",
        status="error",
        error="interrupted (SIGTERM)",
        phases=phases,
        passes=passes,
        passes_s=[0.5, 0.5, 0.4],
        generate_s=0.4,
        memory={"peak_allocated_bytes": 102},
    )


def test_a_cut_online_sweep_keeps_its_finished_rates_and_names_the_rest():
    result, finished = result_cut_at_second_rate(), FinishedRates()
    finished.add(1.0, ["r1", "r2"], ["s1"], passes=2)
    assert keep_finished_rates(result, finished, (1.0, 4.0, float("inf")), Cut.of(Interrupted(signal.SIGTERM)))
    assert result.cut == {
        "reason": "interrupted by SIGTERM",
        "signal": "SIGTERM",
        "cut_at": 4.0,
        "points_not_run": [4.0, "inf"],
    }
    assert [p["index"] for p in result.passes] == [0, 1] and result.passes_s == [0.5, 0.5]
    assert result.generate_s == 0.5 and result.memory == {"peak_allocated_bytes": 101}  # the last kept pass's
    # Timed phases: the kept passes, the last of them "generate" (the report's window); the cut rate's are not timed.
    assert [p["phase"] for p in result.phases] == ["load", "warmup", "repeat", "generate", "cut", "cut"]
    assert result.status == "error"


def test_nothing_is_kept_where_no_rate_finished_or_every_rate_did():
    cut = Cut.of(Interrupted(signal.SIGTERM))
    none_finished = result_cut_at_second_rate()
    assert not keep_finished_rates(none_finished, FinishedRates(), (1.0, 4.0), cut)
    assert none_finished.cut is None and len(none_finished.passes) == 3
    offline, finished = BackendResult("hf", "batched"), FinishedRates()
    finished.add(float("inf"), ["r"], [], passes=1)
    assert not keep_finished_rates(offline, finished, (float("inf"),), cut)


def test_a_backend_stopped_at_its_time_limit_says_so_in_its_cut():
    cut = {"reason": "interrupted by SIGTERM", "signal": "SIGTERM", "cut_at": "inf", "points_not_run": ["inf"]}
    timed_out = recut(cut, "timed out: still running after 45 s (--timeout)")
    assert timed_out == {
        "reason": "timed out: still running after 45 s (--timeout)",
        "cut_at": "inf",
        "points_not_run": ["inf"],
    }


# ----------------------------------------------------------------------------- the reports' lines


def test_the_report_says_what_was_cut_why_and_what_did_not_run():
    cut = Cut("interrupted by SIGTERM", "SIGTERM", "n=2", ["n=2", "n=4"]).to_dict()
    assert cut_lines(cut, "points") == [
        "**Cut off** (interrupted by SIGTERM) at n=2: only the points that finished are here. Not run: n=2, n=4.",
        "",
    ]
    partial = Cut("interrupted by SIGTERM", "SIGTERM", "hf/batched", ["hf/batched", "vllm/offline"], partial=True)
    assert (
        "and what of hf/batched finished (its own cut is below). Not run: hf/batched (in part), vllm/offline."
        in (cut_lines(partial.to_dict())[0])
    )
    assert cut_lines(None) == []


def test_an_online_sweep_names_each_backends_rates_not_run():
    cut = {"reason": "timed out: still running after 45 s (--timeout)", "cut_at": 4.0, "points_not_run": [4.0, "inf"]}
    runs = [RunSummary("hf", "batched", cut=cut), RunSummary("vllm", "offline", status="ok")]
    assert rates_cut_lines(runs) == [
        "Rates not run (the sweep was cut; the rates above finished whole): hf/batched: 4.0, inf "
        "(timed out: still running after 45 s (--timeout))."
    ]
    assert rates_cut_lines(runs[1:]) == []


# ----------------------------------------------------------------------------- lab capacity's measured points


def test_capacity_cut_after_its_budget_point_keeps_what_it_measured_and_names_every_later_point(tmp_path, monkeypatch):
    """The points in `lab capacity`'s order, the budget point's measured concurrency deciding vLLM's curve;
    a SIGTERM at hf/batched's second size keeps the three points before it and removes its runs/<point>/."""
    folder = rf.RunFolder(tmp_path)
    started: list[str] = []

    def fake_measure_point(name, run, where, echo):  # stands in for a backend process: no engine runs
        started.append(name)
        where.folder.part(name).path.mkdir(parents=True)
        if name == "hf-batched-b2":
            raise Interrupted(signal.SIGTERM)
        point = {"point": name, "backend": run.backend, "mode": run.mode, "max_running": 4, "status": "ok"}
        return point, BackendResult(run.backend, run.mode, status="ok")

    monkeypatch.setattr(capacity, "measure_point", fake_measure_point)
    spec = CapacitySpec(EngineSettings(model="synthetic:tiny", workload="seed", device="cpu"), kv_budget_bytes=4096)
    arithmetic = {"padded": {"concurrency": 3}, "static": {"concurrency": 2}, "paged": {"concurrency": 6}}
    where = capacity.Points(folder, FakeSupervisor(), collect=False, timeout_s=60, timeout_text="60 s")
    swept = capacity.measure_all(spec, RunSpec("vllm", "offline", spec.engine), arithmetic, where, print)
    measured = ["vllm-offline-budget", "hf-continuous-budget", "hf-batched-b1"]
    assert [p["point"] for p, _ in swept.done] == measured and started == [*measured, "hf-batched-b2"]
    # hf/batched at 1, 2 and its capacity 3; static at 2; vLLM's curve up to the 4 it ran at once.
    assert swept.cut.cut_at == "hf-batched-b2" and swept.cut.exit_code == 143
    assert swept.cut.points_not_run == [
        "hf-batched-b2",
        "hf-batched-b3",
        "hf-static-cache-b2",
        "vllm-offline-c1",
        "vllm-offline-c2",
        "vllm-offline-c4",
    ]
    assert sorted(p.name for p in (tmp_path / rf.RUNS).iterdir()) == sorted(measured)  # b2's folder removed


def test_a_cut_point_kept_whole_counts_the_cut_from_the_next_point():
    # a backend cut while its engine closed, its result written after every pass: the point finished
    processes, said = FakeSupervisor(), []
    sweep = Sweep(processes, said.append, salvage=lambda point, cut: point.upper(), whole=lambda kept: kept == "B")
    sweep.run(["a", "b", "c"], fake_points("b", Interrupted(signal.SIGTERM)))
    swept = sweep.end()
    assert swept.done == ["A", "B"]
    assert swept.cut == Cut("interrupted by SIGTERM", "SIGTERM", "c", ["c"])
    assert said[-1] == "cut off (interrupted by SIGTERM at c; not run: c): keeping the 2 point(s) that finished"
    # the last point kept whole: the cut came after every point; the run is still a cut one (its exit code)
    last = Sweep(FakeSupervisor(), print, salvage=lambda point, cut: point.upper(), whole=lambda kept: True)
    last.run(["a", "b"], fake_points("b", Interrupted(signal.SIGTERM)))
    assert last.end().cut == Cut("interrupted by SIGTERM", "SIGTERM", None, [])
