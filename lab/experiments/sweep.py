"""A sweep's points one after the other, and what happens when something cuts it off part-way.

Every kind of sweep runs its points here: `lab experiment`'s backend/modes (each running every offered
rate, `lab.experiments.offline`), a sharing sweep's points (`lab.experiments.sharing`) and `lab capacity`'s
measured points (`lab.experiments.capacity`). A cut is anything that leaves a point's run early: SIGINT,
SIGTERM or SIGHUP (`lab.errors.Interrupted`: Ctrl-C, `timeout`, a lease ending), or an error outside any
backend (a later point's model build failing). When one comes after at least one point finished:

1. every process still running is stopped (`Supervisor.stop_after`), and the signals stay held from
   then on, so that keeping the finished points cannot be cut short in turn;
2. the point that was running is handed to `salvage`, which keeps what of it finished (a backend's
   finished rates) or removes its files (a point cut mid-way is never presented as finished);
3. `Sweep.end` gives the finished points and the `lab.cut.Cut`; the caller writes its folder from
   them, names the cut in its manifest and report, and the folder is renamed into results/ as a
   finished one would be. The exit code is the cut's (`Cut.exit_code`: 128 + N for signal N, else 1).

    sweep = Sweep(processes, echo, salvage=remove_its_files)
    sweep.run(points, measure, label=lambda p: p.label)   # False once cut; a later call runs nothing
    swept = sweep.end()                                   # Swept(done, cut)

A cut before any point finished keeps nothing: the exception goes on, and the run's temporary folder is
removed as before (`lab.run_folder.creating`). Once every point of the outermost run has finished the
signals are held too: the run is complete, and a signal while its files are written (seconds) would only
throw it away. A run that is itself one point of a sweep (`keep` False) is whole or not at all: the cut
goes on up to the sweep, which keeps its finished points.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from lab.cut import Cut
from lab.errors import LabInputError, StepFailed
from lab.launchers.base import Echo
from lab.launchers.supervisor import Supervisor

P = TypeVar("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Swept(Generic[T]):
    """What the points that finished returned, in order (a salvaged cut point's last), and the cut."""

    done: list[T]
    cut: Cut | None = None


@dataclass
class Sweep(Generic[P, T]):
    """Points run in turn under one supervisor. `salvage(point, cut)`: after the processes stopped, what
    of the cut point to keep (None: nothing; it removes its files). `keep` False: the run is one point
    of an outer sweep, whole or not at all: a cut goes on up, and the signals are not held at the end."""

    processes: Supervisor
    echo: Echo
    salvage: Callable[[P, Cut], T | None] | None = None
    keep: bool = True
    done: list[T] = field(default_factory=list)
    cut: Cut | None = None

    def run(self, points: Sequence[P], run: Callable[[P], T], label: Callable[[P], str] = str) -> bool:
        """`run(point)` for each point in turn; False once the sweep is cut (then nothing more runs).
        Raises what cut it where nothing is kept (module docstring)."""
        for number, point in enumerate(points):
            if self.cut is not None:
                return False
            try:
                self.done.append(run(point))
            except BaseException as exc:
                self._cut(exc, point, [label(p) for p in points[number:]])
        return self.cut is None

    def end(self) -> Swept[T]:
        """The finished points and the cut; the signals held where the run is complete and outermost
        (it is written next, and renamed into results/ when its block ends)."""
        if self.keep:
            self.processes.hold_signals()
        return Swept(self.done, self.cut)

    def _cut(self, exc: BaseException, point: P, left: list[str]) -> None:
        if not self.keep or (not self.done and self.salvage is None):
            raise exc  # nothing to keep: the run's folder is removed, as it always was
        cut = Cut.of(exc, left[0], left)
        self.processes.stop_after(exc)
        kept = self.salvage(point, cut) if self.salvage is not None else None
        if not self.done and kept is None:
            raise exc
        if kept is not None:
            self.done.append(kept)
            cut = dataclasses.replace(cut, partial=True)
        if not isinstance(exc, KeyboardInterrupt):
            self.echo(failure_text(exc, cut))
        part = " (the last of them in part)" if cut.partial else ""
        self.echo(f"cut off ({cut.describe()}): keeping the {len(self.done)} point(s) that finished{part}")
        self.cut = cut


def failure_text(exc: BaseException, cut: Cut) -> str:
    """The error that cut the sweep: the lab's own by its message, any other with its traceback."""
    if isinstance(exc, (LabInputError, StepFailed)):
        return f"error at {cut.cut_at}: {exc}"
    return f"error at {cut.cut_at}:\n" + "".join(traceback.format_exception(exc)).rstrip()
