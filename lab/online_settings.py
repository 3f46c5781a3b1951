"""The settings of online serving (issue 16): requests that arrive over time, at one or more offered
rates, each rate a timed pass of its own after the one warm-up.

    request_rates      offered request rates, requests per second, ascending; inf: every request at
                       t=0 (the offline scenario). (inf,) alone is today's offline experiment.
    burstiness         the shape of the gamma distribution of the gaps between arrivals (1: Poisson),
                       as in `vllm bench serve` (`lab.arrivals`).
    max_concurrency    the most requests in flight at once (submitted, not finished); a request that
                       arrives at the cap waits in the lab's queue (its latency still counts from its
                       arrival). None: no cap.
    batch_wait_s       hf/batched and hf/static-cache: how long the oldest queued request may wait for
                       a batch to fill before a smaller batch starts (0: start with what is queued).
    stop_at_saturation skip a backend's higher rates once one of its rates saturated.
    slo_ttft_s, slo_tpot_s, slo_e2e_s  the service-level objectives of goodput (None: not set).
    norm_latency_bound_s  the normalized latency (seconds per output token) a rate must stay under to
                       count as sustained; None: 4 x the lowest normalized latency measured at the
                       sweep's lowest rate (the report says which).

Nothing here imports an engine.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from lab.errors import LabInputError

INF = math.inf
SLO_KEYS = ("ttft", "tpot", "e2e")
RATE_EXAMPLE = "--request-rate 1,2,4,8,inf"


def parse_rates(text: str | None) -> tuple[float, ...]:
    """'1,2,4,inf' -> (1.0, 2.0, 4.0, inf), ascending, inf last; None or '' -> (inf,)."""
    if text is None or not str(text).strip():
        return (INF,)
    rates = []
    for item in (part.strip().lower() for part in str(text).split(",")):
        if not item:
            continue
        try:
            rate = INF if item in ("inf", "infinity") else float(item)
        except ValueError:
            raise LabInputError(
                f"--request-rate: cannot read {item!r}: give requests per second ({RATE_EXAMPLE})"
            ) from None
        rates.append(rate)
    return check_rates(rates)


def check_rates(rates) -> tuple[float, ...]:
    rates = [INF if r in ("inf", None) else float(r) for r in rates]
    if not rates:
        raise LabInputError(f"--request-rate is empty: give at least one rate ({RATE_EXAMPLE})")
    for rate in rates:
        if math.isnan(rate) or rate <= 0:
            raise LabInputError(
                f"--request-rate {rate:g}: a rate must be positive requests per second, or inf for every request "
                f"at once ({RATE_EXAMPLE})"
            )
    return tuple(sorted(set(rates)))


@dataclass(frozen=True)
class OnlineSettings:
    """How requests arrive and what the report holds them to (module docstring)."""

    request_rates: tuple[float, ...] = (INF,)
    burstiness: float = 1.0
    max_concurrency: int | None = None
    batch_wait_s: float = 0.0
    stop_at_saturation: bool = False
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    slo_e2e_s: float | None = None
    norm_latency_bound_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "request_rates", check_rates(self.request_rates))
        if not (self.burstiness > 0):
            raise LabInputError(f"--burstiness must be positive (1: Poisson arrivals), got {self.burstiness}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise LabInputError(f"--max-concurrency must be at least 1, got {self.max_concurrency}")
        if not (self.batch_wait_s >= 0):
            raise LabInputError(f"--batch-wait must be 0 or more seconds, got {self.batch_wait_s}")
        for key in SLO_KEYS:
            value = self.slos.get(key)
            if value is not None and not value > 0:
                raise LabInputError(f"--slo-{key} must be positive seconds, got {value}")
        if self.norm_latency_bound_s is not None and not self.norm_latency_bound_s > 0:
            raise LabInputError(
                f"--norm-latency-bound must be positive seconds per token, got {self.norm_latency_bound_s}"
            )

    @property
    def slos(self) -> dict[str, float]:
        """{'ttft': s, 'tpot': s, 'e2e': s}, the SLOs that are set."""
        values = {"ttft": self.slo_ttft_s, "tpot": self.slo_tpot_s, "e2e": self.slo_e2e_s}
        return {key: value for key, value in values.items() if value is not None}

    @property
    def is_sweep(self) -> bool:
        """Whether any rate is finite (requests arrive over time), or a concurrency cap is set."""
        return any(math.isfinite(r) for r in self.request_rates) or self.max_concurrency is not None

    def to_dict(self) -> dict:
        """As a manifest holds it: JSON has no infinity, so inf is the string 'inf'."""
        data = dataclasses.asdict(self)
        data["request_rates"] = [rate_text(r) for r in self.request_rates]
        return data

    @classmethod
    def coerce(cls, value: OnlineSettings | dict | None) -> OnlineSettings:
        """From the object, its dict (a manifest, spec.json) or None (older runs: offline)."""
        if isinstance(value, cls):
            return value
        if value is None:
            return cls()
        if isinstance(value, dict):
            names = {f.name for f in dataclasses.fields(cls)}
            data = {key: item for key, item in value.items() if key in names}
            if "request_rates" in data:
                data["request_rates"] = tuple(data["request_rates"])
            return cls(**data)
        raise LabInputError(f"online settings: cannot read {value!r}")


def rate_text(rate: float | None) -> str | float:
    """A rate as the files hold it: 'inf' for the offline scenario, else the number."""
    return "inf" if rate in (None, "inf") or math.isinf(rate) else rate


def rate_value(text: str | float | None) -> float:
    """Back from `rate_text` (None, as older records have it: inf)."""
    return INF if text in (None, "inf") else float(text)
