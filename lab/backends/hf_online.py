"""The transformers `generate()` modes served online: the traditional server (online serving, issue 16).

A static batch is formed from the queue when it is full or when its oldest request has waited
`--batch-wait` seconds (`batching.next_batch`), and runs to completion while new arrivals wait:
hf/batched and hf/static-cache with `--batch-size` rows (capped by `--max-concurrency`), hf/sequential
with one, in arrival order. Each request's `scheduled_s` and `submitted_s` are its batch's start; its
`submit_lag_s` is how late that start was against the rule's (the lab's own delay).
"""

from __future__ import annotations

import time

from lab.backends import batching
from lab.backends.base import Clock
from lab.records import RequestRecord
from lab.workloads import Request


def serve_arrivals(backend, requests: list[Request], clock: Clock, size: int) -> list[RequestRecord]:
    """Every request of `requests` (with arrival times) through `backend.generate_batch`, `size` at most
    per batch. `backend`: a `lab.backends.hf.HfBackend`."""
    waiting = sorted(requests, key=lambda r: (r.arrival_s, r.request_id))
    wait_s = backend.spec.engine.online.batch_wait_s
    records: list[RequestRecord] = []
    free_s, index = 0.0, 0
    while waiting:
        start_s, batch = batching.next_batch(waiting, size, wait_s, free_s)
        pause_s = start_s - clock.now()
        if pause_s > 0:
            time.sleep(pause_s)
        waiting = waiting[len(batch) :]  # the batch is a prefix of the queue
        for record in backend.generate_batch(index, batch, clock):
            record.submitted_s = record.scheduled_s
            record.submit_lag_s = max(0.0, record.scheduled_s - start_s)
            records.append(record)
        free_s, index = clock.now(), index + 1
    return records
