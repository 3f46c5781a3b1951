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

`GcPauses(freeze=True)` first freezes the heap (`freeze_heap`), before its window: the runner does so
before every timed pass, as vLLM does in its own processes after init and `vllm serve` in its frontend
(`vllm.utils.gc_utils.freeze_gc_heap`). Without it, a full collection during a pass walks everything the
process made before (torch, the engine's frontend, the warm-up's records), a pause that grows with the
heap (the stalls of results/gpu-h100/agree-sharing-x4/agree-tp-lab's vLLM passes). Frozen objects are never
collected; the collections before the freeze free what is garbage then. Only this process is frozen:
the engine's own processes keep their own settings. Recorded per pass: result.json `passes[].gc`.

A pause is the time between the callback's "start" and "stop" (the callbacks' own cost is negligible).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable


def freeze_heap() -> int:
    """Collect every generation, then move every tracked object to the permanent generation (what
    `vllm.utils.gc_utils.freeze_gc_heap` does); the number of objects frozen."""
    for generation in range(3):
        gc.collect(generation)
    gc.freeze()
    return gc.get_freeze_count()


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


class _CollectionWatch:
    """Times every collection of this process from a callback in `callbacks` (gc.callbacks, or a unit
    test's list) on the clock `now` (time.perf_counter, or a fake); `_collected` takes each one."""

    def __init__(self, callbacks: list | None = None, now: Callable[[], float] = time.perf_counter) -> None:
        self._callbacks = gc.callbacks if callbacks is None else callbacks
        self._now = now
        self._began: float | None = None

    def _on_collection(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = self._now()
        elif self._began is not None:
            seconds, self._began = self._now() - self._began, None
            self._collected(int(info.get("generation", -1)), seconds)

    def _collected(self, generation: int, seconds: float) -> None:
        raise NotImplementedError

    def _attach(self) -> None:
        self._began = None
        self._callbacks.append(self._on_collection)

    def _detach(self) -> None:
        if self._on_collection in self._callbacks:
            self._callbacks.remove(self._on_collection)


class GcPauses(_CollectionWatch):
    """Collects the collections of this process between `start()` and `stop()` (or as a context manager);
    `freeze=True`: the heap frozen first (`freeze_heap`)."""

    def __init__(
        self, callbacks: list | None = None, now: Callable[[], float] = time.perf_counter, freeze: bool = False
    ) -> None:
        super().__init__(callbacks, now)
        self._freeze = freeze
        self.pauses: list[tuple[int, float]] = []
        self.frozen_objects: int | None = None

    def _collected(self, generation: int, seconds: float) -> None:
        self.pauses.append((generation, seconds))

    def start(self) -> GcPauses:
        if self._freeze:
            freeze_heap()
        self.pauses = []
        self.frozen_objects = gc.get_freeze_count()
        self._attach()
        return self

    def stop(self) -> dict:
        self._detach()
        return self.totals()

    def totals(self) -> dict:
        return summarize(self.pauses, self.frozen_objects)

    def __enter__(self) -> GcPauses:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class GcTally(_CollectionWatch):
    """Running totals of this process's collections since `start()`, O(1) a collection and a read: for a
    process that reports them every step (the engine core, `lab.backends.vllm_step_facts`).
    `totals()`: {"count", "total_s", "max_s", "full_count", "full_s"} (full: generation 2)."""

    FULL = 2

    def __init__(self, callbacks: list | None = None, now: Callable[[], float] = time.perf_counter) -> None:
        super().__init__(callbacks, now)
        self.count = self.full_count = 0
        self.total_s = self.max_s = self.full_s = 0.0

    def start(self) -> GcTally:
        self._attach()
        return self

    def _collected(self, generation: int, seconds: float) -> None:
        self.count += 1
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)
        if generation == self.FULL:
            self.full_count += 1
            self.full_s += seconds

    def totals(self) -> dict:
        return {
            "count": self.count,
            "total_s": self.total_s,
            "max_s": self.max_s,
            "full_count": self.full_count,
            "full_s": self.full_s,
        }


def between(before: dict | None, after: dict) -> dict:
    """Two `GcTally.totals()` of one process -> the collections between them, in ms (`max_ms`: the
    longest since the tally started, an upper bound for the window; before None: since the start)."""
    before = before or {"count": 0, "total_s": 0.0, "full_count": 0, "full_s": 0.0}
    return {
        "count": after["count"] - before["count"],
        "total_ms": (after["total_s"] - before["total_s"]) * 1e3,
        "full_count": after["full_count"] - before["full_count"],
        "full_ms": (after["full_s"] - before["full_s"]) * 1e3,
        "max_ms_so_far": after["max_s"] * 1e3,
    }
