"""The frozen configuration tree. Built only in the CLI layer, validated here, written into every result.

A `RunSpec` is one backend/mode in one process; an `ExperimentSpec` is the set of them run one after
the other on the same model and workload; a `CapacitySpec` is what `lab capacity` runs. Each
serialises to a plain dict (`to_dict`) for the manifest.

A backend/mode has two spellings, made here only: its label `hf/batched` (tables, the manifest) and
its name `hf-batched` (its folder under `runs/`, the `run` field of the collector's samples).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lab.continuous_settings import ContinuousSettings
from lab.errors import LabInputError
from lab.online_settings import OnlineSettings

# backend -> the modes it implements, in report order.
BACKEND_MODES: dict[str, tuple[str, ...]] = {
    "hf": ("sequential", "batched", "static-cache", "static-cache-eager", "continuous"),
    "vllm": ("offline", "shared"),
}
# Modes run only when named (`--backends vllm/shared`) or by a sharing experiment, never for a bare
# backend name: vllm/shared is vllm/offline with prefix caching on, the sharing the issue-17 experiments measure.
OPT_IN_MODES = {("vllm", "shared")}
SHARING_LIMIT = 64  # the most samples (--n) or beams (--beam-width) per request
# Issues 16 and 17 do not combine yet: vLLM's beam search (LLM.beam_search) submits every request
# itself, and the sharing report reads one offered load per point.
SHARING_ONLINE = (
    "a memory-sharing sweep runs offline, every request at t=0 (vLLM's beam search submits every request "
    "itself, so arrivals cannot be honoured, and the sharing report compares one load per point); run the "
    "sharing sweep without --request-rate and --max-concurrency, and the online sweep as an experiment of its own"
)
DEVICES = ("auto", "cuda", "cpu")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# shapes: every shape the timed passes will use (each backend's `warmup_plan`); full-pass: the whole
# workload once, untimed; first-batch: the first batch only (what older runs did: it leaves first calls
# of other shapes in the timed pass); none: nothing (to measure first calls).
WARMUPS = ("shapes", "full-pass", "first-batch", "none")
# The KV pool of the paged engines (vLLM, hf/continuous) when neither --kv-cache-memory nor
# --gpu-memory-utilization is given.
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30  # 1 GiB: room for a tiny model's runs, far below vLLM's CPU default (92 %)
DEFAULT_GPU_MEMORY_UTILIZATION = 0.5  # the fraction the GPU reference figures were taken with
BLOCK_SIZES = (8, 16, 32, 64, 128)
# Ranges of the numeric options: beyond these a value is a typo, not an experiment.
MAX_SEED = 2**32 - 1
MAX_COUNT = 10**7  # requests, tokens, batch size, context length
MAX_REPEATS = 100
MAX_BYTES = 2**50  # 1 PiB: more memory than any one machine has
MAX_TIMEOUT_S = 7 * 24 * 3600.0


def check_range(option: str, value: float | None, low: float, high: float, fix: str = "") -> None:
    """LabInputError naming `option`, its range and the fix unless `value` is None or within [low, high]."""
    if value is None or low <= value <= high:
        return
    raise LabInputError(
        f"{option} must be {_number(low)}-{_number(high)}, got {_number(value)}" + (f"; {fix}" if fix else "")
    )


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def run_label(backend: str, mode: str) -> str:
    """'hf/batched': how tables, observations and the manifest name a backend/mode."""
    return f"{backend}/{mode}"


def run_name(backend: str, mode: str) -> str:
    """'hf-batched': the backend/mode's folder under runs/ and the `run` of its collector samples."""
    return f"{backend}-{mode}"


