"""Typed records: what one part of the lab hands to another, and what the run folder's files hold.

Each record turns into the dict its file stores (`to_dict`) and back (`from_dict`). `from_dict`
reads runs written by older versions of the lab: a field they did not record takes its default,
and a key the record does not know is ignored. docs/results.md defines every field and unit.

- `RequestRecord`: one request of a timed pass (records.jsonl).
- `KvSample`: the KV pool after one engine step of vLLM or hf/continuous (kv.jsonl).
- `HfBatch`: what one transformers `generate()` call held (result.json `engine.batches`).
- `BackendResult`: one backend/mode's process (runs/<name>/result.json).
- `RunSummary`: one backend/mode's aggregates (summary.json `runs`).
- `BreakdownEntry`: where one backend/mode's KV memory went (kv_breakdown.json `runs`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from lab.config import run_label, run_name

T = TypeVar("T")


def _known(cls: type[T], data: dict) -> T:
    """`cls` from the keys of `data` that are its fields (older runs lack some, newer ones add some)."""
    names = {f.name for f in fields(cls)}
    return cls(**{key: value for key, value in data.items() if key in names})


def _microseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


@dataclass
class RequestRecord:
    """What one request did in one timed pass, in seconds on the runner's clock (0 = the pass's start).

    Every latency counts from the request's arrival, the moment it was available to the backend (0 in
    the offline scenario, where every request is there when the pass starts). Its life, in order:
    arrival_s <= scheduled_s <= first_token_s = token_times_s[0] <= ... <= token_times_s[-1] = end_s.
    """

    request_id: int
    prompt_tokens: int
    output_tokens: int  # tokens generated for this request (equals the requested count when ok)
    first_token_s: float | None  # when its first output token existed; None where unknown
    end_s: float  # when its last output token existed
    arrival_s: float = 0.0  # when it was available to the backend (offline: 0)
    scheduled_s: float | None = None  # when the backend first began work on it (hf: its batch's start); None: unknown
    token_times_s: list[float] | None = None  # when each output token existed; None where not recorded
    batch: int | None = None  # hf batch index; None for vLLM
    pass_index: int | None = None  # which timed pass (0-based); None in runs that kept only their last pass
    pass_invalid: str | None = None  # why its pass does not count (e.g. it compiled); None: valid or not checked
    request_rate: float | None = None  # the pass's offered rate, requests/s (online serving); None: offline (inf)
    submitted_s: float | None = None  # when the lab handed it to the engine (hf: its batch's generate() began)
    submit_lag_s: float | None = None  # submitted_s - when the lab's dispatcher was due to hand it over (its own delay)
    status: str = "ok"
    error: str | None = None
    extra: dict = field(default_factory=dict)
    backend: str | None = None  # set by the runner for the run folder
    mode: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def ttft_s(self) -> float | None:
        """Time to first token: first_token_s - arrival_s."""
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float:
        """End-to-end latency: end_s - arrival_s."""
        return self.end_s - self.arrival_s

    @property
    def queue_s(self) -> float | None:
        """Queueing time: scheduled_s - arrival_s (None where the first scheduling is unknown)."""
        return None if self.scheduled_s is None else self.scheduled_s - self.arrival_s

    @property
    def service_s(self) -> float | None:
        """Service time: end_s - scheduled_s, from first scheduled to last token (e2e = queue + service)."""
        return None if self.scheduled_s is None else self.end_s - self.scheduled_s

    @property
    def itl_s(self) -> list[float]:
        """Inter-token latencies: the gaps between consecutive output tokens (output_tokens - 1 of them)."""
        times = self.token_times_s or []
        return [later - earlier for earlier, later in zip(times, times[1:])]

    def to_dict(self) -> dict:
        """Every time to the microsecond (plenty, and the files stay small), the same rounding for the
        times and the token times, so first_token_s == token_times_s[0] holds in the file too."""
        stored = replace(
            self,
            first_token_s=_microseconds(self.first_token_s),
            end_s=_microseconds(self.end_s),
            arrival_s=_microseconds(self.arrival_s),
            scheduled_s=_microseconds(self.scheduled_s),
            submitted_s=_microseconds(self.submitted_s),
            submit_lag_s=_microseconds(self.submit_lag_s),
            token_times_s=None if self.token_times_s is None else [_microseconds(t) for t in self.token_times_s],
        )
        data = asdict(stored)
        backend, mode = data.pop("backend"), data.pop("mode")
        data.update(ttft_s=stored.ttft_s, e2e_s=stored.e2e_s, queue_s=stored.queue_s, service_s=stored.service_s)
        if backend is not None:
            data.update(backend=backend, mode=mode)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RequestRecord:
        """The record; ttft_s, e2e_s, queue_s and service_s are derived, not read.

        Runs written before the arrival clock recorded `start_s`: hf's batch start (its first scheduling)
        or vLLM's and hf/continuous's 0 (submission; hf/continuous kept its scheduling and token times in
        `extra`). Every request of those runs arrived at 0.
        """
        if "start_s" in data and "arrival_s" not in data:
            extra = data.get("extra") or {}  # hf/continuous kept its token times and scheduling there
            scheduled = data["start_s"] if data.get("batch") is not None else extra.get("scheduled_s")
            data = dict(data, arrival_s=0.0, scheduled_s=scheduled, token_times_s=extra.get("token_times_s"))
        return _known(cls, data)


KV_SAMPLE_ALWAYS = (
    "t_s",
    "step",
    "kv_usage",
    "blocks_used",
    "num_blocks",
    "running",
    "waiting",
    "tokens_stored",
    "tokens_stored_exact",
)


@dataclass
class KvSample:
    """The KV pool after one engine step. `kv_samples()` of `lab.backends.vllm.VllmBackend` and of
    `lab.backends.hf_continuous.HfContinuousBackend` define each field."""

    t_s: float  # runner clock
    step: int
    kv_usage: float | None = None  # fraction of the pool in use (vLLM: the null block excluded)
    blocks_used: int | None = None
    num_blocks: int | None = None  # vLLM: null block included
    running: int | None = None
    waiting: int | None = None
    tokens_stored: int | None = None  # None where preempted requests make the count unknown
    tokens_stored_exact: bool | None = None  # None: not recorded (older runs)
    run: str | None = None  # the backend/mode's name, in the run folder's merged kv.jsonl and kv_passes.jsonl
    pass_index: int | None = None  # the timed pass it was taken in; None: older runs, which kept only their last pass's
    request_rate: float | None = None  # that pass's offered rate, requests/s; None: offline (inf), or an older run
    blocks_free: int | None = None
    # The engine's own per-step facts, summed over the running requests (lab.accounting.paged); None
    # where the run has none (older runs, vLLM with --no-kv-samples).
    usable_blocks: int | None = None  # D, the pool's blocks any request can use (vLLM: num_blocks - 1)
    held_blocks: int | None = None  # blocks in the running requests' tables
    token_state_slots: int | None = None  # tokens stored, scheduled prompts included
    reservation_slots: int | None = None  # empty slots of their blocks their own tokens will fill
    lookahead_slots: int | None = None  # of which allocated one step ahead (async scheduling)
    internal_slots: int | None = None  # slots of their blocks beyond their final length
    scheduled_prompt_slots: int | None = None  # of the token states: prompts whose first token is not out yet
    # vLLM's prefix cache in this step (SchedulerStats.prefix_cache_stats): prompt tokens looked up and found
    prefix_queries: int | None = None
    prefix_hits: int | None = None
    # hf/continuous only
    per_request: list[list[int]] | None = None  # [request_id, tokens stored, blocks held] of each running request
    batch_requests: int | None = None  # requests the step ran
    prefill_requests: int | None = None  # of which had no output token yet (prompt work)
    finished: int | None = None  # of which left after it

    @property
    def has_step_facts(self) -> bool:
        """Whether the sample carries the engine's own per-step sums (what an exact breakdown needs)."""
        return self.held_blocks is not None and self.token_state_slots is not None

    def to_dict(self) -> dict:
        """The fields that were recorded (`run` only in the merged file)."""
        return {key: value for key, value in asdict(self).items() if value is not None or key in KV_SAMPLE_ALWAYS}

    @classmethod
    def from_dict(cls, data: dict) -> KvSample:
        return _known(cls, data)


