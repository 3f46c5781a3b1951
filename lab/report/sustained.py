"""The sustained rate of each backend/mode as its sweep bounds it, and vLLM's / its ratio, honest about
bounds. Shared by report.md's Online serving section and `lab compare`'s combined table.

A sweep measures a grid of offered rates, so the highest rate sustained (`lab.online_metrics.sustained_rate`)
is known only as far as the grid goes:
- a rate that held, and the next rate failed: that rate (written as it is);
- every rate held: at least the highest one run ('>= H');
- the lowest rate run already failed: below it ('< L'; there is no rate to name).
'>= H' is marked '†' where the point at H was not judged (`lab.online_judged`): the trace held no more
requests than the backend admits at once, so no rate could have saturated it; `short_trace_note` says how
many requests the trace would need.

As an interval [low, high] of requests/s: [X, X], [H, inf) and [0, L) (L itself failed: open).
vLLM's / this one's ratio then lies in [vLLM.low / this.high, vLLM.high / this.low]; it is written
exactly where both ends meet, as a bound ('>', '>=', '<', '<=') where one end is infinite or zero, and
'-' where neither side is known (both only bounded the same way).

The spread: with several timed passes at every rate (--repeats), the sustained rate above is judged on
each rate's medians over its passes; each pass's own (the k-th pass of every rate, judged by the same
rules) follows in brackets, and the ratio's range over them where every pass's rate is known exactly (the lowest of
vLLM's over the highest of this one's, to the highest over the lowest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lab.online_judged import SHORT_TRACE_FACTOR
from lab.online_metrics import SLO_ATTAINMENT_GOAL, sustained_rate
from lab.report.format import fmt

VLLM_PREFIX = "vllm/"


@dataclass(frozen=True)
class Sustained:
    """The highest offered rate sustained lies in [low, high] requests/s (`high_open`: high failed);
    `passes`: each timed pass's own, where every finite rate ran several (module docstring)."""

    low: float
    high: float
    high_open: bool = False
    passes: tuple[Sustained, ...] = ()
    too_short: bool = False  # '>= H' where the point at H was not judged: the trace could not saturate

    @classmethod
    def of(cls, points: list[dict], bound_s: float | None, slos: bool) -> Sustained | None:
        """From one backend/mode's points (any order, inf and failed points included); None where it has
        no finite offered rate."""
        finite = sorted((p for p in points if p.get("offered_rate_per_s")), key=lambda p: p["offered_rate_per_s"])
        if not finite:
            return None
        passes = min(len(p.get("pass_points") or []) for p in finite)
        each = tuple(cls.over(pass_k(finite, k), bound_s, slos) for k in range(passes))
        return cls.over(finite, bound_s, slos, each)

    @classmethod
    def over(cls, finite: list[dict], bound_s: float | None, slos: bool, passes: tuple = ()) -> Sustained:
        """From finite points in ascending rate."""
        rate, failed = sustained_rate(finite, bound_s, slos)
        if rate is None:
            return cls(0.0, finite[0]["offered_rate_per_s"], high_open=True, passes=passes)
        too_short = not failed and finite[-1].get("judged") is False
        return cls(rate, rate if failed else math.inf, passes=passes, too_short=too_short)

    @property
    def exact(self) -> bool:
        return 0 < self.low == self.high

    def text(self) -> str:
        """'2.00', '>= 32.00' or '< 1.00' (requests/s), then each pass's: '2.00 (passes: 2.00, 1.00)'."""
        if self.low == 0:
            own = f"< {fmt(self.high)}"
        else:
            own = fmt(self.low) if self.high == self.low else f">= {fmt(self.low)}" + (" †" if self.too_short else "")
        return own + (f" (passes: {', '.join(p.text() for p in self.passes)})" if self.passes else "")


def pass_k(finite: list[dict], k: int) -> list[dict]:
    """The k-th timed pass of every finite point, as points of their own."""
    return [p["pass_points"][k] | {"offered_rate_per_s": p["offered_rate_per_s"]} for p in finite]


