"""Test-only fault injection for `lab run`, so that the tests of time limits, crashes and cut sweeps
run the real engines (tests/integration/test_reliability.py). Part of the command line: read here
only, from the environment; never set it otherwise.

    LAB_TEST_FAULT=<backend/mode>:hang|sigkill[@K|@close][,<backend/mode>:...]

makes that backend hang, or kill itself with SIGKILL, when its K-th timed pass starts (default 1: the
engine loaded and warmed up; an online sweep's second rate with --repeats 1 is pass 2), or, with
@close, when its engine's close starts (every pass done, its result written: `lab.runner._end`).
Several faults, comma-separated, target several backend/modes of one run.
"""

from __future__ import annotations

import os
import signal
import time

import click

from lab.errors import LabInputError
from lab.phases import PhaseHook

TEST_FAULT_ENV = "LAB_TEST_FAULT"
ACTIONS = ("hang", "sigkill")


def fault_injection(label: str) -> PhaseHook | None:
    """The phase hook that makes backend/mode `label` fail as LAB_TEST_FAULT says; None where it names
    another one (or is unset)."""
    faults = dict(entry.partition(":")[::2] for entry in os.environ.get(TEST_FAULT_ENV, "").split(",") if entry)
    if label not in faults:
        return None
    action, _, at = faults[label].partition("@")
    if action not in ACTIONS or not (at == "close" or (at or "1").isdigit()):
        raise LabInputError(
            f"{TEST_FAULT_ENV}={label}:{faults[label]}: the fault is hang or sigkill, then @K for timed pass K "
            "or @close for the engine's close"
        )
    passes: list[str] = []

    def inject(phase: str) -> None:
        if at == "close":
            if phase != "close":
                return
            where = "the start of the engine's close"
        else:
            if phase not in ("repeat", "generate"):
                return
            passes.append(phase)
            if len(passes) != int(at or 1):
                return
            where = f"the start of timed pass {len(passes)}"
        click.echo(f"lab: {TEST_FAULT_ENV}: {action} at {where}")
        if action == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        while True:
            time.sleep(3600)

    return inject
