"""Hands requests to an engine at their arrival times, as a server's frontend would (online serving).

The paged engines (vLLM's step loop, transformers' continuous batching) take a request whenever it
comes: the backend's loop asks `due()` between engine steps (or while waiting for results) and adds
what it returns. Offline, every request arrives at t=0 and `due()` returns them all at once, before
the first step: the same submissions as before arrivals existed.

- `max_concurrency`: at most this many requests submitted and not finished; the others wait in this
  queue in arrival order (their latency still counts from arrival, as in `vllm bench serve`).
- The lab's own delay is recorded per request: `submit_lag_s` = the moment the dispatcher handed the
  request over - the moment it was due (its arrival, or the latest `done()` when the cap held it
  back). A loop that steps the engine can be late by at most one step; the report gives the maximum.

Readings use `time.perf_counter` through `Clock.since_start`, without the device synchronisation of
`Clock.now()`: arrivals are host events, and a sync from this thread would wait on the engine's work.
"""

from __future__ import annotations

import time
from collections import deque

from lab.backends.base import Clock
from lab.workloads import Request

MAX_SLEEP_S = 0.05  # a waiting loop wakes at least this often (results, stalls)


class Dispatcher:
    def __init__(self, requests: list[Request], clock: Clock, max_concurrency: int | None = None) -> None:
        self._pending = deque(sorted(requests, key=lambda r: (r.arrival_s, r.request_id)))
        self._clock = clock
        self._cap = max_concurrency
        self._last_done_s = 0.0
        self.in_flight = 0
        self.submitted_s: dict[int, float] = {}  # request_id -> clock seconds at submission
        self.lag_s: dict[int, float] = {}  # request_id -> submission - due

    def now(self) -> float:
        return self._clock.since_start(time.perf_counter())

    @property
    def pending(self) -> bool:
        """Whether requests remain to be submitted."""
        return bool(self._pending)

    def due(self) -> list[Request]:
        """The requests to submit now (arrived, and within the cap), each stamped as submitted."""
        now = self.now()
        out = []
        while self._pending and self._pending[0].arrival_s <= now:
            if self._cap is not None and self.in_flight >= self._cap:
                break
            request = self._pending.popleft()
            held = self._cap is not None and self._last_done_s > request.arrival_s
            due_s = self._last_done_s if held else request.arrival_s
            self.submitted_s[request.request_id] = now
            self.lag_s[request.request_id] = max(0.0, now - due_s)
            self.in_flight += 1
            out.append(request)
        return out

    def done(self, count: int = 1) -> None:
        """`count` submitted requests finished: their slots are free."""
        self.in_flight -= count
        self._last_done_s = self.now()

    def seconds_to_next(self) -> float | None:
        """Seconds until the next pending arrival (0 if due now; None when none is pending)."""
        if not self._pending:
            return None
        return max(0.0, self._pending[0].arrival_s - self.now())

    def wait(self, longest_s: float = MAX_SLEEP_S) -> None:
        """Sleep until the next arrival, at most `longest_s`."""
        gap = self.seconds_to_next()
        if gap:
            time.sleep(min(gap, longest_s))

    def stamp(self, record) -> None:
        """Fill a record's submission and lag (records.RequestRecord)."""
        record.submitted_s = self.submitted_s.get(record.request_id)
        record.submit_lag_s = self.lag_s.get(record.request_id)
