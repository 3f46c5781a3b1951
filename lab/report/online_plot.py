"""online.png: the PagedAttention paper's Figure 12 for this run: normalized latency (seconds per output
token, `lab.online_metrics`) against the offered request rate, one line per backend/mode, the
saturated points marked with a red ring. The offline pass (rate inf) is not a point of the curve."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lab.records import RunSummary
from lab.report.figure import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def finite_points(run: RunSummary) -> list[dict]:
    """The sweep's points at a finite offered rate with a normalized latency, ascending."""
    points = [p for p in run.sweep or [] if p.get("offered_rate_per_s") and p.get("normalized_latency_s")]
    return sorted(points, key=lambda p: p["offered_rate_per_s"])


def online_figure(runs: list[RunSummary]) -> Figure | None:
    """Normalized latency against request rate per backend/mode; None where no run has a finite rate."""
    lines = {run.label: finite_points(run) for run in runs if finite_points(run)}
    if not lines:
        return None
    fig = new_figure(figsize=(7.5, 4.6), layout="constrained")
    ax = fig.subplots()
    for label, points in lines.items():
        rates = [p["offered_rate_per_s"] for p in points]
        latency = [p["normalized_latency_s"] for p in points]
        (line,) = ax.plot(rates, latency, marker="o", label=label)
        saturated = [(r, v) for r, v, p in zip(rates, latency, points) if p.get("saturated")]
        if saturated:
            ax.scatter(*zip(*saturated), s=140, facecolors="none", edgecolors="#d62828", linewidths=1.6, zorder=3)
    ax.scatter([], [], s=140, facecolors="none", edgecolors="#d62828", label="saturated")
    ax.set_xlabel("offered request rate (requests/s)")
    ax.set_ylabel("normalized latency (s per output token)")
    ax.set_yscale("log")
    ax.set_title("Normalized latency against request rate (the paper's Figure 12)", loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