@dataclass
class HfBatch:
    """What one transformers `generate()` call held: its shapes, its cache tensors and, on CUDA, the allocator."""

    batch_size: int  # the batch's requests (not counting `padded_rows`)
    padded_prompt_tokens: int  # W: the longest prompt of the batch, every prompt left-padded to it
    batch: int = 0
    generated_tokens: int = 0  # N: steps the call ran (its longest output)
    prompt_tokens: list[int] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    start_s: float = 0.0
    end_s: float = 0.0
    cache_class: str | None = None
    cache_bytes: int | None = None  # the key/value tensors' own bytes at the end of the call, over every GPU
    cache_bytes_per_gpu: int | None = None  # on one GPU: cache_bytes / tensor_parallel_size
    cache_slots_per_sequence: int | None = None
    peak_allocated_bytes: int | None = None  # CUDA only
    peak_reserved_bytes: int | None = None  # CUDA only
    step_s: list[float] | None = None  # the runner clock at each decoding step; None in older runs
    padded_rows: int = 0  # rows added to fill a static batch to the first batch's size (copies of its last request)
    # Rows of the cache per request: --n samples or --beam-width beams (transformers expands the cache per
    # sequence); runs older than this field read their engine's setting (lab.report.run_view)
    sequences_per_request: int = 1

    @property
    def rows(self) -> int:
        """The cache tensors' rows: (requests + padded_rows) x sequences_per_request."""
        return (self.batch_size + self.padded_rows) * self.sequences_per_request

    def sequence_lengths(self) -> tuple[list[int], list[int]]:
        """(prompt tokens, output tokens) of every sequence of the batch's requests: each request's own row
        `sequences_per_request` times (every sample or beam holds its own copy of the prompt)."""
        times = self.sequences_per_request
        return [p for p in self.prompt_tokens for _ in range(times)], [
            o for o in self.output_tokens for _ in range(times)
        ]

    def to_dict(self) -> dict:
        """Fields that were measured; those a device or cache type does not give are left out."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, data: dict) -> HfBatch:
        return _known(cls, data)


@dataclass
class _BackendMode:
    """What names one backend/mode's outcome: the pair, and whether it succeeded."""

    backend: str
    mode: str
    status: str = "error"  # "ok", or "error" with the message
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def label(self) -> str:
        """'hf/batched' (`config.run_label`)."""
        return run_label(self.backend, self.mode)

    @property
    def name(self) -> str:
        """'hf-batched' (`config.run_name`)."""
        return run_name(self.backend, self.mode)


