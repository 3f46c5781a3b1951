"""The end of a backend process after its last pass is bounded (`lab.teardown`): a close that hangs keeps
the finished run and says so, the process still leaves, and the experiment stops a process that wrote its
result but does not exit. Fakes stand in for the engine's close and for the backend process (real
processes: small Python scripts, no engine)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from lab import run_folder as rf
from lab import runner
from lab.config import EngineSettings, RunSpec
from lab.experiments import backend_run
from lab.launchers.process import LabProcess
from lab.launchers.supervisor import Supervisor
from lab.phases import Phases
from lab.records import BackendResult
from lab.teardown import StillRunning, call_within

LIMIT_S = 0.3
HF_BATCHED = RunSpec("hf", "batched", EngineSettings(model="synthetic:tiny", workload="seed", device="cpu"))


class FakeBackendWhoseTeardownHangs:
    """A stand-in for an engine whose torch.distributed teardown never returns (as seen under torchrun)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def close(self) -> None:
        call_within(self.release.wait, LIMIT_S, "distributed teardown")


def test_a_call_past_its_limit_raises_still_running_within_the_limit(capsys):
    release = threading.Event()
    t0 = time.perf_counter()
    with pytest.raises(StillRunning, match=r"distributed teardown still running after 0.3 s"):
        call_within(release.wait, LIMIT_S, "distributed teardown")
    assert time.perf_counter() - t0 < LIMIT_S + 2.0
    release.set()
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "lab: distributed teardown: started",
        "lab: distributed teardown: still running after 0.3 s; going on without it",
    ]


def test_a_call_that_fails_raises_its_own_error_and_one_that_ends_says_done(capsys):
    def fail() -> None:
        raise ValueError("store closed")

    with pytest.raises(ValueError, match="store closed"):
        call_within(fail, LIMIT_S, "teardown")
    call_within(lambda: None, LIMIT_S, "teardown")
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("lab: teardown: failed after ") and "ValueError('store closed')" in lines[1]
    assert lines[3].startswith("lab: teardown: done in ")


def test_a_close_that_hangs_keeps_the_result_and_records_that_it_hung(tmp_path, capsys):
    part = rf.PartFolder(tmp_path)
    result = BackendResult("hf", "static-cache", status="ok", generate_s=12.4)
    backend = FakeBackendWhoseTeardownHangs()
    t0 = time.perf_counter()
    runner._end(part, result, backend, Phases())
    assert time.perf_counter() - t0 < LIMIT_S + 2.0
    backend.release.set()
    written = rf.read_json(part.result)  # before the close: what a hang later on would have left
    assert written["status"] == "ok" and written["generate_s"] == 12.4 and "close_error" not in written
    assert result.status == "ok"
    assert result.close_error == "distributed teardown still running after 0.3 s; the process went on without it"
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "lab: result: written, before the close",
        "lab: close: started",
        "lab: distributed teardown: started",
    ]
    assert lines[-1].startswith("lab: close: failed after ") and "still running" in lines[-1]


# A process that hangs in a teardown thread and in an atexit hook: it must still leave, with its code.
STUCK_EXIT = textwrap.dedent(
    """
    import atexit, threading, time
    from lab import teardown
    atexit.register(time.sleep, 600)  # as a hook that waits on the stuck thread would
    try:
        teardown.call_within(threading.Event().wait, 0.2, "distributed teardown")
    except teardown.StillRunning:
        pass
    teardown.exit_now_if_stuck(0)
    """
)


def test_a_process_with_a_teardown_still_running_leaves_without_the_interpreters_shutdown():
    proc = subprocess.run([sys.executable, "-c", STUCK_EXIT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("lab: exit: a teardown step is still running; leaving")


# A backend process that writes an ok result, starts a child (an engine's worker), and never exits.
FAKE_STUCK_BACKEND = textwrap.dedent(
    """
    import json, subprocess, sys, time
    out = sys.argv[sys.argv.index("--out") + 1]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(out + "/child", "w").write(str(child.pid))
    json.dump({"backend": "hf", "mode": "batched", "status": "ok", "generate_s": 1.5}, open(out + "/result.json", "w"))
    print("lab: close: started", flush=True)
    time.sleep(600)
    """
)


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class FakeStuckBackendLauncher:
    """A stand-in for a launcher whose backend process writes its result and then hangs in its close."""

    runtime = "fake"

    def start(self, service, args, name, **popen_kwargs) -> LabProcess:
        argv = [sys.executable, "-c", FAKE_STUCK_BACKEND, *args]
        return LabProcess(argv, dict(os.environ), name, **popen_kwargs)


def test_a_process_stuck_after_its_result_is_stopped_with_its_tree_and_its_result_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(backend_run, "EXIT_GRACE_S", 1.0)
    part = rf.PartFolder(tmp_path / "runs" / HF_BATCHED.name)
    said: list[str] = []
    t0 = time.perf_counter()
    with Supervisor(FakeStuckBackendLauncher(), "test", said.append) as processes:
        result = backend_run.execute_run(HF_BATCHED, part, processes, said.append, None, timeout_s=300)
    assert time.perf_counter() - t0 < 60, "stopped after the grace, not the time limit"
    assert result.status == "ok" and result.generate_s == 1.5 and result.exit_stuck_s == 1.0
    assert rf.read_json(part.result)["exit_stuck_s"] == 1.0
    assert not running(int((part.path / "child").read_text())), "the engine's worker it started was killed"
    assert any("still running 1 s after writing its result; stopped it, result kept" in line for line in said)
    assert "lab: close: started" in part.log.read_text()


def test_a_process_that_never_writes_its_result_still_runs_to_its_time_limit(tmp_path, fake_launcher):
    part = rf.PartFolder(tmp_path / "runs" / HF_BATCHED.name)
    part.path.mkdir(parents=True)
    with Supervisor(fake_launcher, "test", print) as processes:
        proc = processes.start("hf", [], "sleeper")
        ended = backend_run.wait_for_exit(proc, part, processes, timeout_s=1.0, grace_s=0.1)
        assert ended == backend_run.TIMED_OUT