def parse_backends(text: str) -> tuple[tuple[str, str], ...]:
    """'hf,vllm' or 'hf/batched,vllm' -> ((backend, mode), ...) in the order given.

    A backend without a mode stands for all its modes.
    """
    pairs: list[tuple[str, str]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        backend, _, mode = item.partition("/")
        if backend not in BACKEND_MODES:
            raise LabInputError(
                f"unknown backend {backend!r}: choose from {', '.join(BACKEND_MODES)} "
                f"(e.g. --backends hf,vllm or --backends hf/batched)"
            )
        modes = (mode,) if mode else tuple(m for m in BACKEND_MODES[backend] if (backend, m) not in OPT_IN_MODES)
        for m in modes:
            check_mode(backend, m)
            if (backend, m) not in pairs:
                pairs.append((backend, m))
    if not pairs:
        raise LabInputError("--backends is empty: name at least one, e.g. --backends hf,vllm")
    return tuple(pairs)


def check_mode(backend: str, mode: str) -> None:
    if backend not in BACKEND_MODES:
        raise LabInputError(f"unknown backend {backend!r}: choose from {', '.join(BACKEND_MODES)}")
    if mode not in BACKEND_MODES[backend]:
        raise LabInputError(
            f"unknown mode {mode!r} for backend {backend!r}: choose from {', '.join(BACKEND_MODES[backend])}"
        )


def check_timeout(timeout_s: float | None) -> None:
    if timeout_s is not None and not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise LabInputError(
            f"--timeout must be more than 0 and at most {MAX_TIMEOUT_S:g} s (a week), got {timeout_s:g}; "
            "leave it out for a limit sized from the workload"
        )


def check_sharing(n: int, beam_width: int, shared_prefix_tokens: int) -> None:
    """LabInputError for a sample count, beam width or shared prefix that cannot run."""
    if not 1 <= n <= SHARING_LIMIT:
        raise LabInputError(f"--n must be 1-{SHARING_LIMIT} parallel samples per request, got {n}")
    if not 1 <= beam_width <= SHARING_LIMIT:
        raise LabInputError(f"--beam-width must be 1-{SHARING_LIMIT}, got {beam_width}")
    if n > 1 and beam_width > 1:
        raise LabInputError(
            f"--n {n} and --beam-width {beam_width} together: a point samples or searches beams, not both "
            "(give --n 1 with a beam width, or no --beam-width)"
        )
    if shared_prefix_tokens < 0:
        raise LabInputError(f"--shared-prefix-tokens must be 0 or more, got {shared_prefix_tokens}")


@dataclass(frozen=True)
class EngineSettings:
    """What every backend/mode of one experiment shares, so that the comparison is fair."""

    model: str
    workload: str
    device: str = "auto"  # resolved to cuda or cpu before a run starts
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    seed: int = 0
    num_requests: int | None = None  # None: the workload's own count
    output_tokens: int | None = None  # None: the workload's own lengths; else every request gets this many
    batch_size: int = 8  # hf/batched and hf/static-cache
    warmup: str = "shapes"
    # The paged engines' KV pool (vLLM, hf/continuous): kv_cache_memory_bytes pins it (fair across
    # backends); else gpu_memory_utilization.
    kv_cache_memory_bytes: int | None = None
    gpu_memory_utilization: float | None = None
    block_size: int = 16
    max_model_len: int | None = None  # None: the model's context
    enable_prefix_caching: bool = False
    sample_kv_every_step: bool = True  # vLLM and hf/continuous: read KV usage after each engine step
    repeats: int = 1  # timed passes of the whole workload per backend/mode, after the warm-up
    hf_continuous: ContinuousSettings = field(default_factory=ContinuousSettings)  # hf/continuous only
    max_num_seqs: int | None = None  # vLLM: requests one step may run; None: vLLM's default
    # The paged engines' KV pool sized from the workload (`--kv-cache-memory workload:SHARE`): this share
    # of the blocks every request holds at its final length (lab.accounting.capacity.workload_budget_bytes);
    # the experiment sets kv_cache_memory_bytes from it before any engine starts.
    kv_cache_workload_share: float | None = None
    # GPUs one backend/mode spreads its model over: vLLM's workers, or torchrun ranks for transformers.
    tensor_parallel_size: int = 1
    # Online serving (issue 16): arrivals over time at each offered rate; the default is offline.
    online: OnlineSettings = field(default_factory=OnlineSettings)
    # Memory sharing (issue 17): sequences per request. n > 1: parallel samples (seeded sampling);
    # beam_width > 1: beam search returning that many beams. Each request then produces
    # sequences x output_tokens tokens. shared_prefix_tokens: every prompt starts with the same K tokens.
    n: int = 1
    beam_width: int = 1
    shared_prefix_tokens: int = 0

    @property
    def sequences(self) -> int:
        """Sequences each request generates: n parallel samples or beam_width beams (1 otherwise)."""
        return max(self.n, self.beam_width)

    def __post_init__(self) -> None:
        # A manifest or spec.json holds the settings as a dict (older ones not at all).
        object.__setattr__(self, "hf_continuous", ContinuousSettings.coerce(self.hf_continuous))
        object.__setattr__(self, "online", OnlineSettings.coerce(self.online))
        if self.device not in DEVICES:
            raise LabInputError(f"unknown device {self.device!r}: choose from {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise LabInputError(f"unknown dtype {self.dtype!r}: choose from {', '.join(DTYPES)}")
        if self.warmup not in WARMUPS:
            raise LabInputError(f"unknown warm-up {self.warmup!r}: choose from {', '.join(WARMUPS)}")
        check_range("--seed", self.seed, 0, MAX_SEED, "any integer from 0 to 2^32 - 1 (numpy's and torch's range)")
        check_range("--batch-size", self.batch_size, 1, MAX_COUNT)
        check_range("--repeats", self.repeats, 1, MAX_REPEATS)
        check_range("--num-requests", self.num_requests, 1, MAX_COUNT, "or leave it out for the workload's own count")
        check_range("--output-tokens", self.output_tokens, 1, MAX_COUNT, "or leave it out for the workload's own")
        check_range("--max-model-len", self.max_model_len, 1, MAX_COUNT, "or leave it out for the model's context")
        check_range("--kv-cache-memory", self.kv_cache_memory_bytes, 1, MAX_BYTES, "e.g. 4GiB")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise LabInputError(
                f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}: "
                "a fraction of the GPU's memory, e.g. 0.5"
            )
        if self.kv_cache_workload_share is not None and not 0 < self.kv_cache_workload_share <= 1:
            raise LabInputError(
                f"--kv-cache-memory workload:{self.kv_cache_workload_share}: give a share in (0, 1], "
                "e.g. workload:0.25 (a pool a quarter of what every request needs at once)"
            )
        check_range("--max-num-seqs", self.max_num_seqs, 1, MAX_COUNT, "or leave it out for vLLM's default")
        check_range("--tensor-parallel-size", self.tensor_parallel_size, 1, 64)
        check_sharing(self.n, self.beam_width, self.shared_prefix_tokens)
        if self.online.is_sweep and (self.sequences > 1 or self.shared_prefix_tokens):
            raise LabInputError(
                f"n={self.n}, beam width {self.beam_width}, shared prefix {self.shared_prefix_tokens} tokens "
                f"with requests arriving over time: {SHARING_ONLINE}"
            )
        if self.block_size not in BLOCK_SIZES:
            raise LabInputError(
                f"--block-size must be one of {', '.join(map(str, BLOCK_SIZES))}, got {self.block_size}"
            )

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), online=self.online.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> EngineSettings:
        """From a manifest's `config.engine`; a setting an older run did not record takes its default."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class RunSpec:
    """One backend/mode, run in its own process."""

    backend: str
    mode: str
    engine: EngineSettings

    def __post_init__(self) -> None:
        check_mode(self.backend, self.mode)

    @property
    def name(self) -> str:
        """'hf-batched': this backend/mode's folder under runs/."""
        return run_name(self.backend, self.mode)

    @property
    def label(self) -> str:
        """'hf/batched': this backend/mode in tables and messages."""
        return run_label(self.backend, self.mode)

    def to_dict(self) -> dict:
        return {"backend": self.backend, "mode": self.mode, "engine": self.engine.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> RunSpec:
        return cls(data["backend"], data["mode"], EngineSettings(**data["engine"]))


@dataclass(frozen=True)
class ExperimentSpec:
    engine: EngineSettings
    runs: tuple[tuple[str, str], ...] = field(default_factory=lambda: parse_backends("hf,vllm"))
    collector_interval_ms: int = 15
    collect: bool = True
    preset: str | None = None  # `lab experiment --preset NAME` (lab.experiments.presets)
    timeout_s: float | None = None  # per backend/mode; None: sized from the workload (experiments/timeout.py)

    def __post_init__(self) -> None:
        check_range("--collector-interval-ms", self.collector_interval_ms, 1, 1000, "15 is ~66 samples a second")
        check_timeout(self.timeout_s)

    def run_specs(self) -> list[RunSpec]:
        return [RunSpec(backend, mode, self.engine) for backend, mode in self.runs]

    def to_dict(self) -> dict:
        return {
            "engine": self.engine.to_dict(),
            "runs": [run_label(b, m) for b, m in self.runs],
            "collector_interval_ms": self.collector_interval_ms,
            "collect": self.collect,
            "preset": self.preset,
            "timeout_s": self.timeout_s,
        }


@dataclass(frozen=True)
class CapacitySpec:
    """What `lab capacity` runs: the shared engine settings, the budget, and which points to measure."""

    engine: EngineSettings
    kv_budget_bytes: int
    max_len: int | None = None  # static reservation per request; None: max_model_len or the model's context
    concurrency: tuple[int, ...] | None = None  # curve points; None: 1, 2, 4, ... up to each capacity
    measure: bool = True
    curve: bool = True
    collect: bool = True
    timeout_s: float | None = None  # per measured point; None: sized from the workload

    def __post_init__(self) -> None:
        check_range("--kv-budget", self.kv_budget_bytes, 1, MAX_BYTES, "e.g. 4GiB")
        check_range("--max-len", self.max_len, 1, MAX_COUNT, "or leave it out for --max-model-len or the context")
        if self.concurrency is not None and (not self.concurrency or min(self.concurrency) < 1):
            raise LabInputError(f"--concurrency takes positive integers, e.g. 1,2,4,8; got {self.concurrency}")
        check_timeout(self.timeout_s)

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), engine=self.engine.to_dict())
