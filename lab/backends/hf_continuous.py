"""hf/continuous: transformers' own continuous batching over its paged KV cache.

The same transformers model code as hf/batched and hf/static-cache, with a paged cache instead of a
contiguous one: PagedAttention isolated inside one framework. The engine is transformers'
`ContinuousBatchingManager` (`model.init_continuous_batching(...)`, the engine behind
`model.generate_batch`), one per process, built at load (`lab.backends.hf_continuous_engine`) and
kept for the warm-up and every timed pass, so that neither the pool's allocation nor CUDA graph
capture is timed.

Threads. The manager steps in a background thread of its own; this process's main thread hands it
requests (`add_request`, a thread-safe queue) when each arrives (`Request.arrival_s`,
`lab.backends.dispatch`; offline all at t=0) and takes finished results (`get_result`), as for vLLM:
the scheduler decides when each starts, so queueing is part of every request's TTFT and latency.

Fairness, as for every mode:
- no prefix caching: `allow_block_sharing=False` (with sharing on, `add_requests` also reorders),
  except at a memory-sharing point (`lab.backends.hf_continuous_sharing`: n samples forked per
  request, their blocks shared; one record per request, n x L tokens);
- exact output lengths: EOS disabled (`eos_token_id=-1`) and each request's own `max_new_tokens`
  (continuous batching drops min-length processors, so those cannot be used);
- the KV pool vLLM would get: `num_blocks` from `--kv-cache-memory` or vLLM's rule
  (`lab.accounting.continuous`), recorded in `engine_info()`;
- the workload's own token ids; greedy decoding (n > 1: seeded sampling).

Times. transformers stamps each token with `time.perf_counter()` in its thread when the token is on
the host (`record_timestamps=True`); `Clock.since_start` puts those readings on the runner's clock,
which is the same `perf_counter`. A request's `lifespan[0]` is when the scheduler first took it: its
record's `scheduled_s`; `token_times_s` holds every token's time. When the pool runs out,
transformers recomputes a request from scratch and restarts its timestamps; the tokens before that
then get the time of the engine step that produced them (`hf_continuous_hooks.StepTap`), and the
record says so.

The step tap. `hf_continuous_hooks.StepTap` wraps the batch processor's `update_batch` (run once per
engine step, in the manager's thread): after it, the tokens each request gained are timed and, with
KV samples on, the scheduler's queues and the paged cache's block tables are read, while nothing
else touches them. These are private objects of transformers, read through `hf_continuous_hooks` for
the two layouts known here (transformers 5.17: `group_cache_managers`; 5.18+: `cache_allocators`);
any other layout stops the run at load with a message (or use --no-kv-samples). See `kv_samples()`
for the fields.
"""

from __future__ import annotations

import gc
import time

import torch

from lab.accounting.continuous import check_requests_fit
from lab.accounting.kv import final_tokens
from lab.accounting.paged import step_sums
from lab.backends.base import Clock
from lab.backends.dispatch import MAX_SLEEP_S, Dispatcher
from lab.backends.hf import HfBackend
from lab.backends.hf_continuous_engine import NO_EOS, build_manager, describe, plan_pool, set_attention
from lab.backends.hf_continuous_hooks import StepTap, cache_view, forget_cached_blocks, parent_id
from lab.backends.hf_continuous_sharing import Sequences, block_sharing, check_prompts, pass_seed
from lab.records import KvSample, RequestRecord
from lab.workloads import Request

RESULT_POLL_S = 1.0  # how long the main thread waits for a result before checking the engine is alive
STOP_TIMEOUT_S = 60.0
TAP_IDLE_TIMEOUT_S = 60.0
STALL_S = 300.0  # requests pending and no engine step for this long: give up on them (recorded as errors)


