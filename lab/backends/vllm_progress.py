"""What the vLLM frontend (`lab.backends.vllm`) has seen of each request, and of those in flight."""

from __future__ import annotations

from dataclasses import dataclass, field

from lab.accounting import kv
from lab.workloads import Request


@dataclass
class Progress:
    """One request as this process has seen it so far."""

    request: Request
    generated: int = 0
    first_token_s: float | None = None
    end_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)
    stats: object = None  # RequestOutput.metrics: vLLM's RequestStateStats (None with its stats off)


@dataclass
class InFlight:
    """The requests that have produced a token and not finished: the scheduler holds their blocks.

    Kept up to date output by output, so that a KV sample costs O(1) however many requests run.
    `tokens_stored` is the sum of `kv.stored_tokens(prompt, generated)` = P + g - 1 over them (the
    newest token's K/V is written by the step that consumes it).
    """

    requests: int = 0
    tokens_stored: int = 0

    def update(self, seen: Progress, new_tokens: int, finished: bool, now: float, timed_tokens: int) -> None:
        """`timed_tokens`: of the new tokens, those of the sequence whose token times are kept (n > 1)."""
        if new_tokens:
            seen.token_times_s.extend([now] * timed_tokens)
            if seen.generated == 0:
                seen.first_token_s = now
                self.requests += 1
                self.tokens_stored += seen.request.prompt_tokens - 1
            seen.generated += new_tokens
            self.tokens_stored += new_tokens
        if finished:
            seen.end_s = now
            if seen.generated:
                self.requests -= 1
                self.tokens_stored -= kv.stored_tokens(seen.request.prompt_tokens, seen.generated)
