"""A sweep's points one after the other, and what happens when something cuts it off part-way.

Every kind of sweep runs its points here: `lab experiment`'s backend/modes (each running every offered
rate, `lab.experiments.offline`), a sharing sweep's points (`lab.experiments.sharing`) and `lab capacity`'s
measured points (`lab.experiments.capacity`). A cut is anything that leaves a point's run early: SIGINT,
SIGTERM or SIGHUP (`lab.errors.Interrupted`: Ctrl-C, `timeout`, a lease ending), or an error outside any
backend (a later point's model build failing). When one comes after at least one point finished:

1. the signals are held from then on, so that keeping the finished points cannot be cut short in
   turn, and every process still running is stopped (`Supervisor.stop_after`);
2. the point that was running is handed to `salvage`, which shows the last lines of its backend's log
   (what it was doing), then keeps what of it finished (a backend's finished rates; the whole of it
   where its measurement had finished and only its engine's close was cut, `whole`) or removes its
   files (a point cut mid-way is never presented as finished);
3. `Sweep.end` gives the finished points and the `lab.cut.Cut`; the caller writes its folder from
   them, names the cut in its manifest and report, and the folder is renamed into results/ as a
   finished one would be. The exit code is the cut's (`Cut.exit_code`: 128 + N for signal N, else 1).

    with supervised_folder(results_dir, run_id, launcher, echo) as (folder, processes):
        sweep = Sweep(processes, echo, salvage=remove_its_files)
        sweep.run(points, measure, label=lambda p: p.label)   # False once cut; a later call runs nothing
        swept = sweep.end()                                   # Swept(done, cut)
        ...                                                   # the folder written from swept

A cut before any point finished keeps nothing: the exception goes on, and the run's temporary folder is
removed as before (`lab.run_folder.creating`). Once every point of the outermost run has finished the
signals are held too: the run is complete, and a signal while its files are written (seconds) would only
throw it away. A run that is itself one point of a sweep (`keep` False) is whole or not at all: its
`salvage` still says what the cut point was doing and removes its files, and the cut goes on up to the
sweep, which keeps its finished points.

The signals stay held until the run's folder has been renamed into results/ (or removed):
`supervised_folder` puts the handlers from before back only then, so a second signal can neither
throw a kept run away nor leave its `.tmp-` folder behind.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from lab import run_folder as rf
from lab.cut import Cut
from lab.errors import LabInputError, StepFailed
from lab.launchers.base import Echo, Launcher
from lab.launchers.supervisor import Supervisor

P = TypeVar("P")
T = TypeVar("T")


@contextmanager
def supervised_folder(
    results_dir: Path, run_id: str, launcher: Launcher, echo: Echo
) -> Iterator[tuple[rf.RunFolder, Supervisor]]:
    """The run's temporary folder (`rf.creating`) and the supervisor of its processes, in one block. The
    processes are stopped before the folder is renamed or removed, and the signal handlers from before
    come back only after that: signals held while the run is written stay held through its rename."""
    processes = Supervisor(launcher, run_id, echo, restore_on_exit=False)
    try:
        with rf.creating(results_dir, run_id) as folder, processes:
            yield folder, processes
    finally:
        processes.restore_signals()


@dataclass(frozen=True)
class Swept(Generic[T]):
    """What the points that finished returned, in order (a salvaged cut point's last), and the cut."""

    done: list[T]
    cut: Cut | None = None


@dataclass
class Sweep(Generic[P, T]):
    """Points run in turn under one supervisor. `salvage(point, cut)`: after the processes stopped, what
    of the cut point to keep (None: nothing; it removes its files). `whole(kept)`: True where what was
    kept is the whole point, measured before the cut came (a backend cut while its engine closed, its
    result already written): then the cut counts from the next point, nothing is marked partial. `keep`
    False: the run is one point of an outer sweep, whole or not at all: `salvage` is still called (what it
    keeps is dropped), the cut goes on up, and the signals are not held at the end."""

    processes: Supervisor
    echo: Echo
    salvage: Callable[[P, Cut], T | None] | None = None
    keep: bool = True
    whole: Callable[[T], bool] = lambda kept: False  # noqa: E731 (a dataclass field's default)
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
        self.processes.hold_signals()  # first: a second signal must not cut short what is kept or removed
        if self.salvage is None and (not self.keep or not self.done):
            raise exc  # nothing to keep: the run's folder is removed, as it always was
        cut = Cut.of(exc, left[0], left)
        self.processes.stop_after(exc)
        kept = self.salvage(point, cut) if self.salvage is not None else None
        if not self.keep or (not self.done and kept is None):
            raise exc
        if kept is not None:
            self.done.append(kept)
            finished = self.whole(kept)  # measured whole before the cut: the cut came after it
            after = dataclasses.replace(cut, cut_at=left[1] if len(left) > 1 else None, points_not_run=left[1:])
            cut = after if finished else dataclasses.replace(cut, partial=True)
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
