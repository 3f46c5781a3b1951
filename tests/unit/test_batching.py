"""lab.backends.batching: which calls warm every shape a timed pass will use (pure; hand-computed)."""

from __future__ import annotations

from lab.backends import batching
from lab.workloads import Request


def req(rid: int, prompt: int, output: int) -> Request:
    return Request(rid, tuple(range(prompt)), output)


def shapes(plan: list[list[Request]], pad_to: int | None = None) -> list[tuple[int, int, int]]:
    """(rows, padded width, new tokens) of each warm-up call."""
    return [(max(len(c), pad_to or 0), batching.width(c), batching.new_tokens(c)) for c in plan]


def test_one_at_a_time_warms_each_prompt_length_and_every_cache_length():
    requests = [req(0, 10, 5), req(1, 40, 20), req(2, 10, 7), req(3, 3, 4)]
    plan = batching.shapes_plan(batching.cut(requests, 1))
    # each distinct prompt length once (10 twice: once), 2 tokens: the prefill and one decode step
    assert shapes(plan)[:3] == [(1, 10, 2), (1, 40, 2), (1, 3, 2)]
    # then the shortest prompt decodes to the longest prompt + output (40 + 20): every cache length 3-59
    assert shapes(plan)[3:] == [(1, 3, 57)]


def test_batches_are_warmed_per_batch_size_and_width():
    requests = [req(0, 10, 5), req(1, 40, 20), req(2, 12, 30), req(3, 8, 4), req(4, 8, 9)]
    batches = batching.cut(requests, 2)  # widths 40, 12, 8; sizes 2, 2, 1
    plan = batching.shapes_plan(batches)
    assert shapes(plan) == [(2, 40, 2), (2, 12, 2), (1, 8, 2), (2, 12, 48), (1, 8, 9)]


def test_static_batches_are_padded_to_one_size_so_one_long_call_covers_decode():
    requests = [req(0, 10, 5), req(1, 40, 20), req(2, 12, 30), req(3, 8, 4), req(4, 8, 9)]
    batches = batching.cut(requests, 2)
    assert [len(batching.padding_rows(b, 2)) for b in batches] == [0, 0, 1]
    assert batching.padding_rows(batches[2], 2) == [requests[4]]  # a copy of the last request
    assert batching.padding_rows(batches[2], None) == []
    plan = batching.shapes_plan(batches, pad_to=2)
    assert shapes(plan, pad_to=2) == [(2, 40, 2), (2, 12, 2), (2, 8, 2), (2, 8, 52)]  # 40 + 20 = 60 = 8 + 52


def test_the_static_cache_length_fits_every_batch():
    batches = batching.cut([req(0, 10, 5), req(1, 40, 20), req(2, 12, 30)], 2)
    # W + N - 1 per batch: 40 + 20 - 1 = 59, 12 + 30 - 1 = 41
    assert batching.cache_len(batches) == 59


def test_a_short_workload_needs_no_long_call():
    plan = batching.shapes_plan(batching.cut([req(0, 5, 2), req(1, 5, 1)], 2))
    assert shapes(plan) == [(2, 5, 2)]
