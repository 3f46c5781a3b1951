"""What a cut does with the backend/mode it stopped mid-way, and with the run folder it keeps: the last
lines of the backend's own log are shown before its folder goes (`backend_run.cut_log_lines`), its
folder is kept only where its process kept finished rates (`offline.finished_rates`), and the signals
held while a kept run is written stay held through its rename (`sweep.supervised_folder`). Pure logic
on files in a temporary folder; the supervisor's processes are sleeping Pythons (`fake_launcher`)."""

from __future__ import annotations

import os
import signal

import pytest

from lab import run_folder as rf
from lab.config import EngineSettings, RunSpec
from lab.cut import Cut
from lab.errors import Interrupted
from lab.experiments.backend_run import CUT_LOG_LINES, cut_log_lines
from lab.experiments.offline import finished_rates
from lab.experiments.sweep import Sweep, supervised_folder
from lab.records import BackendResult

HF_BATCHED = RunSpec("hf", "batched", EngineSettings(model="synthetic:tiny", workload="seed", device="cpu"))
SIGTERM_CUT = Cut.of(Interrupted(signal.SIGTERM), "hf/batched", ["hf/batched"])


def part_with_log(tmp_path, lines: int) -> rf.PartFolder:
    """runs/hf-batched/ of a run folder, its log.txt holding `lines` numbered lines."""
    part = rf.RunFolder(tmp_path).part(HF_BATCHED.name)
    part.path.mkdir(parents=True)
    part.log.write_text("".join(f"step {k}\n" for k in range(1, lines + 1)))
    return part


# ----------------------------------------------------------------------------- the backend's log


def test_a_cut_shows_the_last_lines_of_the_stopped_backends_log_in_order(tmp_path):
    part = part_with_log(tmp_path, 30)
    shown = cut_log_lines("hf/batched", part, kept=False)
    assert shown[0] == (
        "hf/batched was running when the run was cut; the last lines of its log "
        "(runs/hf-batched/log.txt, removed with its unfinished folder):"
    )
    assert shown[1:] == [f"    | step {k}" for k in range(30 - CUT_LOG_LINES + 1, 31)]
    assert cut_log_lines("hf/batched", part, kept=True)[0].endswith("(runs/hf-batched/log.txt, kept in its folder):")


def test_a_backend_that_wrote_no_log_shows_nothing(tmp_path):
    part = rf.RunFolder(tmp_path).part(HF_BATCHED.name)
    assert cut_log_lines("hf/batched", part, kept=False) == []  # no folder at all: cut before it started
    part.path.mkdir(parents=True)
    part.log.write_text("\n")
    assert cut_log_lines("hf/batched", part, kept=False) == []


# ----------------------------------------------------------------------------- the backend's folder


def test_a_backend_cut_without_finished_rates_is_removed_after_its_log_is_shown(tmp_path):
    part, said = part_with_log(tmp_path, 3), []
    assert finished_rates(rf.RunFolder(tmp_path), said.append, True, HF_BATCHED, SIGTERM_CUT) is None
    assert not part.path.exists()
    assert said[1:] == ["    | step 1", "    | step 2", "    | step 3"] and "removed" in said[0]


def test_a_backend_that_kept_its_finished_rates_stays_with_the_experiments_reason(tmp_path):
    part, said = part_with_log(tmp_path, 3), []
    its_own = {"reason": "interrupted by SIGTERM", "signal": "SIGTERM", "cut_at": 4.0, "points_not_run": [4.0]}
    rf.write_json(part.result, BackendResult("hf", "batched", status="error", cut=its_own).to_dict())
    sigint = Cut.of(KeyboardInterrupt(), "hf/batched", ["hf/batched"])
    kept = finished_rates(rf.RunFolder(tmp_path), said.append, True, HF_BATCHED, sigint)
    assert kept.cut == dict(its_own, reason="interrupted by SIGINT", signal="SIGINT")
    assert kept.error == "interrupted by SIGINT: its sweep was cut at 4.0 req/s"
    assert rf.read_json(part.result)["cut"] == kept.cut and part.log.exists()
    assert "kept in its folder" in said[0]
    # One point of a sharing sweep is whole or not at all: the same folder is removed, its log shown.
    said.clear()
    assert finished_rates(rf.RunFolder(tmp_path), said.append, False, HF_BATCHED, sigint) is None
    assert not part.path.exists() and "removed" in said[0]


