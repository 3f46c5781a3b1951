"""How many requests each approach runs at once under one fixed KV-cache budget: arithmetic only.

The question of the PagedAttention paper's Figure 13a (lab.paper), for the workload's requests and a
budget of B bytes (slots and bytes as `lab.accounting.kv` defines them):
- static, max-length reservation (the Orca-Max way): every request reserves `max_len` slots:
  B // (max_len x bytes per token) requests;
- dynamic padded batch (hf/batched): the largest batch size whose batches of consecutive requests
  each fit, a batch needing batch x (longest prompt + longest output - 1) slots at its end;
- paged (vLLM): the pool B buys (B // block bytes blocks, block 0 the null block), and a simulated
  continuous-batching scheduler over it; the mean and the largest number of requests per step.
`lab.experiments.capacity` measures the same points with the engines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lab.accounting.kv import blocks_needed, final_tokens, usable_blocks
from lab.records import KvSample


def static_capacity(budget_bytes: int, bytes_per_token: int, max_len: int) -> int:
    """Requests a static cache fits when each reserves `max_len` slots: budget // (max_len x bytes per token)."""
    return budget_bytes // (max_len * bytes_per_token)


def padded_batch_kv_bytes(prompt_tokens: Sequence[int], output_tokens: Sequence[int], bytes_per_token: int) -> int:
    """Peak cache bytes of one left-padded batch: batch x (W + N - 1) x bytes per token
    (W the longest prompt, N the longest output: the cache at the end of `generate`)."""
    return len(prompt_tokens) * (max(prompt_tokens) + max(output_tokens) - 1) * bytes_per_token


def padded_batch_capacity(budget_bytes: int, bytes_per_token: int, requests: Sequence[tuple[int, int]]) -> int:
    """Largest batch size B such that every batch of B consecutive `(prompt, output)` requests fits:
    padded_batch_kv_bytes <= budget for each. 0 if not even one request fits. At most len(requests)."""
    best = 0
    for size in range(1, len(requests) + 1):
        batches = [requests[i : i + size] for i in range(0, len(requests), size)]
        if all(
            padded_batch_kv_bytes([p for p, _ in b], [o for _, o in b], bytes_per_token) <= budget_bytes
            for b in batches
        ):
            best = size
    return best


@dataclass(frozen=True)
class PagedSimulation:
    """What the paged scheduler simulation saw: running requests per step, preemptions, steps."""

    max_running: int
    mean_running: float
    steps: int
    preemptions: int
    running_per_step: tuple[int, ...]


def simulate_paged(
    requests: Sequence[tuple[int, int]],
    num_blocks: int,
    block_size: int,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
) -> PagedSimulation:
    """A continuous-batching scheduler over a pool of `num_blocks` blocks (block 0 the null block).

    All requests `(prompt, output)` arrive at t=0, in order. Each step, as vLLM v1's scheduler does:
    1. every running request gets the slot for the token it computes now: ceil((stored + 1) / bs)
       blocks; if the pool has too few free blocks, the most recently admitted running request is
       preempted (blocks freed, back to the front of the queue, recomputed later);
    2. waiting requests are admitted first come first served while ceil(tokens / bs) blocks for their
       prompt (plus tokens already generated, after a preemption) are free, up to `max_num_seqs`
       running and `max_num_batched_tokens` tokens this step; a request that does not fit stops
       admission (no overtaking);
    3. every scheduled request produces one token; a request with all its output tokens leaves and
       frees its blocks.
    `running_per_step` counts the requests each step runs (the paper's "batched requests"). A request
    that alone exceeds the pool raises ValueError (vLLM refuses it too).
    """
    free = usable_blocks(num_blocks)
    need_max = max(blocks_needed(final_tokens(p, o), block_size) for p, o in requests)
    if need_max > free:
        raise ValueError(f"a request needs {need_max} blocks and the pool has {free}")
    waiting = list(range(len(requests)))
    running: list[int] = []
    stored = [0] * len(requests)  # tokens computed (K/V written) per request
    generated = [0] * len(requests)
    held = [0] * len(requests)  # blocks held
    counts: list[int] = []
    preemptions = 0
    while waiting or running:
        budget_tokens = max_num_batched_tokens or math.inf
        scheduled: list[int] = []
        for r in list(running):  # decode: one new token each
            if r not in running:
                continue  # preempted below while making room for an earlier one
            need = blocks_needed(stored[r] + 1, block_size) - held[r]
            while need > free and running[-1] != r:
                victim = running.pop()
                free += held[victim]
                held[victim], stored[victim] = 0, 0
                waiting.insert(0, victim)
                preemptions += 1
                if victim in scheduled:
                    scheduled.remove(victim)
            if need > free:  # r itself is the newest: preempt it
                running.remove(r)
                free += held[r]
                held[r], stored[r] = 0, 0
                waiting.insert(0, r)
                preemptions += 1
                continue
            free -= need
            held[r] += need
            scheduled.append(r)
            budget_tokens -= 1
        while waiting and (max_num_seqs is None or len(running) < max_num_seqs):
            r = waiting[0]
            tokens = requests[r][0] + generated[r]  # prompt, plus what it generated before a preemption
            need = blocks_needed(tokens, block_size)
            if need > free or tokens > budget_tokens:
                break
            waiting.pop(0)
            free -= need
            held[r] = need
            stored[r] = tokens - 1  # the step computes tokens; stored becomes `tokens` below
            running.append(r)
            scheduled.append(r)
            budget_tokens -= tokens
        if not scheduled:
            raise ValueError("the simulated scheduler cannot make progress")
        counts.append(len(running))
        for r in scheduled:
            stored[r] += 1
            generated[r] += 1
            if generated[r] >= requests[r][1]:
                running.remove(r)
                free += held[r]
                held[r] = 0
    return PagedSimulation(max(counts), sum(counts) / len(counts), len(counts), preemptions, tuple(counts))


