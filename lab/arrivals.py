"""When each request arrives: a seeded schedule, the same for every backend at the same rate.

The gaps between arrivals follow a gamma distribution of shape `burstiness` and scale
1 / (rate x burstiness), so their mean is 1 / rate whatever the burstiness: 1 gives exponential gaps
(Poisson arrivals), below 1 burstier, above 1 more even, inf exactly 1 / rate. As `vllm bench serve`
does (`get_request`, vllm/benchmarks/serve.py), the first request arrives after one gap too, and the
cumulative times are then scaled so that the last request arrives at exactly N / rate: the offered
rate is the rate asked for, whatever the draws. The draws are Python's `random.Random(seed)`, not
numpy's, so the distribution is vllm bench's but not its exact numbers.

rate = inf: every request arrives at t = 0 (the offline scenario).
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from lab.workloads import Request


def arrival_times(count: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Seconds after the pass starts at which each of `count` requests arrives, in workload order."""
    if count < 1:
        return []
    if math.isinf(rate):
        return [0.0] * count
    rng = random.Random(f"arrivals-{seed}-{rate!r}-{burstiness!r}")  # seeded per rate: rates draw apart
    if math.isinf(burstiness):
        gaps = [1.0 / rate] * count
    else:
        scale = 1.0 / (rate * burstiness)
        gaps = [rng.gammavariate(burstiness, scale) for _ in range(count)]
    times, total = [], 0.0
    for gap in gaps:
        total += gap
        times.append(total)
    factor = (count / rate) / times[-1] if times[-1] > 0 else 1.0
    return [t * factor for t in times]


def with_arrivals(requests: list[Request], times: list[float]) -> list[Request]:
    """The requests, each arriving at its time."""
    return [replace(r, arrival_s=t) for r, t in zip(requests, times, strict=True)]


def schedule(requests: list[Request], rate: float, burstiness: float, seed: int) -> list[Request]:
    """The workload at one offered rate (`arrival_times`)."""
    return with_arrivals(requests, arrival_times(len(requests), rate, burstiness, seed))