@dataclass
class BackendResult(_BackendMode):
    """One backend/mode's process: status, timings, and what the engine and the allocator reported."""

    environment: dict | None = None  # lab.hardware.env.collect_environment() inside the process
    device: str | None = None
    dtype: str | None = None
    model_path: str | None = None
    model: dict | None = None  # lab.models.resolve.model_info()
    workload: dict | None = None  # name, requests, prompt_tokens, output_tokens
    load_s: float | None = None
    warmup: dict | None = None  # {"requests", "s"}
    generate_s: float | None = None  # the last timed pass
    passes_s: list[float] | None = None  # every timed pass (--repeats), in order
    passes: list[dict] | None = (
        None  # every timed pass as a lab.pass_records.TimedPass (seconds, compilations, validity)
    )
    compile: dict | None = None  # CompileCount of the load and of the warm-up ({"load": ..., "warmup": ...})
    skipped_rates: list | None = None  # online serving, --stop-at-saturation: the offered rates not run
    cut: dict | None = None  # online serving cut part-way: lab.cut.Cut, its finished rates kept (lab.rates_kept)
    clock_wall_t0: float | None = None  # epoch seconds of the last pass's t=0
    memory: dict | None = None  # the backend's memory_stats() (torch allocator on CUDA)
    engine: dict | None = None  # the backend's engine_info()
    phases: list[dict] = field(
        default_factory=list
    )  # {"phase", "start", "end"}, epoch seconds (+ energy: phases.Phases)
    energy_meter: dict | None = None  # lab.hardware.energy: the counter and GPUs read, or {"source": None, "reason"}
    traceback: str | None = None
    close_error: str | None = None  # the engine's close failed, or hung past its limit (lab.teardown)
    process_s: float | None = None  # set by the experiment: the process's wall time
    exit_code: int | None = None  # set by the experiment
    exit_signal: str | None = None  # set by the experiment: the signal that ended the process ("SIGKILL")
    timeout_s: float | None = None  # set by the experiment: the limit the process ran under (--timeout)
    leftover_pids: list[int] | None = None  # set by the experiment: processes it left running, killed
    exit_stuck_s: float | None = None  # set by the experiment: still running this long after its result; stopped

    @property
    def hf_batches(self) -> list[HfBatch]:
        return [HfBatch.from_dict(b) for b in (self.engine or {}).get("batches") or []]

    @property
    def kv_bytes_per_token(self) -> int | None:
        return (self.model or {}).get("kv_bytes_per_token")

    def phase(self, name: str) -> tuple[float, float] | None:
        """(start, end) epoch seconds of the first finished phase called `name`, or None."""
        for phase in self.phases:
            if phase["phase"] == name and phase.get("end"):
                return phase["start"], phase["end"]
        return None

    def to_dict(self) -> dict:
        """Every field that is set; backend, mode, status and error always."""
        always = ("backend", "mode", "status", "error")
        return {key: value for key, value in asdict(self).items() if value is not None or key in always}

    @classmethod
    def from_dict(cls, data: dict) -> BackendResult:
        return _known(cls, data)