class HfContinuousBackend(HfBackend):
    """transformers' ContinuousBatchingManager, one per process (loading the model is HfBackend's)."""

    def __init__(self, spec, model_path: str, device: str, dtype: str) -> None:
        super().__init__(spec, model_path, device, dtype)
        self._manager = None
        self._tap: StepTap | None = None
        self._view = None
        self._info: dict = {}
        self._samples: list[KvSample] = []
        self._clock: Clock | None = None
        self._lab_ids: dict[str, int] = {}
        self._finals: dict[str, int] = {}  # the most tokens each request stores: P + O - 1
        self._step_token_times: dict[str, list[float]] = {}  # perf_counter of the step that made each token
        self._first_step_end: dict[str, float] = {}  # perf_counter after the first step that ran each request
        self._calls = 0
        self._steps_last_call: int | None = None
        self._stalled = False

    # -- load ------------------------------------------------------------------------------------

    def load(self) -> None:
        super().load()
        set_attention(self.model, self.spec.engine.hf_continuous.attn)
        pool = plan_pool(self.spec, self.model, self.model_path, self.dtype, self.device)
        self._manager, tokens_rule = build_manager(self.model, self.spec, pool)
        cache = self._manager.batch_processor.cache
        self._view = cache_view(cache) if self.spec.engine.sample_kv_every_step else None
        self._tap = StepTap(self._manager.batch_processor, self._on_step)
        self._manager.start()
        self._info = describe(self._manager, self.model, self.spec, pool, tokens_rule, self._view,
                              self.weights_allocated_bytes)  # fmt: skip

    # -- the timed work ----------------------------------------------------------------------------

    def warmup_plan(self, requests: list[Request]) -> list[list[Request]]:
        """The whole workload once: the engine's batch shapes (and the CUDA graphs captured for them)
        depend on every request in flight, so only the workload itself covers the timed pass's shapes."""
        return [list(requests)]

    def warmup_requests(self, requests: list[Request]) -> list[Request]:
        return list(requests)  # "first-batch": the same, for the reason above

    def generate(self, requests: list[Request], clock: Clock) -> list[RequestRecord]:
        if self._manager is None:
            raise RuntimeError("HfContinuousBackend.generate() called before load()")
        if self._stalled:
            raise RuntimeError(f"transformers' engine stalled in an earlier pass (no step for {STALL_S:.0f} s)")
        lengths = [(r.prompt_tokens, r.output_tokens) for r in requests]
        check_requests_fit(lengths, self._info["num_blocks"], self._info["block_size"])
        check_prompts(requests, self.spec.engine.n)
        self._start_pass()
        self._calls += 1
        self._samples, self._step_token_times, self._first_step_end = [], {}, {}
        self._lab_ids, self._finals = {}, {}
        self._clock = clock
        steps_before = getattr(self._manager, "current_batch", None)
        dispatcher = Dispatcher(requests, clock, self.spec.engine.online.max_concurrency)
        pending = {self._key(r): r for r in requests}
        sequences = self._serve(dispatcher, pending)
        self._tap.idle.wait(TAP_IDLE_TIMEOUT_S)  # the last step's tap runs after its results are delivered
        steps_after = getattr(self._manager, "current_batch", None)
        both = None not in (steps_before, steps_after)
        self._steps_last_call = steps_after - steps_before if both else None
        fatal = getattr(self._manager.background_thread_status, "fatal_error", None)
        if fatal is None and self._stalled:
            fatal = f"no engine step for {STALL_S:.0f} s with requests pending"
        n = self.spec.engine.n
        records = [_record(r, sequences.of(key), n, clock, fatal, self._lab_times(key)) for key, r in pending.items()]
        for record in records:
            dispatcher.stamp(record)
        return records

    def _start_pass(self) -> None:
        """Before a pass: no block cached by an earlier one (sharing on), and the samples' seed (n > 1)."""
        if block_sharing(self.spec.engine):
            dropped = forget_cached_blocks(self._manager.batch_processor.cache)
            self._info["cached_blocks_dropped_before_last_pass"] = dropped
        seed = pass_seed(self.spec.engine)
        if seed is not None:
            torch.manual_seed(seed)  # the engine's thread samples from torch's default generators

    def _lab_times(self, key: str) -> dict:
        """What this process saw of a request: its first step's end, its tokens' steps."""
        return {
            "first_step_end": self._first_step_end.get(key),
            "token_steps": self._step_token_times.get(key, []),
        }

    def _key(self, request: Request) -> str:
        return f"{self._calls}-{request.request_id}"  # unique across warm-up and timed passes

    def _submit(self, request: Request) -> None:
        """Hand one request to the engine, with its own output length and no EOS."""
        key = self._key(request)
        accepted = self._manager.add_request(
            input_ids=list(request.prompt_token_ids),
            request_id=key,
            max_new_tokens=request.output_tokens,
            record_timestamps=True,
            eos_token_id=NO_EOS,
        )
        if accepted is None:
            raise RuntimeError("transformers' continuous batching manager refused a request (is it stopping?)")
        self._lab_ids[key] = request.request_id
        self._finals[key] = final_tokens(request.prompt_tokens, request.output_tokens)

    def _serve(self, dispatcher: Dispatcher, pending: dict[str, Request]) -> Sequences:
        """Submit each request when it arrives (offline: all at once) and take the finished results, until
        all are in, the engine's thread has stopped or it stalled. Each request's n sequences (n samples:
        the request and transformers' forks of it)."""
        sequences = Sequences(self.spec.engine.n)
        done = 0
        started = time.perf_counter()
        while done < len(pending):
            for request in dispatcher.due():
                self._submit(request)
            to_next = dispatcher.seconds_to_next()
            wait_s = RESULT_POLL_S if to_next is None else min(RESULT_POLL_S, to_next, MAX_SLEEP_S)
            output = self._manager.get_result(timeout=wait_s) if dispatcher.in_flight else None
            if output is None:
                if not dispatcher.in_flight:
                    dispatcher.wait()
                    continue
                stalled = time.perf_counter() - max(self._tap.last_step, started) > STALL_S
                if not self._manager.is_running() or stalled:
                    self._stalled = stalled
                    break
                continue
            if parent_id(output.request_id) in pending and output.is_finished() and sequences.add(output):
                done += 1
                dispatcher.done()
        return sequences

    # -- KV samples --------------------------------------------------------------------------------

    def _on_step(self, before: dict) -> None:
        """After each engine step, in the manager's thread: time the step's tokens, then take a KV sample."""
        now = time.perf_counter()
        for key, (state, generated) in before.items():
            self._first_step_end.setdefault(key, now)
            new = len(state.generated_tokens) - generated
            if new > 0:
                self._step_token_times.setdefault(key, []).extend([now] * new)
        if self._view is not None and self._clock is not None:
            self._sample({key: generated for key, (_, generated) in before.items()}, now)

    def _sample(self, generated_before: dict[str, int], now: float) -> None:
        """One KV sample after an engine step (see kv_samples())."""
        view, scheduler = self._view, self._tap.processor.scheduler
        active = scheduler.active_requests
        per_request = [  # a fork under its request's id
            [self._lab_ids.get(parent_id(key), key), int(state.current_len()), view.blocks_of(key)]
            for key, state in active.items()
        ]
        used = view.num_blocks - view.free_blocks()
        sums = step_sums(
            (
                (tokens, self._finals.get(parent_id(key), tokens), blocks, 0, not active[key].generated_tokens)
                for key, (_, tokens, blocks) in zip(active, per_request)
            ),
            view.block_size,
        )
        self._samples.append(
            KvSample(
                t_s=self._clock.since_start(now),
                step=len(self._samples),
                kv_usage=used / view.num_blocks if view.num_blocks else 0.0,
                blocks_used=used,
                num_blocks=view.num_blocks,
                running=len(active),
                waiting=len(scheduler.waiting_requests) + self._manager.input_queue.qsize(),
                tokens_stored=sum(tokens for _, tokens, _ in per_request),
                tokens_stored_exact=True,
                blocks_free=view.num_blocks - used,
                usable_blocks=view.num_blocks,
                held_blocks=sums.held_blocks,
                token_state_slots=sums.token_state_slots,
                reservation_slots=sums.reservation_slots,
                lookahead_slots=sums.lookahead_slots,
                internal_slots=sums.internal_slots,
                scheduled_prompt_slots=sums.scheduled_prompt_slots,
                per_request=per_request,
                batch_requests=len(generated_before),
                prefill_requests=sum(1 for n in generated_before.values() if n == 0),
                finished=sum(1 for key in generated_before if key not in active),
            )
        )

    def kv_samples(self) -> list[KvSample]:
        """One sample per engine step of the last generate(), read after the step's update.

        The fields of vLLM's samples, from the engine itself rather than rebuilt:
        - `blocks_used`, `blocks_free`, `num_blocks`: the pool's own count (no null block here, so
          `kv_usage` = blocks_used / num_blocks);
        - `running`: requests holding blocks after the step; `waiting`: queued, not yet scheduled;
        - `tokens_stored`: the sum of the running requests' `current_len()` (tokens whose K/V are
          written), exact (`tokens_stored_exact` is always true);
        - `per_request`: `[request_id, tokens_stored, blocks]` of each running request, and their sums
          as `lab.accounting.paged` defines them (`usable_blocks`: the pool, `held_blocks`,
          `token_state_slots`, `reservation_slots`, `internal_slots`; no look-ahead here);
        - `batch_requests`: requests the step ran (those active before it), of which
          `prefill_requests` had no token yet (prompt work) and `finished` left after it.
        """
        return list(self._samples)

    # -- what the engine says about itself ----------------------------------------------------------

    def engine_info(self) -> dict:
        info = dict(self._info)
        info["steps_last_pass"] = self._steps_last_call
        info["step_tap_error"] = self._tap.error if self._tap is not None else None
        return info

    # -- the end -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the manager's thread and free the pool now (not at interpreter exit)."""
        if self._manager is not None:
            # A stalled engine still holds its requests: a hard stop fails them instead of waiting for them.
            self._manager.stop(block=True, timeout=STOP_TIMEOUT_S, hard_stop=self._stalled)
            self._manager.destroy()
        self._manager, self._tap, self._view = None, None, None
        super().close()
        gc.collect()


