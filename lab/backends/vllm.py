"""vLLM's engine, stepped exactly as `LLM.generate` does, each request added when it arrives.

`LLM.generate` is `add_request` for each prompt followed by `while has_unfinished_requests(): step()`
(`_run_engine`, in `vllm/entrypoints/offline_utils.py` in 0.26 and `entrypoints/common/offline.py` in
0.32). This backend runs the same loop itself so that, after every step, it can read the runner's
clock (time to first token, end time per request) and the KV pool's usage. The differences from
`LLM.generate`: outputs come back as deltas (`RequestOutputKind.DELTA`) rather than only at the end,
so that first tokens are seen, and there is no progress bar.

Each request is added when it arrives (`Request.arrival_s`, `lab.backends.dispatch`), between steps,
as a server's engine loop adds them; offline every request arrives at t=0 and all are added before
the first step, as `LLM.generate` does. vLLM queues them and its scheduler decides when each starts,
so queueing time is part of every request's TTFT and latency. Beam search (`--beam-width`) runs
`LLM.beam_search`, which submits every request at once itself, so it has no arrivals (a beam-search
point with `--request-rate` is refused, `lab.config`); parallel samples (`--n`) arrive as any request.

Timing. The engine core runs in a child process (v1 default) and steps on its own; each `step()`
here takes one step's outputs from its queue. Every token's time (`token_times_s`) is when this
process saw it in a step's DELTA output, which is what a caller of `LLM.generate` sees. Outputs are
host-side token ids when `step()` returns, so the clock needs no device sync. With async scheduling
(vLLM 0.26's default on GPU; off on the CPU) the engine schedules step n+1 before step n's output is
out, so a token reaches this process about one step after it was computed.

First scheduled (`scheduled_s`): the engine core's own timestamp of the request's first SCHEDULED
event (`RequestOutput.metrics`, a `RequestStateStats`: `scheduled_ts`, vLLM 0.26 and 0.32), a
`time.monotonic()` reading in the engine-core process, put on the runner's clock with
`Clock.since_monotonic` (one monotonic clock for the whole machine). vLLM records it only with its
stats on (`disable_log_stats=False`, this backend's default); with `--no-kv-samples` it is unknown.

Compilation. vLLM compiles the model (torch.compile, then CUDA graphs) while the engine starts, in
its worker process; `compile_snapshot` reads torch.compile's counters there through an extension
of the worker (`lab.backends.vllm_worker`), so the runner sees whether a timed pass compiled.

KV usage. Each step's message from the engine core carries the scheduler's own `SchedulerStats`
(`kv_cache_usage`, `num_running_reqs`, `num_waiting_reqs`; sent when `disable_log_stats=False`).
These are the figures behind the Prometheus gauge `vllm:kv_cache_usage_perc`, and `LLM.get_metrics()`
serves them back only after walking the whole metrics registry. We take them from the message as it
passes (`_SchedulerStatsTap`): no extra call into the engine, one attribute read per step. See
`kv_samples()` for what one sample holds.

Environment: on CPU the KV pool must be sized (vLLM's CPU default asks for 92 % of RAM and refuses to
start): `kv_cache_memory_bytes` (honoured by the CPU worker) or the legacy `VLLM_CPU_KVCACHE_SPACE`
(GiB; when set, vLLM's CPU platform lets it override `kv_cache_memory_bytes`). The one environment
variable this backend sets: on the CPU with tensor parallelism, `VLLM_CPU_OMP_THREADS_BIND` where unset
(`lab.hardware.gpus.cpu_rank_binding`), recorded in `engine_info`.
"""

from __future__ import annotations

import gc
import os

import vllm

