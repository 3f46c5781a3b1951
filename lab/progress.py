"""Progress on long steps, on stderr: a live line on a terminal, nothing otherwise.

Without a terminal (CI, a log file, a pipe) the lab's own lines already say what starts and ends;
a redrawn bar would only fill the log with carriage returns, so the bar stays quiet there.

    bar = StepBar(total=len(specs))
    with bar.step(run.label):                     # '[2/4] ███████░░░░░░░ hf/batched  12.3 s', redrawn
        ...                                       # bar.echo(line) prints above the bar
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class StepBar:
    """A bar over `total` steps with the running step's name and elapsed seconds, redrawn every 0.2 s."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool | None = None, width: int = 20):
        self.total, self.width, self.done = total, width, 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._label, self._start, self._lock = "", 0.0, threading.Lock()

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        """One step: drawn while it runs, counted as done when it ends (failed or not)."""
        self._label, self._start = label, time.monotonic()
        stop = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(stop,), daemon=True) if self.enabled else None
        if ticker:
            ticker.start()
        try:
            yield
        finally:
            stop.set()
            if ticker:
                ticker.join()
            self.done += 1
            self._clear()
            self._label = ""

    def echo(self, message: str) -> None:
        """Print a line above the bar (use it for everything printed while a step runs)."""
        with self._lock:
            self._clear_locked()
            print(message, file=self.stream, flush=True)
            self._draw_locked()

    def line(self) -> str:
        filled = round(self.width * self.done / self.total) if self.total else self.width
        elapsed = time.monotonic() - self._start
        return (
            f"[{self.done + 1}/{self.total}] {'█' * filled}{'░' * (self.width - filled)} {self._label}  {elapsed:.1f} s"
        )

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(0.2):
            with self._lock:
                self._draw_locked()

    def _clear(self) -> None:
        with self._lock:
            self._clear_locked()

    def _draw_locked(self) -> None:
        if self.enabled and self._label:
            self.stream.write("\r\x1b[2K" + self.line())
            self.stream.flush()

    def _clear_locked(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
