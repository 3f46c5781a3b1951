"""The interface every backend implements, and the clock the runner lends them.

The runner, not the backend, owns fairness: it builds the clock, runs the warm-up, decides what is
timed and writes the records. A backend only loads its engine and generates exactly
`request.output_tokens` tokens for each request, reporting per-request times on the runner's clock.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Callable

from lab.config import RunSpec
from lab.workloads import Request


class Clock:
    """Seconds since `start()`, read after the device has finished its queued work.

    One clock for every backend: `time.perf_counter`, with `sync` (e.g. torch.cuda.synchronize)
    called before each reading so that asynchronous GPU work is not missed.
    """

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self._sync = sync or (lambda: None)
        self._t0 = time.perf_counter()
        self.wall_t0 = time.time()  # epoch seconds at start(), to line up with the collector

    def start(self) -> None:
        self._sync()
        self._t0 = time.perf_counter()
        self.wall_t0 = time.time()

    def now(self) -> float:
        self._sync()
        return time.perf_counter() - self._t0


@dataclass
class RequestRecord:
    """What one request did, times in seconds on the runner's clock (0 = start of the timed phase)."""

    request_id: int
    prompt_tokens: int
    output_tokens: int  # tokens generated for this request (equals the requested count when ok)
    start_s: float  # when the backend began work on it (its batch's start; 0 for vLLM, which queues itself)
    first_token_s: float | None  # when its first output token existed; None where unknown
    end_s: float  # when its last output token existed
    batch: int | None = None  # hf batch index; None for vLLM
    status: str = "ok"
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.start_s

    @property
    def e2e_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ttft_s"] = self.ttft_s
        data["e2e_s"] = self.e2e_s
        return data


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

    def warmup_requests(self, requests: list[Request]) -> list[Request]:
        """The requests the warm-up runs: by default the first batch, at full shape and length."""
        return requests[: max(1, self.spec.engine.batch_size)]

    def engine_info(self) -> dict:
        """Figures the engine reports about itself (e.g. vLLM's KV pool), for the summary."""
        return {}

    def memory_stats(self) -> dict:
        """In-process memory figures (e.g. the torch allocator's peaks), reset by reset_memory_stats()."""
        return {}

    def reset_memory_stats(self) -> None:
        pass

    def kv_samples(self) -> list[dict]:
        """KV-cache samples taken during the last generate(), one dict per step."""
        return []

    def close(self) -> None:
        pass
