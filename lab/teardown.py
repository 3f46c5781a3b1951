"""The end of a backend process after its last timed pass, bounded so that a hang there cannot lose the run.

- `lab.runner` writes result.json (and the records) before the engine is closed, then again after it
  with what the close said (`close_error`): a close or an exit that hangs keeps the measured passes.
- A call that can hang (torch.distributed's teardown, `lab.backends.hf_parallel`) runs in a daemon
  thread joined with a time limit (`call_within`): past it, `StillRunning` is raised, the run records
  it as its `close_error` and goes on. The CLI then leaves with `exit_now_if_stuck` (os._exit), since
  the interpreter's own shutdown could wait on that thread or on the state it holds.
- Each step prints a line to the backend's log (`lab.phases.say`; rank k > 0 of torchrun prefixes
  'rank k: '), outside any timed interval, so a run cut after its last pass shows where it stopped.
- The experiment (`lab.experiments.backend_run`) stops a process still running `EXIT_GRACE_S` after it
  wrote its result, with its whole tree, and keeps the result (`exit_stuck_s`).

This module is light (no torch): the experiment's side imports its limits.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from lab.phases import say

TEARDOWN_LIMIT_S = 30.0  # torch.distributed's teardown: seconds normally (NCCL's communicators, gloo's store)
# The experiment's wait after result.json appeared: the engine's close (its own limit above; vLLM's engine
# core shuts down in seconds) and the interpreter's exit, with room to spare.
EXIT_GRACE_S = TEARDOWN_LIMIT_S + 90.0

_stuck: list[threading.Thread] = []  # threads still inside a call that ran past its limit


class StillRunning(RuntimeError):
    """A call that ran past its time limit; it goes on in a daemon thread that nothing waits for."""


def call_within(call: Callable[[], None], limit_s: float, name: str) -> None:
    """Run `call` in a daemon thread and wait at most `limit_s` for it, saying so in the log ('<name>: started',
    '<name>: done in X s'). Raises what it raised, or `StillRunning` when it still ran after `limit_s`."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            failure.append(exc)

    say(f"{name}: started")
    t0 = time.perf_counter()
    thread = threading.Thread(target=run, name=f"lab-{name}", daemon=True)
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        _stuck.append(thread)
        say(f"{name}: still running after {limit_s:g} s; going on without it")
        raise StillRunning(f"{name} still running after {limit_s:g} s; the process went on without it")
    if failure:
        say(f"{name}: failed after {time.perf_counter() - t0:.1f} s: {failure[0]!r}")
        raise failure[0]
    say(f"{name}: done in {time.perf_counter() - t0:.1f} s")


def exit_now_if_stuck(code: int) -> None:
    """Leave at once with `code` (os._exit, after flushing) where a call that ran past its limit is still
    running: the interpreter's shutdown (its atexit hooks, torch's destructors) could wait on it for ever.
    Returns where none is."""
    if not any(thread.is_alive() for thread in _stuck):
        return
    say(f"exit: a teardown step is still running; leaving without the interpreter's shutdown (exit code {code})")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