def _record(request: Request, sequences: list, n: int, clock: Clock, fatal, seen: dict) -> RequestRecord:
    """One request's record from transformers' outputs of its finished sequences (the request itself
    first, then its forks: `hf_continuous_sharing.Sequences`) and what this process saw. Token times
    are the first sequence's (its own per-token stamps); the end, the last token of any sequence."""
    if not sequences:
        error = f"no result: transformers' engine stopped or stalled ({fatal})"
        return RequestRecord(request.request_id, request.prompt_tokens, 0, None, clock.now(),
                             arrival_s=request.arrival_s, status="error", error=error)  # fmt: skip
    first = sequences[0]
    own = len(first.generated_tokens)
    stamped = list(first.timestamps or [])
    recomputed = len(stamped) < own == len(seen["token_steps"])
    if recomputed:  # transformers restarted the timestamps (and its lifespan) when it recomputed the request
        stamped = seen["token_steps"][: own - len(stamped)] + stamped
    times = [clock.since_start(t) for t in stamped]
    ends = [clock.since_start(s.timestamps[-1]) for s in sequences[1:] if s.timestamps]
    generated = sum(len(s.generated_tokens) for s in sequences)
    problems = [s.error for s in sequences if s.error]
    if len(sequences) != n:
        problems.append(f"{len(sequences)} of {n} sequences finished ({fatal})")
    if generated != request.output_tokens * n:
        problems.append(f"generated {generated} tokens, {n} x {request.output_tokens} requested")
    if len(times) != own:
        problems.append(f"{len(times)} token timestamps for {own} tokens")
    scheduled = first.lifespan[0] if first.lifespan and first.lifespan[0] > 0 else None
    if recomputed:
        scheduled = seen["first_step_end"]
    extra = {}
    if recomputed:
        extra["token_times_note"] = (
            f"recomputed after the pool ran out: its first {own - len(first.timestamps or [])} token times "
            "are the ends of the engine steps that made them, scheduled_s the end of the first step that ran it"
        )
    return RequestRecord(
        request_id=request.request_id,
        prompt_tokens=request.prompt_tokens,
        output_tokens=generated,
        first_token_s=times[0] if times else None,
        end_s=max(times[-1:] + ends) if times or ends else clock.now(),
        arrival_s=request.arrival_s,  # submitted at arrival: the scheduler queues them, as vLLM's does
        scheduled_s=None if scheduled is None else clock.since_start(scheduled),
        token_times_s=times,
        status="error" if problems else "ok",
        error="; ".join(problems) or None,
        extra=extra,
    )


BACKEND = HfContinuousBackend
