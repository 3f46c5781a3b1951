"""hf/continuous's memory sharing: n parallel samples forked inside transformers' continuous batching.

transformers (5.17 and 5.19, read in their source) forks a request when the manager's GenerationConfig
has `num_return_sequences=N` (a setting of the manager, not of one request):
- its scheduler prefills all but the prompt's last token (`Scheduler._schedule_request`, while
  `RequestState.num_children` > 0) and queues the request for a fork;
- the batch processor's `update_batch` then forks N - 1 children `<id>__child#k` (`RequestState.fork`;
  the cache: `PagedAttentionCache.fork_request` in 5.17, `prepare_fork_request` in 5.19). With
  `allow_block_sharing` the parent's full blocks go into every child's block table, their reference
  counts raised (5.17: `Block.ref_count` in its `BlockManager`; 5.19: `BlockLedger.shared_ref_counts`),
  and the partial last block is copied; without it every block is copied;
- every sequence then feeds the last prompt token and samples its own tokens.

`allow_block_sharing` is transformers' one switch for this and for its prefix cache (full blocks
hashed by content and matched across requests). The lab turns it on only at a sharing point that
shares something (n > 1 or a shared prefix), as vllm/shared turns vLLM's prefix cache on; everywhere
else it stays off, as for every mode. The blocks it caches are dropped before every pass
(`hf_continuous_hooks.forget_cached_blocks`), as vLLM's prefix cache is reset.

The saving: each KV sample holds the pool's physical blocks (`blocks_used`, a shared block once) and
the sum of the running sequences' block tables (`held_blocks`, a shared block once per table: what the
same sequences hold with every block copied, under the same schedule); `lab.accounting.sharing` takes
the paper's saving, (held - physical) / held, from the two.

Records: one per request, as for vLLM and the hf generate() modes: `output_tokens` counts every
sequence (n x L); its token times are the first sequence's (the parent's), its end the last token of
the last sequence to finish. Sampling is seeded (`pass_seed`) before every pass; the draws follow the
engine's steps, which its scheduler forms.

Not supported: beam search (nothing in transformers' continuous batching reads `num_beams`), and a
one-token prompt with n > 1 (nothing is left to prefill before the fork: transformers runs a forward
over zero tokens and fails).
"""

from __future__ import annotations

from lab.backends import hf_sharing
from lab.backends.hf_continuous_hooks import CHILD_MARK, parent_id
from lab.config import EngineSettings
from lab.errors import LabInputError
from lab.workloads import Request

NO_BEAMS = (
    "hf/continuous has no beam search: transformers' continuous batching (5.17 and 5.19, "
    "generation/continuous_batching/) reads no num_beams, so beams cannot be shared in its paged cache"
)


def generation_options(engine: EngineSettings) -> dict:
    """The manager's GenerationConfig keywords: greedy, or n samples (hf/batched's sampling keywords)."""
    if engine.beam_width > 1:
        raise LabInputError(f"--beam-width {engine.beam_width}: {NO_BEAMS}; drop hf/continuous from --backends")
    if engine.n > 1:
        return hf_sharing.generate_options(engine)
    return {"do_sample": False}


def block_sharing(engine: EngineSettings) -> bool:
    """transformers' `allow_block_sharing`: on where the point shares something (module docstring)."""
    return engine.n > 1 or engine.shared_prefix_tokens > 0


def pass_seed(engine: EngineSettings) -> int | None:
    """The torch seed set before every pass when sampling (None: greedy, nothing to seed)."""
    return hf_sharing.batch_seed(engine, 0) if engine.n > 1 else None


def check_prompts(requests: list[Request], n: int) -> None:
    """LabInputError for a one-token prompt with n > 1, which transformers cannot fork (module docstring)."""
    short = [r.request_id for r in requests if r.prompt_tokens < 2]
    if n > 1 and short:
        raise LabInputError(
            f"hf/continuous --n {n}: requests {short[:5]} have one-token prompts, and transformers' continuous "
            "batching forks a request after prefilling all but its last prompt token; use prompts of 2+ tokens"
        )


class Sequences:
    """The finished sequences of each request (the parent and its n - 1 forks), until all n are in, or
    one failed (a parent that fails before its fork has no forks to wait for)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._finished: dict[str, dict[str, object]] = {}
        self._complete: set[str] = set()

    def add(self, output) -> bool:
        """Keep one finished sequence; True once per request, when this one completes it."""
        key = parent_id(output.request_id)
        got = self._finished.setdefault(key, {})
        got[output.request_id] = output
        if key in self._complete or (len(got) < self.n and not getattr(output, "error", None)):
            return False
        self._complete.add(key)
        return True

    def of(self, key: str) -> list:
        """The request's finished sequences, the parent first, then the forks in order."""
        got = self._finished.get(key, {})
        return sorted(got.values(), key=lambda o: _fork_index(o.request_id))


def _fork_index(request_id: str) -> int:
    """-1 for the parent, k for its fork `<id>__child#k`."""
    _, mark, index = request_id.partition(CHILD_MARK)
    return int(index) if mark else -1