from lab.backends import vllm_sharing as sharing
from lab.backends.base import Backend, Clock
from lab.backends.dispatch import Dispatcher
from lab.backends.vllm_config import check_cpu_block_size, describe_engine
from lab.backends.vllm_kv_samples import StepRow, engine_core_pass, engine_core_totals, kv_sample, step_row
from lab.backends.vllm_progress import InFlight, Progress
from lab.backends.vllm_step_facts import SCHEDULER_CLS, VERIFIED_VLLM, take_step_facts
from lab.backends.vllm_worker import QUALNAME as WORKER_EXTENSION
from lab.config import DEFAULT_CPU_KV_CACHE_BYTES, DEFAULT_GPU_MEMORY_UTILIZATION
from lab.hardware.gpus import cpu_rank_binding
from lab.models.resolve import has_tokenizer, has_weights
from lab.records import KvSample, RequestRecord
from lab.workloads import Request

WARMUP_REQUESTS = 8  # the "first-batch" warm-up: prefill and decode once; CUDA graphs are captured at load


class _SchedulerStatsTap:
    """Keeps the `SchedulerStats` (and the lab's step facts) of the engine-core message that the last
    `step()` consumed.

    `LLMEngine.step()` calls `engine_core.get_output()` once and gets one `EngineCoreOutputs`: one
    engine step's outputs plus, with stats on, that step's `scheduler_stats`. Shadowing `get_output`
    on this one client instance lets us read them; the step facts the lab's scheduler class added
    (`lab.backends.vllm_step_facts`) are taken out before vLLM's own loggers see the stats. Same names
    in vLLM 0.26 and 0.32 (`EngineCoreClient.get_output`, `EngineCoreOutputs.scheduler_stats`).
    """

    def __init__(self, engine_core) -> None:
        self._get_output = engine_core.get_output
        self.stats = None
        self.facts: dict | None = None
        self.log: sharing.StepLog | None = None  # set while LLM.beam_search steps the engine itself
        engine_core.get_output = self._get_output_and_keep_stats

    def _get_output_and_keep_stats(self, *args, **kwargs):
        outputs = self._get_output(*args, **kwargs)
        self.stats = getattr(outputs, "scheduler_stats", None)
        self.facts = take_step_facts(self.stats) if self.stats is not None else None
        if self.log is not None and self.stats is not None:
            self.log.add(self.stats, self.facts)
        return outputs

    def take(self):
        stats, facts, self.stats, self.facts = self.stats, self.facts, None, None
        return stats, facts


