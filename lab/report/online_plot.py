"""online.png: the PagedAttention paper's Figure 12 for this run: normalized latency (seconds per output
token, `lab.online_metrics`) against the offered request rate, one line per backend/mode, the
saturated points marked with a red ring, and where a rate ran several passes, a bar from the lowest to
the highest pass (the line joins the medians). The offline pass (rate inf) is not a point of the curve.
`lab compare --plot` draws every run's lines with the same function (`figure12`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lab.records import RunSummary
from lab.report.figure import new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TITLE = "Normalized latency against request rate (the paper's Figure 12)"
SATURATED_RING = {"s": 140, "facecolors": "none", "edgecolors": "#d62828"}


def finite_points(run: RunSummary) -> list[dict]:
    """The sweep's points at a finite offered rate with a normalized latency, ascending."""
    points = [p for p in run.sweep or [] if p.get("offered_rate_per_s") and p.get("normalized_latency_s")]
    return sorted(points, key=lambda p: p["offered_rate_per_s"])


def online_figure(runs: list[RunSummary]) -> Figure | None:
    """Normalized latency against request rate per backend/mode; None where no run has a finite rate."""
    return figure12({run.label: finite_points(run) for run in runs}, TITLE)


def figure12(lines: dict[str, list[dict]], title: str, bound_s: float | None = None) -> Figure | None:
    """One line per label through its points (`finite_points`), and `bound_s` (the sustained-rate
    bound, s/token) as a dashed line where given; None where no label has a point."""
    lines = {label: points for label, points in lines.items() if points}
    if not lines:
        return None
    fig = new_figure(figsize=(7.5, 4.6), layout="constrained")
    ax = fig.subplots()
    for label, points in lines.items():
        draw_line(ax, label, points)
    ax.scatter([], [], **SATURATED_RING, label="saturated")
    if bound_s is not None:
        ax.axhline(bound_s, color="#555555", linestyle="--", linewidth=1, label="sustained-rate bound")
    ax.set_xlabel("offered request rate (requests/s)")
    ax.set_ylabel("normalized latency (s per output token)")
    ax.set_yscale("log")
    ax.set_title(title, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def draw_line(ax: Axes, label: str, points: list[dict]) -> None:
    """The medians joined, each pass's range as a bar (several passes only), saturated points ringed."""
    rates = [p["offered_rate_per_s"] for p in points]
    latency = [p["normalized_latency_s"] for p in points]
    (line,) = ax.plot(rates, latency, marker="o", label=label)
    ranged = [(r, v, p) for r, v, p in zip(rates, latency, points) if _has_range(p)]
    if ranged:
        below = [v - p["normalized_latency_s_min"] for _, v, p in ranged]
        above = [p["normalized_latency_s_max"] - v for _, v, p in ranged]
        xs, ys = [r for r, _, _ in ranged], [v for _, v, _ in ranged]
        ax.errorbar(xs, ys, yerr=[below, above], fmt="none", ecolor=line.get_color(), capsize=3)
    saturated = [(r, v) for r, v, p in zip(rates, latency, points) if p.get("saturated")]
    if saturated:
        ax.scatter(*zip(*saturated), **SATURATED_RING, linewidths=1.6, zorder=3)


def _has_range(point: dict) -> bool:
    low, high = point.get("normalized_latency_s_min"), point.get("normalized_latency_s_max")
    return (point.get("passes_counted") or 1) > 1 and low is not None and high is not None and low < high