def paged_capacity(
    budget_bytes: int,
    bytes_per_token: int,
    block_size: int,
    requests: Sequence[tuple[int, int]],
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
) -> PagedSimulation:
    """`simulate_paged` over the pool a budget buys: num_blocks = budget // (block_size x bytes per token),
    as vLLM sizes a pool from `kv_cache_memory_bytes` (block 0 then the null block)."""
    num_blocks = budget_bytes // (block_size * bytes_per_token)
    return simulate_paged(requests, num_blocks, block_size, max_num_seqs, max_num_batched_tokens)


def capacity_arithmetic(
    requests: list[tuple[int, int]],
    budget_bytes: int,
    bytes_per_token: int,
    block_size: int,
    max_len: int,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
) -> dict[str, dict]:
    """Concurrency each approach fits in `budget_bytes` for `(prompt, output)` requests (see module doc)."""
    static = static_capacity(budget_bytes, bytes_per_token, max_len)
    padded = padded_batch_capacity(budget_bytes, bytes_per_token, requests)
    try:
        sim = paged_capacity(budget_bytes, bytes_per_token, block_size, requests, max_num_seqs, max_num_batched_tokens)
        paged = {
            "concurrency": sim.max_running,
            "mean_running": sim.mean_running,
            "steps": sim.steps,
            "preemptions": sim.preemptions,
            "num_blocks": budget_bytes // (block_size * bytes_per_token),
        }
    except ValueError as exc:
        paged = {"concurrency": 0, "mean_running": 0.0, "error": str(exc)}
    return {
        "static": {
            "concurrency": min(static, len(requests)),
            "unbounded": static,
            "rule": f"budget // ({max_len} slots x {bytes_per_token} B)",
        },
        "padded": {"concurrency": padded, "rule": "largest batch whose batches each need <= budget"},
        "paged": dict(
            paged,
            rule=f"simulated scheduler over budget // ({block_size} x {bytes_per_token} B) blocks",
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
        ),
    }


def workload_budget_bytes(
    requests: Sequence[tuple[int, int]], bytes_per_token: int, block_size: int, share: float, context_tokens: int = 0
) -> int:
    """A KV budget the workload fills: `share` of the blocks its `(prompt, output)` requests hold at their
    final lengths all at once; at least the largest request's, and the model's context (vLLM refuses a
    pool that cannot hold one request of `context_tokens`); plus 2 blocks (vLLM's null block and
    transformers' second trash block). In bytes:
    (max(ceil(share x sum_i ceil(f_i / B)), max_i ceil(f_i / B), ceil(context / B)) + 2) x B x bytes per token,
    f_i = P_i + O_i - 1."""
    needs = [blocks_needed(final_tokens(p, o), block_size) for p, o in requests]
    blocks = max(math.ceil(share * sum(needs)), max(needs), blocks_needed(context_tokens, block_size)) + 2
    return blocks * block_size * bytes_per_token


def concurrency_levels(limit: int, given: tuple[int, ...] | None) -> list[int]:
    """The curve's points: `given` up to `limit`, else 1, 2, 4, ... and `limit` itself."""
    if limit < 1:
        return []
    if given:
        return sorted({c for c in given if 1 <= c <= limit})
    levels, c = [], 1
    while c < limit:
        levels.append(c)
        c *= 2
    return levels + [limit]


def batched_requests(samples: list[KvSample], batch_of: Callable[[KvSample], int]) -> dict:
    """Requests each engine step ran (`batch_of(sample)`), the paper's "batched requests": the largest, and
    the mean weighted by step duration (`t_s[i] - t_s[i-1]`); steps that ran nothing are left out."""
    previous, weighted, total, batches = 0.0, 0.0, 0.0, []
    for s in sorted(samples, key=lambda s: s.step):
        weight, previous = s.t_s - previous, s.t_s
        batch = batch_of(s)
        if batch:
            batches.append(batch)
            weighted += batch * weight
            total += weight
    return {
        "max_running": max(batches, default=0),
        "mean_running": weighted / total if total else None,
        "max_waiting": max((s.waiting or 0 for s in samples), default=0),
    }