@dataclass
class RunSummary(_BackendMode):
    """A backend/mode's entry of summary.json: its result, records' metrics, memory peaks (experiments.merge)."""

    device: str | None = None
    dtype: str | None = None
    model: dict | None = None
    workload: dict | None = None
    load_s: float | None = None
    warmup: dict | None = None
    generate_s: float | None = None
    passes_s: list[float] | None = None  # every timed pass (--repeats)
    passes: list[dict] | None = None  # every timed pass as a TimedPass (older runs: None)
    compile: dict | None = None  # the result's CompileCount of the load and the warm-up
    metrics: dict | None = None  # lab.metrics.run_metrics(): the median over the valid passes
    pass_metrics: list[dict] | None = None  # lab.metrics.summarize_records() of each pass (older runs: None)
    memory: dict = field(default_factory=dict)  # whole_process, generate_phase, allocator, gpus_used, per_gpu
    engine: dict = field(default_factory=dict)  # engine_info() less hf's per-batch detail
    collector: dict | None = None  # how the timeline was taken
    energy: dict | None = None  # lab.accounting.energy.energy_summary; None in older runs
    host_cpu: dict | None = None  # lab.accounting.host_load.host_load_summary; None in older runs
    sweep: list[dict] | None = None  # online serving: lab.online_metrics.rate_metrics of each offered rate
    sweep_memory: list[dict] | None = None  # online serving: lab.accounting.pass_memory.rate_memory of each rate
    skipped_rates: list | None = None  # --stop-at-saturation: the offered rates not run
    concurrency_limit: dict | None = None  # lab.online_judged.concurrency_limit: {requests, source}; None: older
    cut: dict | None = None  # the result's `cut`: the offered rates not run, and why
    process_end: dict | None = None  # the result's close_error, exit_stuck_s, leftover_pids where any is set

    def metric(self, key: str) -> Any:
        """One of `metrics` (None where the run has none)."""
        return (self.metrics or {}).get(key)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunSummary:
        return _known(cls, data)


@dataclass
class BreakdownEntry:
    """Where one backend/mode's KV memory went, time-averaged (lab.accounting.breakdown defines it).

    Two views of the same slot-seconds: `budget_shares` over D, the memory the approach set aside for
    KV (`budget` says which), and `shares` over the memory held (D less a paged pool's free blocks).
    """

    run: str  # label, 'hf/batched'
    backend: str
    mode: str
    approach: str
    shares: dict[str, float | None]  # of the memory held: the five categories of lab.accounting.kv, summing to 1
    internal_detail_shares: dict[str, float]  # padding, finished, unused_tail, block_tail (of the memory held)
    external_fragmentation_measured: bool
    external_note: str | None
    slot_seconds: dict[str, float | None]
    duration_s: float
    mean_slots_held: float | None
    mean_kv_bytes_held: float | None
    kv_bytes_per_token: int | None
    pool_occupancy_mean: float | None  # paged pools: the share of the pool in use, time-averaged
    weighting: str
    checks: dict  # measurement against arithmetic; `residual` the residual against its 1% limit
    budget_shares: dict[str, float | None] | None = None  # of D, free blocks under external fragmentation
    budget: str | None = None  # which memory D is
    mean_budget_slots: float | None = None
    free_slot_seconds: float = 0.0
    method: str | None = None  # where the per-step figures come from
    saturation: dict | None = None  # paged pools: peak and mean occupancy, whether the workload filled D
    allocator_slack_bytes: int | None = None  # torch allocator, peak reserved - peak allocated: not KV (CUDA)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BreakdownEntry:
        return _known(cls, data)