class VllmBackend(Backend):
    """vLLM's offline engine (`vllm.LLM`), driven step by step."""

    def __init__(self, spec, model_path: str, device: str, dtype: str) -> None:
        super().__init__(spec, model_path, device, dtype)
        self._llm = None
        self._tap: _SchedulerStatsTap | None = None
        self._info: dict = {}
        self._rows: list[StepRow] = []  # the last generate()'s steps; its KV samples are built from them
        self._samples: list[KvSample] | None = None
        self._core_totals: dict | None = None  # the engine core's running totals after the previous call
        self._core_pass: dict | None = None
        self._num_blocks = 0
        self._generate_calls = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def load(self) -> None:
        if self.device == "cpu":
            check_cpu_block_size(self.spec.engine.block_size)
            if self.spec.engine.tensor_parallel_size > 1 and not os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
                # The engine core and its workers inherit it; vllm-cpu's default needs a NUMA node per worker.
                binding = cpu_rank_binding(self.spec.engine.tensor_parallel_size, sorted(os.sched_getaffinity(0)))
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = binding
        kwargs = self.engine_kwargs()
        self._llm = vllm.LLM(**kwargs)
        engine = self._llm.llm_engine
        self._tap = _SchedulerStatsTap(engine.engine_core) if self.spec.engine.sample_kv_every_step else None
        self._num_blocks = int(engine.vllm_config.cache_config.num_gpu_blocks or 0)
        self._info = describe_engine(self._llm.llm_engine.vllm_config, self._num_blocks, self.device, kwargs)
        self._info["step_facts"] = "scheduler_cls" in kwargs
        self._info["per_request_seed"] = self.per_request_seed if self.spec.engine.n > 1 else None
        self._info["step_facts_verified"] = vllm.__version__ in VERIFIED_VLLM

    @property
    def llm(self):
        """The `vllm.LLM` once loaded (else None), for tools beside this loop (scripts/gpu/vllm_bench_gap.py)."""
        return self._llm

    @property
    def per_request_seed(self) -> bool:
        """Whether n > 1 samples get a seed of their own (`vllm_sharing.sampling_params`): not on the CPU."""
        return self.device != "cpu"

    def engine_kwargs(self) -> dict:
        """The `vllm.LLM` arguments this run uses (also written into engine_info)."""
        e = self.spec.engine
        kwargs: dict = {
            "model": self.model_path,
            "dtype": self.dtype,
            "seed": e.seed,
            "enable_prefix_caching": sharing.prefix_caching(e, self.spec.mode),
            "block_size": e.block_size,
            # The scheduler's stats are what KV samples are made of; without samples, off as in `vllm bench`.
            "disable_log_stats": not e.sample_kv_every_step,
            "worker_extension_cls": WORKER_EXTENSION,  # compile_snapshot() reads the worker's counters
        }
        if e.sample_kv_every_step:  # vLLM's own scheduler, plus the step facts the breakdown needs
            kwargs["scheduler_cls"] = SCHEDULER_CLS
        if e.max_num_seqs is not None:
            kwargs["max_num_seqs"] = e.max_num_seqs
        if e.max_model_len is not None:
            kwargs["max_model_len"] = e.max_model_len
        if e.tensor_parallel_size > 1:  # one worker process per GPU, children of the engine core
            kwargs["tensor_parallel_size"] = e.tensor_parallel_size
        if not has_weights(self.model_path):
            kwargs["load_format"] = "dummy"  # random weights from the config: same shapes, same work
        if not has_tokenizer(self.model_path):
            kwargs["skip_tokenizer_init"] = True  # prompts are token ids and outputs are never detokenized
        if e.kv_cache_memory_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = e.kv_cache_memory_bytes
        elif e.gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = e.gpu_memory_utilization  # on CPU: a fraction of RAM
        elif self.device == "cpu":
            if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                kwargs["kv_cache_memory_bytes"] = DEFAULT_CPU_KV_CACHE_BYTES
        else:
            kwargs["gpu_memory_utilization"] = DEFAULT_GPU_MEMORY_UTILIZATION
        return kwargs

    def close(self) -> None:
        """Stop the engine-core process now rather than at interpreter exit."""
        if self._llm is None:
            return
        engine_core = getattr(self._llm.llm_engine, "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()  # EngineCoreClient.shutdown(): 0.26 and 0.32
        self._llm = None
        self._tap = None
        gc.collect()

    # -- the timed work ----------------------------------------------------------------------------

    def warmup_plan(self, requests: list[Request]) -> list[list[Request]]:
        """The whole workload once: vLLM's scheduler, not the lab, decides which batch shapes each step
        runs, so only the same requests in the same order run the same shapes."""
        return [requests]

    def warmup_requests(self, requests: list[Request]) -> list[Request]:
        return requests[: min(len(requests), WARMUP_REQUESTS)]

    def generate(self, requests: list[Request], clock: Clock) -> list[RequestRecord]:
        if self._llm is None:
            raise RuntimeError("VllmBackend.generate() called before load()")
        engine = self._llm.llm_engine
        if engine.has_unfinished_requests():
            raise RuntimeError("the vLLM engine still holds requests from an earlier call")
        self._rows, self._samples = [], None  # warm-up samples never mix with the timed pass's
        self._generate_calls += 1
        sample_kv = self.spec.engine.sample_kv_every_step
        if self._info.get("enable_prefix_caching"):
            self._info["prefix_cache_reset"] = sharing.reset_prefix_cache(self._llm)  # no hits from earlier passes
        if self.spec.engine.beam_width > 1:
            return self._generate_beams(requests, clock)

        progress: dict[str, Progress] = {}
        prompts = [{"prompt_token_ids": list(r.prompt_token_ids)} for r in requests]
        rendered = dict(zip((r.request_id for r in requests), self._render(prompts)))
        # Arrivals (lab.backends.dispatch): offline, every request is due before the first step.
        dispatcher = Dispatcher(requests, clock, self.spec.engine.online.max_concurrency)
        if self._tap is not None:
            self._tap.take()  # stale stats from before this call
        in_flight = InFlight()
        step = 0
        while dispatcher.pending or engine.has_unfinished_requests():
            for request in dispatcher.due():
                # vLLM appends a random suffix internally; outputs carry the id we give.
                key = f"{self._generate_calls}-{request.request_id}"
                params = sharing.sampling_params(
                    self.spec.engine, request.request_id, request.output_tokens, self.per_request_seed
                )
                engine.add_request(key, rendered[request.request_id], params)
                progress[key] = Progress(request)
            if not engine.has_unfinished_requests():
                dispatcher.wait()  # idle until the next arrival, as a server's engine loop is
                continue
            outputs = engine.step()
            now = clock.now()
            for output in outputs:
                # n > 1: one output per child sequence; token times follow sequence 0
                new_tokens = sum(len(o.token_ids) for o in output.outputs)
                timed = sum(len(o.token_ids) for o in output.outputs if o.index == 0)
                seen = progress[output.request_id]
                seen.stats = getattr(output, "metrics", None) or seen.stats
                in_flight.update(seen, new_tokens, output.finished, now, timed)
                if output.finished:  # n > 1: once, when the last of its samples finishes
                    dispatcher.done()
            stats, facts = self._tap.take() if self._tap is not None else (None, None)
            if sample_kv and stats is not None:  # the sample itself is built after the pass (vllm_kv_samples)
                self._rows.append(step_row(step, now, stats, facts, in_flight))
            step += 1
        self._end_of_call()
        records = [self._record(p, clock) for p in progress.values()]
        for record in records:
            dispatcher.stamp(record)
        return records

    def _render(self, prompts: list[dict]) -> list:
        """Token prompts -> the engine's input objects, as `LLM.generate` renders them (`LLM._preprocess_cmpl`,
        same signature in 0.26 and 0.32; without it raw prompts still work, with a deprecation warning)."""
        render = getattr(self._llm, "_preprocess_cmpl", None)
        return list(render(prompts)) if render is not None else prompts

    def _generate_beams(self, requests: list[Request], clock: Clock) -> list[RequestRecord]:
        """`LLM.beam_search`, one call per output length (its params carry one max_tokens), every
        engine step it runs logged through the tap. Its steps are invisible from here: each request
        ends when its call returns, and no per-token times exist."""
        log = sharing.StepLog()
        if self._tap is not None:
            self._tap.take()
            self._tap.log = log
        records = []
        try:
            for length in dict.fromkeys(r.output_tokens for r in requests):
                group = [r for r in requests if r.output_tokens == length]
                prompts = [{"prompt_token_ids": list(r.prompt_token_ids)} for r in group]
                outputs = self._llm.beam_search(prompts, sharing.beam_params(self.spec.engine, length))
                end_s = clock.now()
                for request, output in zip(group, outputs):
                    seen = Progress(request, end_s=end_s)
                    seen.generated = sum(len(seq.tokens) - request.prompt_tokens for seq in output.sequences)
                    records.append(self._record(seen, clock))
        finally:
            if self._tap is not None:
                self._tap.log = None
        if self.spec.engine.sample_kv_every_step:
            steps = enumerate(log.steps)
            self._rows = [step_row(step, clock.since_start(t), stats, facts, None) for step, (t, stats, facts) in steps]
        self._end_of_call()
        return sorted(records, key=lambda r: r.request_id)

    def _record(self, seen: Progress, clock: Clock) -> RequestRecord:
        request = seen.request
        expected = request.output_tokens * self.spec.engine.sequences  # n samples (or beams) of L tokens
        ok = seen.end_s is not None and seen.generated == expected
        error = None
        if not ok:
            error = f"generated {seen.generated} tokens, {expected} requested"
            if seen.end_s is None:
                error += "; never finished"
        scheduled_ts = getattr(seen.stats, "scheduled_ts", 0.0) or 0.0  # 0.0: vLLM did not record it
        return RequestRecord(
            request_id=request.request_id,
            prompt_tokens=request.prompt_tokens,
            output_tokens=seen.generated,
            first_token_s=seen.first_token_s,
            end_s=seen.end_s if seen.end_s is not None else clock.now(),
            arrival_s=request.arrival_s,  # submitted at arrival (Dispatcher): vLLM queues internally
            scheduled_s=clock.since_monotonic(scheduled_ts) if scheduled_ts > 0 else None,
            token_times_s=list(seen.token_times_s),
            status="ok" if ok else "error",
            error=error,
        )

    def compile_snapshot(self) -> dict | None:
        """torch.compile's counters summed over vLLM's workers (`lab.backends.vllm_worker`); None, with
        the reason in engine_info, where they cannot be read (the measurement goes on without them)."""
        if self._llm is None:
            return None
        try:
            snapshots = self._llm.collective_rpc("lab_compile_snapshot")
        except Exception as exc:  # noqa: BLE001 - counting compilations must never stop the run
            self._info["compile_counters_unreadable"] = f"{type(exc).__name__}: {exc}"
            return None
        return {
            "frames": sum(s["frames"] for s in snapshots),
            "graphs": sum(s["graphs"] for s in snapshots),
            "recompiles": {f"{i}:{k}": v for i, s in enumerate(snapshots) for k, v in s["recompiles"].items()},
            "source": snapshots[0]["source"] if snapshots else None,
        }

    # -- KV samples ----------------------------------------------------------------------------

    def kv_samples(self) -> list[KvSample]:
        """One sample per engine step of the last generate(), after that step's outputs.

        - `kv_usage`: the scheduler's `kv_cache_usage` (0-1), the value of `vllm:kv_cache_usage_perc`:
          used blocks / (num_blocks - 1), block 0 being the reserved null block.
        - `blocks_used`: `kv_usage * (num_blocks - 1)`, rounded (`kv.blocks_used_from_usage`; exact,
          usage being that ratio).
        - `num_blocks`: the pool as the engine reports it, null block included.
        - `running`, `waiting`: the scheduler's queues after the step.
        - `tokens_stored`: tokens whose K/V sit in the pool, summed over the requests this process
          has seen start and not finish: `kv.stored_tokens` = prompt + generated - 1 each (the
          newest token's K/V is written by the next step).
        - `tokens_stored_exact`: whether that count of in-flight requests equals the scheduler's
          `running`. Two things are invisible from this process: a request part-way through a
          chunked prefill (running, holds blocks, no token yet: `tokens_stored` is then a lower
          bound) and a preempted request (its blocks freed, back in `waiting`, still looks in
          flight here: `tokens_stored` would overcount, so it is None whenever more requests look
          in flight than are running). Waste accounting should use exact samples only; with a pool
          that fits the workload (no preemption) every decode step is exact.

        With async scheduling (vLLM 0.26's default on GPU; off on CPU) the scheduler has already
        placed the next step when it reports, so `blocks_used` also covers each running request's
        next token: at most one block per request more than `tokens_stored` needs.

        The scheduler's own facts (`lab.backends.vllm_step_facts`), summed as `lab.accounting.paged`
        defines them: `usable_blocks` (num_blocks - 1), `blocks_free`, `held_blocks` (the running
        requests' tables), `token_state_slots` (scheduled prompts included), `reservation_slots`
        (of which `lookahead_slots`), `internal_slots`, `scheduled_prompt_slots`.
        """
        if self._samples is None:
            self._samples = [kv_sample(row, self._num_blocks, self._info["block_size"]) for row in self._rows]
        return list(self._samples)

    def _end_of_call(self) -> None:
        """The engine core's collections and step-facts time during the call just ended (`engine_gc`)."""
        totals = engine_core_totals(self._rows)
        self._core_pass = engine_core_pass(self._core_totals, totals)
        self._core_totals = totals or self._core_totals

    def engine_gc(self) -> dict | None:
        """The engine core's garbage collections (and seconds building step facts) during the last
        generate(), from the totals it sends with its step facts; None with KV samples off."""
        return self._core_pass

    # -- what the engine says about itself ----------------------------------------------------------

    def engine_info(self) -> dict:
        return dict(self._info)


BACKEND = VllmBackend
