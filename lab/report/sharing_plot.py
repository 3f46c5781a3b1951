"""The sharing sweep's plots: memory saving against n and beam width (the paper's Figure 15), and
throughput per backend/mode at each point (Figures 14 and 16)."""

from __future__ import annotations

from pathlib import Path

from lab import paper
from lab.report.figure import new_figure
from lab.report.sharing import SharingRow

SAVING_PNG = "sharing_saving.png"
THROUGHPUT_PNG = "sharing_throughput.png"


def plot_saving(rows: list[SharingRow], path: Path) -> bool:
    """vLLM's measured saving per point, as bars, with the paper's ranges as bands; False: nothing to draw."""
    shared = [r for r in rows if r.run == "vllm/shared" and r.saving is not None]
    if not shared:
        return False
    fig = new_figure(figsize=(7, 4))
    ax = fig.add_subplot()
    colours = {"parallel sampling": "tab:blue", "beam search": "tab:orange"}
    for index, row in enumerate(shared):
        ax.bar(index, row.saving * 100, color=colours.get(row.kind, "tab:gray"))
        ranges = paper.FIG15_SAVING_PCT.get(row.kind)
        if ranges:
            low, high = min(r[0] for r in ranges.values()), max(r[1] for r in ranges.values())
            ax.plot([index - 0.4, index + 0.4], [low, low], color="black", lw=1)
            ax.plot([index - 0.4, index + 0.4], [high, high], color="black", lw=1, ls="--")
    ax.set_xticks(range(len(shared)), [r.point for r in shared], rotation=20)
    ax.set_ylabel("memory saving, % of blocks without sharing")
    ax.set_title("vLLM: blocks saved by sharing (lines: the paper's Figure 15 range, Alpaca low to ShareGPT high)")
    ax.title.set_fontsize(8)
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
