"""How the transformers modes cut a workload into batches, and which calls warm every shape those
batches use. Pure arithmetic over requests: no engine.

A transformers `generate()` call on a batch of B rows left-padded to width W, asked for N new
tokens, runs one prefill of shape (B, W) and N - 1 decode steps of shape (B, 1), against a cache of
W, W + 1, ..., W + N - 2 tokens (a static cache: always its pinned length). Eager PyTorch pays a
first-call cost for a new shape (kernel choice, allocator growth: a 137-token prompt took 0.089 s
the first time and 0.019 s the second on an H100), and a compiled decode step compiles again for a
new batch size or cache length. `shapes_plan` lists the calls that run every one of these shapes
before the timed passes:

1. each distinct prefill shape (B, W), with 2 new tokens: the prefill and one decode step at B;
2. for each batch size B, its narrowest batch decoding from its width W_min to the longest
   W + N - 1 of the batches of that size: every decode shape (B, 1) against every cache length the
   timed pass reaches at B.

This costs a fraction of a full pass where prompts differ in length (one request at a time: one
2-token call per distinct prompt length and one long call), and about one pass for a single batch.
"""

from __future__ import annotations

from dataclasses import replace

from lab.workloads import Request


def cut(requests: list[Request], size: int) -> list[list[Request]]:
    """Consecutive batches of `size` requests in workload order (the last may be smaller)."""
    return [requests[i : i + size] for i in range(0, len(requests), size)]


def width(batch: list[Request]) -> int:
    """W: the longest prompt of the batch, to which every prompt is left-padded."""
    return max(r.prompt_tokens for r in batch)


def new_tokens(batch: list[Request]) -> int:
    """N: the batch runs until its longest output is done."""
    return max(r.output_tokens for r in batch)


def padding_rows(batch: list[Request], pad_to: int | None) -> list[Request]:
    """Rows that fill `batch` up to `pad_to` (copies of its last request; their tokens are discarded),
    so that a compiled static-cache decode step sees one batch size only."""
    return [batch[-1]] * max(0, (pad_to or 0) - len(batch))


def cache_len(batches: list[list[Request]]) -> int:
    """Cache slots per sequence that fit every batch: max over the batches of W + N - 1 (the last
    token's K/V is never written), the length transformers would size each call's static cache to."""
    return max(width(b) + new_tokens(b) - 1 for b in batches)


def shapes_plan(batches: list[list[Request]], pad_to: int | None = None) -> list[list[Request]]:
    """The warm-up calls that run every (batch size, padded width) prefill and every (batch size,
    cache length) decode step of `batches` (module docstring); `pad_to`: static batches' size."""
    rows = {id(b): max(len(b), pad_to or 0) for b in batches}
    plan, seen = [], set()
    for batch in batches:
        shape = (rows[id(batch)], width(batch))
        if shape not in seen:
            seen.add(shape)
            plan.append([replace(r, output_tokens=min(2, r.output_tokens)) for r in batch])
    for size in dict.fromkeys(rows.values()):
        same = [b for b in batches if rows[id(b)] == size]
        narrowest = min(same, key=width)
        longest = max(width(b) + new_tokens(b) for b in same)
        steps = longest - width(narrowest)
        if steps > 2:  # two tokens were run by the prefill calls above
            plan.append([replace(r, output_tokens=steps) for r in narrowest])
    return plan


def next_batch(waiting: list[Request], size: int, wait_s: float, free_s: float) -> tuple[float, list[Request]]:
    """Online serving's static batch: (when it starts, its requests), from the requests not yet started
    (`waiting`, in arrival order, future arrivals included) and when the engine is free (`free_s`).

    A traditional server starts a batch when `size` requests are queued, or when the oldest queued
    request has waited `wait_s`, whichever comes first, and never while the previous batch runs:
        start = max(free_s, min(arrival of the size-th waiting request, arrival of the first + wait_s))
    The batch is the first `size` requests that have arrived by then. Arrival times are known to the
    lab in advance, but the rule only uses those before `start`, as a real server's queue would.
    """
    full_s = waiting[size - 1].arrival_s if len(waiting) >= size else float("inf")
    start_s = max(free_s, min(full_s, waiting[0].arrival_s + wait_s))
    batch = [r for r in waiting[:size] if r.arrival_s <= start_s]
    return start_s, batch


def sizes_plan(requests: list[Request], sizes: list[int]) -> list[list[Request]]:
    """Warm-up calls for online serving, where a static batch can hold any number of requests up to the
    batch size: for each size, the widest requests of that many rows, with 2 new tokens."""
    widest = sorted(requests, key=lambda r: r.prompt_tokens, reverse=True)
    return [[replace(r, output_tokens=min(2, r.output_tokens)) for r in widest[:size]] for size in sizes]
