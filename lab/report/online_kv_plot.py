"""online_kv.png: each offered rate's KV usage over its own timed pass (online serving, issue 16).

One panel per paged backend/mode of a sweep (vLLM, hf/continuous), one line per offered rate (with
--repeats, each of the rate's passes in its colour): the KV blocks in use after each engine step, in
MiB (`lab.report.memory_plot.kv_series`, the line memory.png draws for the last pass), against seconds
since that pass's t=0; the right-hand axis gives the same as a share of the pool (D). Runs written
before every pass kept its KV samples have their last pass's only: one line.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from lab.accounting.pass_memory import kv_block_bytes, pass_rates
from lab.pass_records import samples_by_pass
from lab.records import KvSample
from lab.report.figure import new_figure
from lab.report.format import MIB
from lab.report.memory_plot import Series, draw_line, kv_series
from lab.report.run_view import RunPart

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def rate_label(rate: str | float) -> str:
    return "inf (offline)" if rate == "inf" else f"{rate:g} req/s"


def kv_passes(part: RunPart) -> list[tuple[str | float, list[KvSample]]]:
    """(offered rate, KV samples) of each timed pass of `part` that has samples, in pass order."""
    rates = pass_rates(part.records_every_pass)
    by_pass = samples_by_pass(part.kv_samples_every_pass, max(rates, default=0))
    return [(rates[index], samples) for index, samples in sorted(by_pass.items()) if index in rates and samples]


def rate_series(part: RunPart) -> list[tuple[str | float, Series]]:
    """(offered rate, its pass's line) of every pass, times in seconds since that pass's t=0."""
    out = []
    for rate, samples in kv_passes(part):
        out += [(rate, series) for series in kv_series(part.result, samples, t0=0.0)]
    return out


def online_kv_figure(parts: list[RunPart]) -> Figure | None:
    """One panel per backend/mode with KV samples in a sweep; None where none has any."""
    panels = [(part, lines) for part in parts if part.summary.sweep and part.result and (lines := rate_series(part))]
    if not panels:
        return None
    fig = new_figure(figsize=(9, 3.0 * len(panels) + 0.8), layout="constrained")
    for ax, (part, lines) in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels):
        colors: dict[str | float, str] = {}
        for rate, series in lines:
            label = "_nolegend_" if rate in colors else rate_label(rate)
            line = draw_line(ax, dataclasses.replace(series, label=label), 0.0, color=colors.get(rate))
            colors.setdefault(rate, line.get_color())
        _pool_share_axis(ax, part)
        older = len(colors) < len(part.summary.sweep)  # a run written before every pass kept its samples
        title = f"{part.summary.label}: KV blocks in use at each offered rate"
        ax.set_title(title + (" (this run kept its last pass's only)" if older else ""), loc="left", fontsize=10)
        ax.set_xlabel("seconds since that rate's timed pass started (t=0)", fontsize=8)
        ax.set_ylabel("KV blocks in use, MiB (engine)", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="offered rate", title_fontsize=7)
    fig.suptitle("KV-cache usage over each offered rate's timed pass (online serving)")
    return fig


def _pool_share_axis(ax, part: RunPart) -> None:
    """A right-hand axis in % of the pool's usable blocks (D), where the engine reports them."""
    usable, block_bytes = (part.result.engine or {}).get("usable_blocks"), kv_block_bytes(part.result.engine)
    if not usable or not block_bytes:
        return
    pool_mib = usable * block_bytes / MIB
    share = ax.secondary_yaxis("right", functions=(lambda m: 100 * m / pool_mib, lambda p: p * pool_mib / 100))
    share.set_ylabel("% of the pool (D)", fontsize=8)
