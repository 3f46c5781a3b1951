"""Every process an experiment starts, and stopping all of them however the experiment ends.

    with Supervisor(launcher, run_id, echo) as processes:
        proc = processes.start("hf", ["run", ...], "hf-batched", stdout=PIPE, ...)
        code = processes.wait(proc, timeout_s)      # None: still running after timeout_s
        ...  processes.stop(proc) on a timeout, processes.finish(proc) after it exited

While the block runs, SIGINT (Ctrl-C), SIGTERM and SIGHUP raise `lab.errors.Interrupted` in the
orchestrator's main thread. Leaving the block for any reason stops every process still running:
their process trees and, with Docker, their containers. Signals are ignored while that cleanup runs,
so a second Ctrl-C cannot leave an engine half-stopped and holding its GPU. The handlers from before
the block come back when it ends, or, with `restore_on_exit=False`, when the caller calls
`restore_signals()` (after its run folder is renamed: `lab.experiments.sweep.supervised_folder`).
"""

from __future__ import annotations

import re
import signal
import threading
from typing import Any

from lab.errors import Interrupted
from lab.launchers.base import Echo, Launcher
from lab.launchers.process import GRACE_S, LabProcess

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def process_name(run_id: str, name: str) -> str:
    """'lab-<run-id>-<name>', in the characters Docker allows in a container name."""
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", f"lab-{run_id}-{name}")


class Supervisor:
    """Starts processes through `launcher` and stops those still running on the way out."""

    def __init__(
        self, launcher: Launcher, run_id: str, echo: Echo, grace_s: float = GRACE_S, restore_on_exit: bool = True
    ) -> None:
        self.launcher, self.run_id, self.echo, self.grace_s = launcher, run_id, echo, grace_s
        self.restore_on_exit = restore_on_exit
        self.running: list[LabProcess] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Supervisor:
        if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, Interrupted.on_signal)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.stop_after(exc)
        finally:
            if self.restore_on_exit:
                self.restore_signals()

    def restore_signals(self) -> None:
        """The handlers of SIGINT, SIGTERM and SIGHUP from before the block, back in place."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def hold_signals(self) -> None:
        """Ignore SIGINT, SIGTERM and SIGHUP until the handlers from before the block are back
        (`restore_signals`): for the cleanup, and for writing a run whose points have all finished or been
        kept, which a second Ctrl-C must not cut short. A SIGKILL still can (`timeout -k`): see the README."""
        for signum in self._previous:
            signal.signal(signum, signal.SIG_IGN)

    def stop_after(self, exc: BaseException | None) -> None:
        """Stop every process still running, saying why (`exc`: what ended the run, None: nothing),
        with the signals held from here on."""
        self.hold_signals()  # nothing may cut the cleanup short
        if self.running:
            why = f"interrupted ({exc})" if isinstance(exc, KeyboardInterrupt) else "stopping"
            self._say(f"{why}: stopping {len(self.running)} process(es) this run started")
            self.stop_all()

    def start(self, service: str, args: list[str], name: str, **popen_kwargs) -> LabProcess:
        proc = self.launcher.start(service, args, process_name(self.run_id, name), **popen_kwargs)
        self.running.append(proc)
        return proc

    def wait(self, proc: LabProcess, timeout_s: float | None = None) -> int | None:
        """Its exit code, or None when it still ran after `timeout_s`."""
        return proc.wait(timeout_s)

    def stop(self, proc: LabProcess) -> list[int]:
        """Stop it and what it started (SIGTERM, then SIGKILL after the grace period); the pids killed."""
        try:
            return proc.stop(self.grace_s)
        finally:
            self._forget(proc)

    def finish(self, proc: LabProcess) -> list[int]:
        """After it exited by itself: kill what it left behind (the pids), and forget it."""
        try:
            return proc.sweep()
        finally:
            self._forget(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):  # the newest first: a backend before its collector
            killed = self.stop(proc)
            self._say(f"  stopped {proc.name}" + (f" (killed pids {', '.join(map(str, killed))})" if killed else ""))

    def _say(self, message: str) -> None:
        """Echo, unless the output is gone: when a whole process group is stopped, the terminal or the
        pipe reading this process's output may close first, and a failed write must not skip the
        cleanup and leave an engine holding its GPU."""
        try:
            self.echo(message)
        except OSError:
            pass

    def _forget(self, proc: LabProcess) -> None:
        if proc in self.running:
            self.running.remove(proc)
