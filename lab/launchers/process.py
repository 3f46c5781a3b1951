"""One started `lab` command and everything it starts: a session of its own, stopped as a whole.

Why a session (`start_new_session=True`): the process's group is then its own pid, and every child it
starts (vLLM's engine core and its workers are children of the backend process) joins that group
unless it asks for another. So the group can be stopped after the process itself has died, when its
orphans are no longer its children; and a Ctrl-C at the terminal reaches only the orchestrator, which
stops the group itself, in order, rather than racing it.

Stopping (`stop`): the process tree is listed first (psutil, recursively: a child that made a group of
its own is still found), then the root gets SIGTERM (the lab's own processes close their engine on
it), and whatever of the tree and the group is alive after `grace_s` gets SIGKILL. After a process
ended by itself, `sweep` kills what it left behind in its group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

GRACE_S = 10.0  # SIGTERM -> SIGKILL: vLLM's engine shutdown takes 1-3 s on the CPU here
PUMP_JOIN_S = 10.0

LineSink = Callable[[str], None]


class LabProcess:
    """A command started in a session of its own (a `launchers.base.Launcher` starts it).

    `name` is what the experiment calls it (`lab-<run-id>-hf-batched`); a container launcher names
    its container so. `output`: where each line of the process's stdout goes (a pump thread reads it,
    so a wait can time out), or None when stdout is not a pipe.
    """

    def __init__(self, argv: list[str], env: dict[str, str], name: str, **popen_kwargs) -> None:
        self.name = name
        self.argv = argv
        self.popen = subprocess.Popen(argv, env=env, start_new_session=True, **popen_kwargs)
        self._pump: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def pump(self, sink: LineSink) -> None:
        """Send each line of stdout to `sink`, from a thread, until the pipe closes."""
        stream = self.popen.stdout
        if stream is None:
            raise ValueError(f"{self.name}: stdout is not a pipe")
        self._pump = threading.Thread(target=_drain, args=(stream, sink), name=f"pump-{self.name}", daemon=True)
        self._pump.start()

    def wait(self, timeout_s: float | None = None) -> int | None:
        """The exit code, or None when `timeout_s` passed first."""
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def exit_signal(self) -> str | None:
        """The signal that ended the process ('SIGKILL'), or None when it exited."""
        code = self.popen.returncode
        return signal_name(-code) if code is not None and code < 0 else None

    def stop(self, grace_s: float = GRACE_S) -> list[int]:
        """SIGTERM to the process, SIGKILL to what is left of its tree after `grace_s`; the pids killed."""
        procs = tree(self.pid)  # listed before anything dies: an orphan is no longer a child
        if self.popen.poll() is None:
            _terminate(self.pid)
            self.wait(grace_s)
        killed = kill_all(procs + group_members(self.pid))
        self.wait(grace_s)
        self.join_pump()
        return killed

    def sweep(self) -> list[int]:
        """After the process ended by itself: SIGKILL whatever it left in its group; the pids killed."""
        killed = kill_all(group_members(self.pid))
        self.join_pump()
        return killed

    def join_pump(self) -> None:
        if self._pump is not None:
            self._pump.join(PUMP_JOIN_S)


def _drain(stream, sink: LineSink) -> None:
    try:
        for line in stream:
            sink(line)
    except (OSError, ValueError):  # the pipe or the sink closed under us while stopping
        pass


class LogPump:
    """A sink that writes every line to a log file and hands the lab's own lines to `show`."""

    def __init__(self, path: Path, show: LineSink | None = None, prefix: str = "lab:") -> None:
        self.file = path.open("w", encoding="utf-8")
        self.show, self.prefix = show, prefix

    def __call__(self, line: str) -> None:
        self.file.write(line)
        self.file.flush()
        if self.show is not None and line.startswith(self.prefix):
            self.show(line)

    def close(self) -> None:
        self.file.close()


# ----------------------------------------------------------------------------- process trees
# psutil.Process objects rather than pids: psutil refuses to signal a pid that a new process reused.


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def tree(pid: int) -> list[psutil.Process]:
    """`pid` and every process below it (children of children too), as they are now."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def group_members(pgid: int) -> list[psutil.Process]:
    """The live processes of process group `pgid`, this process excluded."""
    members = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return members


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (a zombie has ended: only its parent's wait is missing)."""
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def kill_all(procs: list[psutil.Process], timeout_s: float = 5.0) -> list[int]:
    """SIGKILL each live process once and wait until they are gone; the pids that were signalled."""
    unique = list({proc.pid: proc for proc in alive(procs)}.values())
    killed = []
    for proc in unique:
        try:
            proc.kill()
            killed.append(proc)
        except psutil.Error:
            continue
    deadline = time.monotonic() + timeout_s
    while alive(killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [proc.pid for proc in killed]


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
