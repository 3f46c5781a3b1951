"""gpu_memory.png: each GPU's memory over time, for the backend/modes split over several GPUs.

One row per such backend/mode, one colour per GPU: NVML's figure for the backend's processes on
that GPU (solid) and for the whole GPU (dashed), seconds since the process started, the timed pass
shaded. memory.png draws the same figures summed over the GPUs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lab.report.figure import new_figure
from lab.report.memory_plot import PHASE_COLORS, PlotPart, process_start

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GPU_COLORS = ("#1d3557", "#e63946", "#2a9d8f", "#f4a261", "#6a4c93", "#8ab17d", "#b5838d", "#457b9d")


def gpu_lines(samples: list[dict], gpu: int, key: str) -> tuple[list[float], list[float]]:
    """(epoch times, MiB) of one GPU's `key` in the collector's samples, where known."""
    points = [
        (s["t"], g[key]) for s in samples for g in s.get("gpus") or () if g.get("gpu") == gpu and g.get(key) is not None
    ]
    return [t for t, _ in points], [v for _, v in points]


def several_gpus(part: PlotPart) -> list[int]:
    """The GPUs this backend/mode used, where it used more than one."""
    used = part.summary.memory.get("gpus_used") or []
    return used if len(used) > 1 else []


def gpu_memory_figure(parts: list[PlotPart]) -> Figure | None:
    parts = [p for p in parts if several_gpus(p) and process_start(p) is not None]
    if not parts:
        return None
    fig = new_figure(figsize=(12, 2.8 * len(parts) + 0.8), layout="constrained")
    axes = fig.subplots(len(parts), 1, squeeze=False)
    for (ax,), part in zip(axes, parts):
        start = process_start(part)
        window = part.result.phase("generate") if part.result else None
        if window:
            ax.axvspan(window[0] - start, window[1] - start, color=PHASE_COLORS["generate"], alpha=0.5, lw=0)
        for i, gpu in enumerate(several_gpus(part)):
            color = GPU_COLORS[i % len(GPU_COLORS)]
            for key, style, what in (
                ("tree_gpu_mib", "-", "backend's processes"),
                ("device_used_mib", "--", "whole GPU"),
            ):
                t, mib = gpu_lines(part.samples, gpu, key)
                ax.plot([x - start for x in t], mib, style, color=color, lw=1.3, label=f"GPU {gpu}: {what} (NVML)")
        ax.set_title(f"{part.summary.label}: memory per GPU (timed pass shaded)", loc="left", fontsize=10)
        ax.set_xlabel("seconds since the process started", fontsize=8)
        ax.set_ylabel("MiB")
        ax.legend(fontsize=7, ncols=2, loc="upper left")
        ax.grid(alpha=0.3)
    return fig
