"""A sweep cut off part-way: why, at which point, and which points did not finish.

One record for every kind of sweep, so that each folder says it the same way (docs/results.md, `cut`):
- a sharing sweep's points and `lab capacity`'s measured points (their manifest, capacity.json);
- `lab experiment`'s backend/modes (its manifest);
- an online sweep's offered rates inside one backend's process (its result.json and summary.json entry).

    {"reason": "interrupted by SIGTERM", "signal": "SIGTERM", "cut_at": "n=2", "points_not_run": ["n=2", "n=4"]}

`cut_at` was running when the cut came: its unfinished files were removed, unless it kept what of it
finished (`partial`: a backend's process keeps the offered rates it finished, `lab.rates_kept`, and
its own `cut` names the rest). `points_not_run` lists every point that did not finish, `cut_at` first.
"""

from __future__ import annotations

import signal
from dataclasses import asdict, dataclass, field

from lab.errors import Interrupted, StepFailed


@dataclass(frozen=True)
class Cut:
    reason: str  # 'interrupted by SIGTERM', 'timed out: ...', 'StepFailed: building ... failed'
    signal: str | None = None  # the signal that cut it ('SIGTERM'); None: an error or a time limit
    cut_at: str | float | None = None  # the point that was running (an offered rate: req/s, or 'inf')
    points_not_run: list = field(default_factory=list)  # every point that did not finish, `cut_at` first
    partial: bool = False  # `cut_at` kept what of it finished (a backend's offered rates: its own `cut`)
    detail: str | None = None  # the whole error message, where the reason gives only its first line

    @classmethod
    def of(cls, exc: BaseException, cut_at: str | None = None, points_not_run: list = ()) -> Cut:
        """The cut that `exc` made while `cut_at` ran (`points_not_run`: the points left, `cut_at` first)."""
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C without the lab's handler is SIGINT too
            name = exc.signal_name if isinstance(exc, Interrupted) else "SIGINT"
            return cls(f"interrupted by {name}", name, cut_at, list(points_not_run))
        message = str(exc).strip()
        first = message.splitlines()[0] if message else ""
        reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        return cls(reason, None, cut_at, list(points_not_run), detail=message if message != first else None)

    @property
    def exit_code(self) -> int:
        """128 + N for signal N, as a shell reports it (143: SIGTERM, 130: Ctrl-C); else a failed step's 1.
        Never 0 (the run is incomplete) nor 2 (bad input, where nothing is written)."""
        if self.signal:
            return 128 + signal.Signals[self.signal].value
        return StepFailed.exit_code

    def describe(self) -> str:
        """'interrupted by SIGTERM at n=2; not run: n=2, n=4'."""
        text = self.reason + (f" at {self.cut_at}" if self.cut_at is not None else "")
        return text + (f"; not run: {', '.join(map(str, self.points_not_run))}" if self.points_not_run else "")

    def to_dict(self) -> dict:
        """Every field that is set (`partial` only where true)."""
        return {key: value for key, value in asdict(self).items() if value is not None and value is not False}

    @classmethod
    def from_dict(cls, data: dict | None) -> Cut | None:
        if not data:
            return None
        optional = ("signal", "cut_at", "partial", "detail")
        return cls(
            data["reason"],
            points_not_run=list(data.get("points_not_run") or []),
            **{key: data[key] for key in optional if key in data},
        )


def cut_entry(cut: Cut | None) -> dict:
    """{"cut": ...} for a manifest or a JSON file of a sweep that was cut, {} for one that ran whole."""
    return {"cut": cut.to_dict()} if cut is not None else {}
