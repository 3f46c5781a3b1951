"""The observation "paging inside transformers": hf/continuous against hf/batched, on the same model code.

Both run transformers' own model code; only the cache (paged pool or contiguous padded batch), the
scheduling (continuous or static batches) and the attention kernel over the cache differ. Throughput
splits exactly into two factors:

    output tokens/s = (output tokens / engine steps) x (engine steps / s)

- output tokens per step: how many requests' tokens one forward pass carries. Memory decides it:
  how many requests the KV memory holds at once, and how much of it their own tokens fill (the
  token-state share of lab.accounting.breakdown; hf/batched also loses steps to padding and to
  finished sequences that keep generating in their batch).
- steps per second: how fast one forward pass of that size runs. Kernels decide it (and the
  engine's per-step host work): hf/continuous with sdpa or eager gathers each request's K/V out of
  the pool and attends densely over the packed batch under a block-diagonal mask, which is not a
  paged kernel.

The factor further from 1 (in log terms) is named as where the difference comes from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lab.records import BreakdownEntry, RunSummary
from lab.report.run_view import RunView

CLAIM = (
    "Paging inside transformers (hf/continuous) raises throughput over its contiguous cache (hf/batched), "
    "on the same model code."
)
NOT_SUPPORTED = "not supported by this run"


@dataclass(frozen=True)
class StepProfile:
    """Output tokens/s as tokens per engine step x engine steps per second."""

    tokens_per_s: float
    tokens_per_step: float
    steps_per_s: float


def engine_steps(view: RunView, run: RunSummary) -> int | None:
    """Forward passes of the timed pass: hf/batched, each batch's decoding steps; hf/continuous, its own count."""
    if run.mode == "continuous":
        steps = (run.engine or {}).get("steps_last_pass")
        return steps if steps is not None else (len(view.part(run).kv_samples) or None)
    result = view.part(run).result
    return sum(b.generated_tokens for b in result.hf_batches) if result else None


def step_profile(view: RunView, run: RunSummary) -> StepProfile | None:
    """Output tokens/s as tokens per step x steps per second, or None without the figures."""
    tokens, duration = run.metric("output_tokens"), run.metric("duration_s")
    steps = engine_steps(view, run)
    if not tokens or not duration or not steps:
        return None
    return StepProfile(tokens / duration, tokens / steps, steps / duration)


def paging_inside_transformers(view: RunView, ok: dict[str, RunSummary], breakdown: list[BreakdownEntry]):
    """The observation's (claim, verdict, evidence); `ok` maps 'backend/mode' to the successful runs."""
    continuous, batched = ok.get("hf/continuous"), ok.get("hf/batched")
    if not continuous or not batched:
        return CLAIM, NOT_SUPPORTED, "needs hf/continuous and hf/batched"
    c, b = step_profile(view, continuous), step_profile(view, batched)
    if c is None or b is None:
        return CLAIM, NOT_SUPPORTED, "needs both runs' output tokens and engine steps"
    memory, kernels = c.tokens_per_step / b.tokens_per_step, c.steps_per_s / b.steps_per_s
    ratio = memory * kernels
    shares = {e.run: e.shares["token_states"] for e in breakdown}
    states = [shares.get("hf/continuous"), shares.get("hf/batched")]
    attn = (continuous.engine or {}).get("attn_implementation", "-")
    evidence = (
        f"hf/continuous {c.tokens_per_s:,.1f} vs hf/batched {b.tokens_per_s:,.1f} output tokens/s ({ratio:.2f}x)"
        f" = {memory:.2f}x output tokens per engine step ({c.tokens_per_step:.1f} vs {b.tokens_per_step:.1f}) "
        f"x {kernels:.2f}x engine steps per second ({c.steps_per_s:.1f} vs {b.steps_per_s:.1f}). "
        + (
            f"Token states hold {100 * states[0]:.1f}% of the KV memory hf/continuous held, {100 * states[1]:.1f}% of "
            "hf/batched's. "
            if None not in states
            else ""
        )
        + "The difference comes mostly from "
        + dominant(memory, kernels, attn)
    )
    return CLAIM, "holds" if ratio > 1 else "does not hold", evidence


def dominant(memory: float, kernels: float, attn: str) -> str:
    """Which factor is further from 1, and what decides it."""
    if abs(math.log(memory)) >= abs(math.log(kernels)):
        return (
            "memory: how many tokens a step carries, which the paged pool (no padding, no finished sequences, "
            "requests admitted as blocks free up) decides."
        )
    if "flash" in attn:
        how = "reads the blocks in place (flash varlen or block-table kernels)"
    else:
        how = (
            "gathers each request's K/V out of the pool and attends densely over the packed batch under a "
            "block-diagonal mask, not in place as a paged kernel does"
        )
    return (
        f"kernels: how fast a step of that size runs. With `{attn}` transformers {how}, and adds its per-step "
        "host work."
    )