def test_a_backend_cut_after_writing_its_whole_result_is_kept_with_the_cut_as_its_close_error(tmp_path):
    # its result.json is written before its engine's close (lab.teardown): the cut stopped the close
    part, said = part_with_log(tmp_path, 3), []
    rf.write_json(part.result, BackendResult("hf", "batched", status="ok").to_dict())
    kept = finished_rates(rf.RunFolder(tmp_path), said.append, True, HF_BATCHED, SIGTERM_CUT)
    assert kept.ok and kept.cut is None
    assert kept.close_error == (
        "stopped by the cut (interrupted by SIGTERM) after its result was written: every pass had finished"
    )
    assert rf.read_json(part.result)["close_error"] == kept.close_error and part.log.exists()
    assert "kept in its folder" in said[0]
    # a close that had already failed keeps its own reason
    rf.write_json(part.result, BackendResult("hf", "batched", status="ok", close_error="hung 30 s").to_dict())
    assert finished_rates(rf.RunFolder(tmp_path), said.append, True, HF_BATCHED, SIGTERM_CUT).close_error == "hung 30 s"
    # a failed backend's result is not a measurement: removed, as before
    rf.write_json(part.result, BackendResult("hf", "batched", status="error", error="boom").to_dict())
    assert finished_rates(rf.RunFolder(tmp_path), said.append, True, HF_BATCHED, SIGTERM_CUT) is None
    assert not part.path.exists()


# ----------------------------------------------------------------------------- the kept run's rename


@pytest.fixture
def command_handler():
    """SIGTERM raising Interrupted, as `lab`'s commands install it for their whole run (handle_errors)."""
    before = signal.signal(signal.SIGTERM, Interrupted.on_signal)
    yield Interrupted.on_signal
    signal.signal(signal.SIGTERM, before)


def test_a_signal_while_a_kept_run_is_renamed_neither_removes_it_nor_leaves_its_tmp(
    tmp_path, fake_launcher, monkeypatch, command_handler
):
    rename = rf._finish

    def signalled_rename(tmp):  # a second SIGTERM arrives just as the folder is renamed into results/
        os.kill(os.getpid(), signal.SIGTERM)
        return rename(tmp)

    monkeypatch.setattr(rf, "_finish", signalled_rename)

    def run(point: str) -> str:
        if point == "b":
            raise Interrupted(signal.SIGTERM)
        return point.upper()

    try:
        with supervised_folder(tmp_path, "run-1", fake_launcher, print) as (folder, processes):
            sweep = Sweep(processes, print)
            sweep.run(["a", "b"], run)
            swept = sweep.end()
            rf.write_json(folder.manifest, {"done": swept.done})
    except Interrupted:  # a KeyboardInterrupt: pytest would stop the whole session on it
        pytest.fail("the second SIGTERM was not held through the rename: " + str(sorted(tmp_path.iterdir())))
    assert [p.name for p in tmp_path.iterdir()] == ["run-1"]
    assert rf.read_json(tmp_path / "run-1" / rf.MANIFEST) == {"done": ["A"]}
    assert signal.getsignal(signal.SIGTERM) == command_handler  # handed back once the folder is in place


def test_a_run_cut_before_anything_finished_is_removed_and_the_handlers_come_back(
    tmp_path, fake_launcher, command_handler
):
    with pytest.raises(Interrupted), supervised_folder(tmp_path, "run-2", fake_launcher, print) as (_, processes):
        processes.start("hf", [], "hf-batched")
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()  # the handler raises
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == command_handler
