"""Python's garbage collections in this process during one window (a timed pass), and how long they paused it.

CPython runs a collection when its allocation counters pass the thresholds (`gc.get_threshold()`);
every thread of the process waits while it runs. A full collection (generation 2) walks every object
the collector tracks, so with a large heap (torch, the engine's frontend) and many objects made per
step it can pause a pass for hundreds of milliseconds. `GcPauses` registers a callback in
`gc.callbacks` (called with "start" and "stop" around every collection) and sums the pauses:

- `count`, `total_ms`, `max_ms`: every collection in the window;
- `by_generation`: {generation: {"count", "total_ms", "max_ms"}}, generation 2 being the full ones;
- `frozen_objects`: objects in the permanent generation when the window began (`gc.freeze()`), which no
  collection walks.

A pause is the time between the callback's "start" and "stop" (the callbacks' own cost is negligible).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable


def summarize(pauses: list[tuple[int, float]], frozen_objects: int | None = None) -> dict:
    """(generation, seconds) of each collection -> the totals described in the module docstring."""
    by_generation: dict[str, dict] = {}
    for generation, seconds in pauses:
        entry = by_generation.setdefault(str(generation), {"count": 0, "total_ms": 0.0, "max_ms": 0.0})
        entry["count"] += 1
        entry["total_ms"] += seconds * 1e3
        entry["max_ms"] = max(entry["max_ms"], seconds * 1e3)
    return {
        "count": len(pauses),
        "total_ms": sum(seconds for _, seconds in pauses) * 1e3,
        "max_ms": max((seconds for _, seconds in pauses), default=0.0) * 1e3,
        "by_generation": dict(sorted(by_generation.items())),
        "frozen_objects": frozen_objects,
    }


class GcPauses:
    """Collects the collections of this process between `start()` and `stop()` (or as a context manager).

    `callbacks` and `now`: the list the callback goes into and the clock (gc.callbacks and
    time.perf_counter; a unit test passes its own list and a fake clock)."""

    def __init__(self, callbacks: list | None = None, now: Callable[[], float] = time.perf_counter) -> None:
        self._callbacks = gc.callbacks if callbacks is None else callbacks
        self._now = now
        self._began: float | None = None
        self.pauses: list[tuple[int, float]] = []
        self.frozen_objects: int | None = None

    def _on_collection(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = self._now()
        elif self._began is not None:
            self.pauses.append((int(info.get("generation", -1)), self._now() - self._began))
            self._began = None

    def start(self) -> GcPauses:
        self.pauses, self._began = [], None
        self.frozen_objects = gc.get_freeze_count()
        self._callbacks.append(self._on_collection)
        return self

    def stop(self) -> dict:
        if self._on_collection in self._callbacks:
            self._callbacks.remove(self._on_collection)
        return self.totals()

    def totals(self) -> dict:
        return summarize(self.pauses, self.frozen_objects)

    def __enter__(self) -> GcPauses:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
