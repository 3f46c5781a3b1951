"""The lab's own exceptions; the CLI turns each into a message and its exit code (never a traceback).

0    done: every backend/mode succeeded
1    a backend/mode or a step failed (`lab experiment`: recorded in the run folder) -> StepFailed
2    bad input, nothing written -> LabInputError
128+N  stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP) -> Interrupted

A run cut off part-way by a signal or a failed step keeps what finished (`lab.experiments.sweep`) and
exits with the same code, 128 + N or 1 (`lab.cut.Cut.exit_code`): never 0, and never 2.
"""

from __future__ import annotations

import signal


class LabInputError(Exception):
    """Input the user can fix: the message names the problem and the fix."""

    exit_code = 2


class StepFailed(Exception):
    """A step outside any backend failed (e.g. building the model crashed): the message says which and why."""

    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP reached the orchestrator; every process it started has been stopped."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @classmethod
    def on_signal(cls, signum: int, frame: object) -> None:
        """A signal handler (`signal.signal(SIGTERM, Interrupted.on_signal)`): raises in the main thread."""
        raise cls(signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process a signal ended."""
        return 128 + self.signum
