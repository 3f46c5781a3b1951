"""The sharing sweep's plots: memory saving against n and beam width (the paper's Figure 15; vllm/shared
and hf/continuous), and
throughput per backend/mode at each point (Figures 14 and 16)."""

from __future__ import annotations

from pathlib import Path

from lab import paper
from lab.report.figure import new_figure
from lab.report.sharing import FORKING_RUN, SharingRow

SAVING_PNG = "sharing_saving.png"
THROUGHPUT_PNG = "sharing_throughput.png"


SAVING_RUNS = {"vllm/shared": "tab:blue", FORKING_RUN: "tab:green"}  # the runs that measure a saving


def plot_saving(rows: list[SharingRow], path: Path) -> bool:
    """The measured saving per point, a bar per run that measures one (vllm/shared against vllm/offline;
    hf/continuous within its run), with the paper's ranges as lines; False: nothing to draw."""
    measured = [r for r in rows if r.run in SAVING_RUNS and r.saving is not None]
    if not measured:
        return False
    points = list(dict.fromkeys(r.point for r in measured))
    runs = [run for run in SAVING_RUNS if any(r.run == run for r in measured)]
    width = 0.8 / len(runs)
    fig = new_figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for offset, run in enumerate(runs):
        at = {r.point: r.saving * 100 for r in measured if r.run == run}
        xs = [points.index(p) - 0.4 + width * (offset + 0.5) for p in at]
        ax.bar(xs, list(at.values()), width=width, color=SAVING_RUNS[run], label=run)
    for index, point in enumerate(points):
        ranges = paper.FIG15_SAVING_PCT.get(next(r.kind for r in measured if r.point == point))
        if ranges:
            low, high = min(r[0] for r in ranges.values()), max(r[1] for r in ranges.values())
            ax.plot([index - 0.4, index + 0.4], [low, low], color="black", lw=1)
            ax.plot([index - 0.4, index + 0.4], [high, high], color="black", lw=1, ls="--")
    ax.set_xticks(range(len(points)), points, rotation=20)
    ax.set_ylabel("memory saving, % of blocks without sharing")
    ax.set_title("Blocks saved by sharing (lines: the paper's Figure 15 range, Alpaca low to ShareGPT high)")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def plot_throughput(rows: list[SharingRow], path: Path) -> bool:
    """Output tokens/s per backend/mode across the points; False: nothing to draw."""
    points = list(dict.fromkeys(r.point for r in rows))
    runs = list(dict.fromkeys(r.run for r in rows))
    if not points or not any(r.output_tokens_per_s for r in rows):
        return False
    fig = new_figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for run in runs:
        values = {r.point: r.output_tokens_per_s for r in rows if r.run == run and r.output_tokens_per_s}
        ax.plot([points.index(p) for p in values], list(values.values()), marker="o", label=run)
    ax.set_xticks(range(len(points)), points, rotation=20)
    ax.set_ylabel("output tokens/s (every sequence's tokens)")
    ax.set_title("Throughput by point (the paper's Figures 14 and 16 plot normalized latency and throughput)")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True
