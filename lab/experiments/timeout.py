"""How long one backend/mode may run before the experiment stops it (`--timeout`).

A hung engine would otherwise hang the whole experiment. The default is sized from the workload:

    timeout_s = LOAD_ALLOWANCE_S + PER_OUTPUT_TOKEN_S x output_tokens x sequences x (rates x repeats + 1)
                + repeats x sum over the finite rates of requests / rate

`output_tokens` is the sum over the workload's requests (the tokens a pass must generate);
`sequences` the samples (--n) or beams (--beam-width) each request generates; `rates` the offered
request rates (--request-rate, each `repeats` timed passes; offline: one); the `+ 1` is the
warm-up, never more than one pass; the last term the time the arrivals of each finite rate take.
LOAD_ALLOWANCE_S covers the process start, the model load and vLLM's engine start (compilation,
CUDA graphs); PER_OUTPUT_TOKEN_S is a floor generation rate of 4 tokens/s, well below the slowest
backend/mode (hf/sequential) on the machines the README's tables were measured on, so that only a
backend that has stopped making progress meets it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

LOAD_ALLOWANCE_S = 600.0
PER_OUTPUT_TOKEN_S = 0.25


def default_timeout_s(
    lengths: Iterable[tuple[int, int]], repeats: int, rates: Iterable[float] = (math.inf,), sequences: int = 1
) -> float:
    """The limit for a workload of (prompt_tokens, output_tokens) `lengths` timed `repeats` times at
    each offered rate, each request generating `sequences` sequences (module docstring)."""
    lengths, rates = list(lengths), list(rates)
    output_tokens = sum(output for _, output in lengths) * sequences
    arrivals_s = repeats * sum(len(lengths) / rate for rate in rates if math.isfinite(rate))
    return LOAD_ALLOWANCE_S + PER_OUTPUT_TOKEN_S * output_tokens * (len(rates) * repeats + 1) + arrivals_s


def describe_timeout(timeout_s: float, given: bool) -> str:
    """'900 s (--timeout)' or '700 s (the default for this workload: see lab/experiments/timeout.py)'."""
    source = "--timeout" if given else "the default for this workload, lab/experiments/timeout.py"
    return f"{timeout_s:,.0f} s ({source})"
