"""vLLM's scheduler facts for each engine step, carried to this process with the step's own stats.

The frontend (`lab.backends.vllm`) sees tokens, not blocks: a prefill scheduled before its first token
appears, a prompt cut into chunks, and the slot async scheduling allocates one step ahead are all
invisible from it. The scheduler knows them. So the lab runs vLLM with its own scheduler class
(`SCHEDULER_CLS`, vLLM's `scheduler_cls` setting), in vLLM's engine-core process: vLLM's
`Scheduler` (or `AsyncScheduler`, whichever vLLM chose) with one method more. Its `make_stats`, run
after each step's outputs are applied (with async scheduling: after the next step is scheduled),
adds to the step's `SchedulerStats` the pool's free blocks and, for every running request,
`[prompt tokens, computed tokens, output tokens, max tokens, blocks held]`, packed into one bytes
object (`lab.backends.vllm_facts_codec`: one object a step, not one list a request, in either
process). Also, under `engine_core`, running totals of this process's own cost: its garbage
collections (`lab.gc_pauses.GcTally`, a callback in `gc.callbacks`: it watches, it changes nothing of
vLLM's GC settings or its frozen heap) and `facts_s`, the seconds spent building these facts. The facts ride in the
stats' `kv_connector_stats` dict (the one field of `SchedulerStats` that takes free-form data), under
`FACTS_KEY`; `take_step_facts` removes them in this process before vLLM's own stat loggers see the
stats. Nothing else changes: the classes schedule exactly as vLLM's own.

Private objects read (checked against vLLM 0.26.0 and 0.32.0, VERIFIED_VLLM): `Scheduler.running`,
`Request.num_prompt_tokens`, `num_computed_tokens`, `num_output_tokens`, `max_tokens`,
`KVCacheManager.coordinator.single_type_managers[i].req_to_blocks` and
`KVCacheManager.block_pool.get_num_free_blocks()` / `num_gpu_blocks` (block 0, the null block, is
never free and never in a request's table).
"""

from __future__ import annotations

import time

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler

from lab.backends import vllm_facts_codec as codec
from lab.gc_pauses import GcTally

VERIFIED_VLLM = ("0.26.0", "0.32.0")
SCHEDULER_CLS = "lab.backends.vllm_step_facts.StepFactsScheduler"
FACTS_KEY = "paged_attention_lab_step_facts"


class _StepFacts:
    """`make_stats` plus this step's block facts (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._gc_tally = GcTally().start()
        self._facts_s = 0.0

    def make_stats(self, *args, **kwargs):
        stats = super().make_stats(*args, **kwargs)
        if stats is not None:
            began = time.perf_counter()
            extra = dict(stats.kv_connector_stats or {})
            extra[FACTS_KEY] = facts = self._step_facts()
            stats.kv_connector_stats = extra
            self._facts_s += time.perf_counter() - began
            facts["engine_core"] = dict(self._gc_tally.totals(), facts_s=self._facts_s)
        return stats

    def _step_facts(self) -> dict:
        manager = self.kv_cache_manager
        tables = [m.req_to_blocks for m in manager.coordinator.single_type_managers]
        requests = codec.pack(
            (
                r.num_prompt_tokens,
                r.num_computed_tokens,
                r.num_output_tokens,
                r.max_tokens,
                sum(len(t.get(r.request_id, ())) for t in tables),
            )
            for r in self.running
        )
        pool = manager.block_pool
        return {"free_blocks": pool.get_num_free_blocks(), "num_blocks": pool.num_gpu_blocks, "requests": requests}


class _SyncStepFacts(_StepFacts, Scheduler):
    pass


class _AsyncStepFacts(_StepFacts, AsyncScheduler):
    pass


class StepFactsScheduler:
    """The scheduler vLLM would have chosen (async or not, as its config decided), with step facts."""

    def __new__(cls, *args, **kwargs):
        config = kwargs["vllm_config"] if "vllm_config" in kwargs else args[0]
        chosen = _AsyncStepFacts if config.scheduler_config.async_scheduling else _SyncStepFacts
        return chosen(*args, **kwargs)


def take_step_facts(stats) -> dict | None:
    """The step facts carried by one step's `SchedulerStats`, removed from it (None where it has none)."""
    extra = getattr(stats, "kv_connector_stats", None)
    if not extra or FACTS_KEY not in extra:
        return None
    facts = extra.pop(FACTS_KEY)
    if not extra:
        stats.kv_connector_stats = None
    return facts
