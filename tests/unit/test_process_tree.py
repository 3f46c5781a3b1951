"""Stopping a started process with everything it started, on real processes (small Python scripts, no
engine): the tree, children that made a session of their own, orphans left in the group, a root that
ignores SIGTERM, and every process of a supervised run on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from lab.errors import Interrupted
from lab.launchers.process import LabProcess
from lab.launchers.supervisor import Supervisor, process_name

# A root that starts a child in its own group and a grandchild-like child in a session of its own
# (as a worker that calls setsid would), prints their pids, and sleeps.
TREE = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
    child = subprocess.Popen(sleep)
    own_session = subprocess.Popen(sleep, start_new_session=True)
    print(child.pid, own_session.pid, flush=True)
    if sys.argv[1] == "exit":
        sys.exit(0)  # the root leaves, its children stay: orphans
    if sys.argv[1] == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)
    """
)


def start_tree(mode: str) -> tuple[LabProcess, list[int]]:
    proc = LabProcess([sys.executable, "-c", TREE, mode], dict(os.environ), "tree", stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.popen.stdout.readline().split()]
    return proc, pids


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while any(running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if running(p)]


def test_a_started_process_leads_its_own_process_group():
    proc, children = start_tree("sleep")
    try:
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
        assert os.getpgid(children[0]) == proc.pid  # its child joined the group
    finally:
        proc.stop(grace_s=1)


def test_stop_ends_the_whole_tree_a_child_in_its_own_session_included():
    proc, children = start_tree("sleep")
    proc.stop(grace_s=5)
    assert proc.exit_signal() == "SIGTERM"  # the root went on SIGTERM, within the grace period
    assert wait_gone([proc.pid, *children]) == []


def test_a_root_that_ignores_sigterm_is_killed_after_the_grace_period():
    proc, children = start_tree("ignore-term")
    time.sleep(0.3)  # let it install the handler
    t0 = time.monotonic()
    killed = proc.stop(grace_s=1)
    assert 1 <= time.monotonic() - t0 < 10
    assert proc.pid in killed and proc.exit_signal() == "SIGKILL"
    assert wait_gone([proc.pid, *children]) == []


def test_sweep_kills_what_an_exited_process_left_in_its_group():
    proc, (child, own_session) = start_tree("exit")
    assert proc.wait(30) == 0
    assert running(child)  # orphaned, still in the group: what a killed vLLM leaves (its engine core)
    killed = proc.sweep()
    assert child in killed and wait_gone([child]) == []
    # A session of its own is out of the group's reach once its parent is gone: listed only while alive.
    assert own_session not in killed
    os.kill(own_session, signal.SIGKILL)


def test_sigterm_during_a_supervised_run_stops_every_process_and_restores_the_handlers(fake_launcher):
    before = signal.getsignal(signal.SIGTERM)
    said: list[str] = []
    with pytest.raises(Interrupted) as caught:
        with Supervisor(fake_launcher, "run-1", said.append, grace_s=2) as processes:
            started = [processes.start("hf", [], "hf-batched"), processes.start("collector", [], "collector")]
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
    assert caught.value.signal_name == "SIGTERM" and caught.value.exit_code == 143
    assert wait_gone([p.pid for p in started]) == []
    assert processes.running == []
    assert signal.getsignal(signal.SIGTERM) is before
    assert "interrupted (SIGTERM): stopping 2 process(es)" in said[0]
    assert [p.name for p in started] == ["lab-run-1-hf-batched", "lab-run-1-collector"]


def test_a_closed_output_does_not_stop_the_cleanup(fake_launcher):
    """A group SIGTERM can close the pipe that reads the orchestrator's output before it cleans up."""

    def closed_pipe(message: str) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(Interrupted):
        with Supervisor(fake_launcher, "run-2", closed_pipe, grace_s=2) as processes:
            started = [processes.start("vllm", [], "vllm-offline"), processes.start("collector", [], "collector")]
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
    assert wait_gone([p.pid for p in started]) == []
    assert processes.running == []


def test_process_names_are_valid_container_names():
    assert process_name("20261126-1000-my label!-ab12", "hf-batched") == "lab-20261126-1000-my-label--ab12-hf-batched"
