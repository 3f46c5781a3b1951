"""The sustained rate of each backend/mode as its sweep bounds it, and vLLM's / its ratio, honest about
bounds. Shared by report.md's Online serving section and `lab compare`'s combined table.

A sweep measures a grid of offered rates, so the highest rate sustained (`lab.online_metrics.sustained_rate`)
is known only as far as the grid goes:
- a rate that held, and the next rate failed: that rate (written as it is);
- every rate held: at least the highest one run ('>= H');
- the lowest rate run already failed: below it ('< L'; there is no rate to name).

As an interval [low, high] of requests/s: [X, X], [H, inf) and [0, L) (L itself failed: open).
vLLM's / this one's ratio then lies in [vLLM.low / this.high, vLLM.high / this.low]; it is written
exactly where both ends meet, as a bound ('>', '>=', '<', '<=') where one end is infinite or zero, and
'-' where neither side is known (both only bounded the same way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lab.online_metrics import SLO_ATTAINMENT_GOAL, sustained_rate
from lab.report.format import fmt

VLLM_PREFIX = "vllm/"


@dataclass(frozen=True)
class Sustained:
    """The highest offered rate sustained lies in [low, high] requests/s (`high_open`: high failed)."""

    low: float
    high: float
    high_open: bool = False

    @classmethod
    def of(cls, points: list[dict], bound_s: float | None, slos: bool) -> Sustained | None:
        """From one backend/mode's points (any order, inf and failed points included); None where it has
        no finite offered rate."""
        finite = sorted((p for p in points if p.get("offered_rate_per_s")), key=lambda p: p["offered_rate_per_s"])
        if not finite:
            return None
        rate, failed = sustained_rate(finite, bound_s, slos)
        if rate is None:
            return cls(0.0, finite[0]["offered_rate_per_s"], high_open=True)
        return cls(rate, rate if failed else math.inf)

    def text(self) -> str:
        """'2.00', '>= 32.00' or '< 1.00' (requests/s)."""
        if self.low == 0:
            return f"< {fmt(self.high)}"
        return fmt(self.low) if self.high == self.low else f">= {fmt(self.low)}"


def ratio_text(vllm: Sustained | None, this: Sustained | None) -> str:
    """vLLM's sustained rate / this one's as '3.00x', a bound ('> 2.00x', '<= 0.50x'), or '-' (module
    docstring)."""
    if vllm is None or this is None:
        return "-"
    low = vllm.low / this.high if math.isfinite(this.high) else 0.0
    high = vllm.high / this.low if this.low > 0 else math.inf
    if math.isfinite(high) and high == low:
        return f"{low:.2f}x"
    if low > 0 and math.isinf(high):
        return (">" if this.high_open else ">=") + f" {low:.2f}x"
    if low == 0 and math.isfinite(high):
        return ("<" if vllm.high_open else "<=") + f" {high:.2f}x"
    return "-"


def columns(bound_s: float | None, with_slos: bool) -> dict[str, tuple[float | None, bool]]:
    """{title: (latency bound, under the SLOs)} of the sustained-rate columns."""
    found = {f"sustained req/s, normalized latency <= {fmt(bound_s, 4)} s/token": (bound_s, False)}
    if with_slos:
        found[f"sustained req/s, {SLO_ATTAINMENT_GOAL:.0%} of requests within the SLOs"] = (None, True)
    return found


def vllm_key(sweeps: dict[tuple[str, ...], list[dict]]) -> tuple[str, ...] | None:
    """The first backend/mode (the key's last item) that is vLLM's: every ratio's numerator."""
    return next((key for key in sweeps if key[-1].startswith(VLLM_PREFIX)), None)


def sustained_table(sweeps: dict[tuple[str, ...], list[dict]], titles: dict[str, tuple[float | None, bool]]):
    """(headers after the key's columns, rows): each key's cells, then per column its sustained rate and
    vLLM's / it. `sweeps`: {(..., backend/mode): its points}."""
    found = {key: [Sustained.of(points, b, s) for b, s in titles.values()] for key, points in sweeps.items()}
    reference = vllm_key(sweeps)
    rows = []
    for key, values in found.items():
        row = list(key)
        for i, value in enumerate(values):
            row.append("-" if value is None else value.text())
            same = key == reference and value is not None
            row.append("1.00x" if same else ratio_text(found[reference][i] if reference else None, value))
        rows.append(row)
    headers = [h for title in titles for h in (title, "vLLM / this")]
    return headers, rows


BOUNDS_NOTE = (
    "Highest offered rate sustained (not saturated, within the bound, and every lower rate too). "
    "'>= H': no measured rate failed, so the backend/mode may sustain more; '< L': it failed already at "
    "the lowest rate it ran. A ratio with '>', '>=', '<' or '<=' is a bound for the same reason; '-': "
    "not known from these sweeps."
)