def ratio_text(vllm: Sustained | None, this: Sustained | None) -> str:
    """vLLM's sustained rate / this one's as '3.00x', a bound ('> 2.00x', '<= 0.50x'), or '-' (module
    docstring)."""
    if vllm is None or this is None:
        return "-"
    text = bound_ratio_text(vllm, this)
    return text + pass_ratio_range(vllm, this) if text != "-" else text


def pass_ratio_range(vllm: Sustained, this: Sustained) -> str:
    """' (passes: 1.50-3.00x)': the ratio's range over each side's passes, where every one is exact."""
    if not vllm.passes or not this.passes or not all(p.exact for p in vllm.passes + this.passes):
        return ""
    low = min(p.low for p in vllm.passes) / max(p.low for p in this.passes)
    high = max(p.low for p in vllm.passes) / min(p.low for p in this.passes)
    return f" (passes: {low:.2f}-{high:.2f}x)"


def bound_ratio_text(vllm: Sustained, this: Sustained) -> str:
    """The ratio of the two intervals (module docstring), without the passes' range."""
    low = vllm.low / this.high if math.isfinite(this.high) else 0.0
    high = vllm.high / this.low if this.low > 0 else math.inf
    if math.isfinite(high) and high == low:
        return f"{low:.2f}x"
    if low > 0 and math.isinf(high):
        return (">" if this.high_open else ">=") + f" {low:.2f}x"
    if low == 0 and math.isfinite(high):
        return ("<" if vllm.high_open else "<=") + f" {high:.2f}x"
    return "-"


UNBOUNDED_TITLE = "sustained req/s, not saturated (any latency)"


def columns(bound_s: float | None, with_slos: bool) -> dict[str, tuple[float | None, bool]]:
    """{title: (latency bound, under the SLOs)} of the sustained-rate columns. The first has no latency
    bound: the highest rate each backend/mode keeps up with (the paper's Figure 12 knee). Under the bound
    (4x the fastest backend's own latency by default) the eager transformers paths, several times slower
    per token even at no load, are '< L' at every rate, so vLLM's ratio to them is only ever a bound
    there; without it the ratio can be exact."""
    found = {UNBOUNDED_TITLE: (None, False)}
    found[f"sustained req/s, normalized latency <= {fmt(bound_s, 4)} s/token"] = (bound_s, False)
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


def short_trace_note(sweeps: dict[tuple[str, ...], list[dict]]) -> list[str]:
    """['', the footnote of the '†' marks] where some key's '>= H' is marked (its point at H not judged:
    every request fit the backend's concurrency limit M at once); [] where none is."""
    needs = []
    for key, points in sweeps.items():
        found = Sustained.of(points, None, False)
        if found is not None and found.too_short:
            top = max((p for p in points if p.get("offered_rate_per_s")), key=lambda p: p["offered_rate_per_s"])
            needs.append(
                f"{' '.join(key)} ({top.get('requests')} requests, limit {top.get('concurrency_limit')}): "
                f"--num-requests {top.get('requests_to_judge')} or more"
            )
    if not needs:
        return []
    return [
        "",
        "†: not judged at the highest rate: the trace held no more requests than the backend/mode admits at once "
        "(vLLM's max_num_seqs, a batch's rows, --max-concurrency) and its KV pool never filled, so every request "
        "was begun on arrival and no queue could form at any rate. The trace was too short to show saturation: "
        f"'>= H' says nothing of a higher rate. To see it, at least {SHORT_TRACE_FACTOR}x the limit: "
        + "; ".join(needs)
        + ".",
    ]


BOUNDS_NOTE = (
    "Highest offered rate sustained (not saturated, and every lower rate too): at any latency (the "
    "knee of the Figure 12 curve), then also within the normalized-latency bound, and under the SLOs "
    "where given. "
    "'>= H': no measured rate failed, so the backend/mode may sustain more; '< L': it failed already at "
    "the lowest rate it ran. A ratio with '>', '>=', '<' or '<=' is a bound for the same reason; '-': "
    "not known from these sweeps. With several passes at every rate, judged on each rate's medians; "
    "'(passes: ...)' gives each pass's own sustained rate and the ratio's range over them."
)
