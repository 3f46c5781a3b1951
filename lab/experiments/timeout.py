"""How long one backend/mode may run before the experiment stops it (`--timeout`).

A hung engine would otherwise hang the whole experiment. The default is sized from the workload:

    timeout_s = LOAD_ALLOWANCE_S + PER_OUTPUT_TOKEN_S x output_tokens x (repeats + 1)

`output_tokens` is the sum over the workload's requests (the tokens a pass must generate); the
`+ 1` is the warm-up, never more than one pass. LOAD_ALLOWANCE_S covers the process start, the
model load and vLLM's engine start (compilation, CUDA graphs); PER_OUTPUT_TOKEN_S is a floor
generation rate of 4 tokens/s, well below the slowest backend/mode (hf/sequential) on the machines
the README's tables were measured on, so that only a backend that has stopped making progress meets it.
"""

from __future__ import annotations

from collections.abc import Iterable

LOAD_ALLOWANCE_S = 600.0
PER_OUTPUT_TOKEN_S = 0.25


def default_timeout_s(lengths: Iterable[tuple[int, int]], repeats: int) -> float:
    """The limit for a workload of (prompt_tokens, output_tokens) `lengths` timed `repeats` times."""
    output_tokens = sum(output for _, output in lengths)
    return LOAD_ALLOWANCE_S + PER_OUTPUT_TOKEN_S * output_tokens * (repeats + 1)


def describe_timeout(timeout_s: float, given: bool) -> str:
    """'900 s (--timeout)' or '700 s (the default for this workload: see lab/experiments/timeout.py)'."""
    source = "--timeout" if given else "the default for this workload, lab/experiments/timeout.py"
    return f"{timeout_s:,.0f} s ({source})"
