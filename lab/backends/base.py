"""The interface every backend implements, and the clock the runner lends them.

The runner, not the backend, owns fairness: it builds the clock, runs the warm-up, decides what is
timed and writes the records. A backend only loads its engine and generates exactly
`request.output_tokens` tokens for each request, reporting per-request times on the runner's clock:
when each request arrived (`Request.arrival_s`), was first scheduled, and when each of its tokens
existed. It also says which calls warm every shape its timed pass will use (`warmup_plan`) and how
much torch.compile has compiled in its process so far (`compile_snapshot`), so that the runner can
keep compilation out of the timed passes and mark a pass that compiled.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from lab.config import RunSpec
from lab.records import KvSample, RequestRecord
from lab.workloads import Request


class Clock:
    """Seconds since `start()`, read after the device has finished its queued work.

    One clock for every backend: `time.perf_counter`, with `sync` (e.g. torch.cuda.synchronize)
    called before each reading so that asynchronous GPU work is not missed.
    """

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self._sync = sync or (lambda: None)
        self._t0 = time.perf_counter()
        self._monotonic_t0 = time.monotonic()
        self.wall_t0 = time.time()  # epoch seconds at start(), to line up with the collector

    def start(self) -> None:
        self._sync()
        self._t0 = time.perf_counter()
        self._monotonic_t0 = time.monotonic()
        self.wall_t0 = time.time()

    def now(self) -> float:
        self._sync()
        return time.perf_counter() - self._t0

    def since_start(self, perf_counter_s: float) -> float:
        """A `time.perf_counter()` reading taken elsewhere in this process (an engine's thread), no sync."""
        return perf_counter_s - self._t0

    def since_monotonic(self, monotonic_s: float) -> float:
        """A `time.monotonic()` reading, possibly from another process of this machine (vLLM's engine
        core stamps its events so): CLOCK_MONOTONIC is one clock for the whole machine on Linux."""
        return monotonic_s - self._monotonic_t0


class Backend(ABC):
    """One engine in one process. Lifecycle: load() -> generate()* -> close()."""

    def __init__(self, spec: RunSpec, model_path: str, device: str, dtype: str) -> None:
        self.spec = spec
        self.model_path = model_path
        self.device = device  # "cuda" or "cpu", already resolved
        self.dtype = dtype  # "float32", "bfloat16" or "float16", already resolved

    @abstractmethod
    def load(self) -> None:
        """Load the model and build the engine."""

    @abstractmethod
    def generate(self, requests: list[Request], clock: Clock) -> list[RequestRecord]:
        """Generate exactly `r.output_tokens` tokens for each request (EOS ignored)."""

    def device_sync(self) -> Callable[[], None] | None:
        """What the clock calls before each reading; None where the work is synchronous."""
        return None

    def prepare(self, requests: list[Request]) -> None:  # noqa: B027 - optional: most engines fix nothing up front
        """Fix what depends on the whole workload before the warm-up (e.g. hf's static cache length)."""

    def warmup_plan(self, requests: list[Request]) -> list[list[Request]]:
        """The generate() calls of the "shapes" warm-up, which must run every shape the timed passes
        will use. By default the whole workload once (an untimed full pass)."""
        return [requests]

    def warmup_requests(self, requests: list[Request]) -> list[Request]:
        """The requests of the "first-batch" warm-up: by default the first batch, at full shape and length."""
        return requests[: max(1, self.spec.engine.batch_size)]

    def compile_snapshot(self) -> dict | None:
        """torch.compile's cumulative counters where this engine compiles (`compile_watch.snapshot`);
        None where that cannot be observed from this process."""
        return None

    def engine_info(self) -> dict:
        """Figures the engine reports about itself (e.g. vLLM's KV pool), for the summary."""
        return {}

    def memory_stats(self) -> dict:
        """In-process memory figures (e.g. the torch allocator's peaks), reset by reset_memory_stats()."""
        return {}

    def reset_memory_stats(self) -> None:  # noqa: B027 - optional: most backends keep no statistics
        pass

    def engine_gc(self) -> dict | None:
        """Garbage collections in the engine's own processes during the last generate() (vLLM's engine
        core); None where not observed. This process's own are the runner's (`lab.gc_pauses`)."""
        return None

    def kv_samples(self) -> list[KvSample]:
        """KV-cache samples taken during the last generate(), one per step."""
        return []

    def close(self) -> None:  # noqa: B027 - optional: an engine without resources to free
        pass
