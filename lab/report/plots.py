"""The run folder's plots (matplotlib Figure objects, PNG), drawn from the loaded run and the analyses.

- memory.png: memory over time per backend/mode, every line labelled with its source (lab.report.memory_plot).
- gpu_memory.png: each GPU's memory over time, for backend/modes split over several GPUs (lab.report.gpu_plot).
- kv_breakdown.png: where the KV memory goes, stacked bars in the form of the PagedAttention paper's
  Figure 2: shares of D (the paper's own bars, lab.paper, beside this run's) and shares of the memory
  held (lab.accounting.breakdown).
- online.png: normalized latency against the offered request rate, the paper's Figure 12 (lab.report.online_plot).
- online_kv.png: each offered rate's KV blocks in use over its own timed pass (lab.report.online_kv_plot).
- performance.png: output tokens/s (median and the passes' range), latency from arrival (TTFT,
  queueing, service, E2E) and per token (TPOT, ITL), p50 and p99, per backend/mode.

`write_plots` draws what the data allows and returns the plots index (also written as plots.json):
for each plot, its file or the reason it was skipped, so the reports can say so. Each `*_figure`
function returns the Figure (tests count its series) or None with nothing to draw.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from lab import paper
from lab import run_folder as rf
from lab.records import BreakdownEntry, RunSummary
from lab.report.figure import new_figure
from lab.report.gpu_plot import gpu_memory_figure
from lab.report.memory_plot import memory_figure, plot_parts
from lab.report.online_kv_plot import online_kv_figure
from lab.report.online_plot import online_figure
from lab.report.run_view import RunView

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CATEGORY_COLORS = {
    "token states": "#2a9d8f",
    "reservation": "#e9c46a",
    "internal fragmentation": "#f4a261",
    "external fragmentation & other": "#e76f51",
    "not broken down": "#bdbdbd",
}
# This lab's five categories (lab.accounting.kv) onto the paper's four.
PAPER_CATEGORY = {
    "token_states": "token states",
    "reservation": "reservation",
    "internal_fragmentation": "internal fragmentation",
    "external_fragmentation": "external fragmentation & other",
    "other": "external fragmentation & other",
}


LATENCY_KEYS = ("ttft_s", "queue_s", "service_s", "e2e_s")  # from arrival
PER_TOKEN_KEYS = ("tpot_s", "itl_s")
LATENCY_NAMES = {"ttft_s": "TTFT", "queue_s": "queueing", "service_s": "service", "e2e_s": "E2E", "tpot_s": "TPOT"}
LATENCY_NAMES["itl_s"] = "ITL"


def performance_figure(runs: list[RunSummary]) -> Figure | None:
    """Output tokens/s per backend/mode (median, the passes' min-max as an error bar); latency from
    arrival (TTFT, queueing, service, E2E); per-token latency (TPOT, ITL). p50 solid, p99 light, log scale."""
    if not runs:
        return None
    labels = [r.label + ("" if r.ok else "\n(failed)") for r in runs]
    fig = new_figure(figsize=(14, 4.4), layout="constrained")
    left, middle, right = fig.subplots(1, 3, width_ratios=[1, 2, 1.4])
    x = list(range(len(runs)))
    rates = [r.metric("output_tokens_per_s") or 0 for r in runs]
    spans = [_pass_span(r, "output_tokens_per_s") for r in runs]
    errors = [[max(0.0, v - lo) for v, (lo, _) in zip(rates, spans)]]
    errors.append([max(0.0, hi - v) for v, (_, hi) in zip(rates, spans)])
    bars = left.bar(x, rates, color="#457b9d", yerr=errors, capsize=3)
    left.bar_label(bars, fmt="%.0f", fontsize=8)
    left.set_xticks(x, labels, fontsize=8, rotation=30, ha="right")
    left.set_ylabel("output tokens/s (median of the timed passes)")
    left.set_title("Throughput (bar: passes' min-max)", loc="left")
    _latency_bars(middle, runs, x, labels, LATENCY_KEYS, "Latency from arrival (p50 solid, p99 light)")
    _latency_bars(right, runs, x, labels, PER_TOKEN_KEYS, "Per token: TPOT, ITL")
    for ax in (left, middle, right):
        ax.grid(axis="y", alpha=0.3)
    return fig


def _pass_span(run: RunSummary, key: str) -> tuple[float, float]:
    """(min, max) of `key` over the run's passes; the median twice where it has one pass."""
    values = [m.get(key) for m in run.pass_metrics or [] if m.get(key) is not None]
    median = run.metric(key) or 0
    return (min(values), max(values)) if values else (median, median)


def _latency_bars(ax, runs: list[RunSummary], x: list[int], labels: list[str], names: tuple[str, ...], title: str):
    keys = [f"{name}_{p}" for name in names for p in ("p50", "p99")]
    width = 0.8 / len(keys)
    colors = ("#1d3557", "#a8dadc", "#e9c46a", "#e63946")
    for i, key in enumerate(keys):
        ax.bar(
            [xi - 0.4 + width * (i + 0.5) for xi in x],
            [r.metric(key) or 0 for r in runs],
            width,
            label=f"{LATENCY_NAMES[names[i // 2]]} {key[-3:]}",
            color=colors[(i // 2) % len(colors)],
            alpha=1.0 if i % 2 == 0 else 0.55,
        )
    ax.set_xticks(x, labels, fontsize=8, rotation=30, ha="right")
    if any(r.metric(k) for r in runs for k in keys):
        ax.set_yscale("log")
    ax.set_ylabel("seconds (log scale)")
    ax.set_title(title, loc="left", fontsize=9)
    ax.legend(fontsize=7, ncols=2)


def paper_categories_pct(shares: dict[str, float | None]) -> dict[str, float]:
    """Shares of a breakdown view on the paper's four categories, in percent (unmeasured shares left out)."""
    out: dict[str, float] = {}
    for key, share in shares.items():
        if share is not None:
            category = PAPER_CATEGORY[key]
            out[category] = out.get(category, 0.0) + float(share)
    return {category: share * 100 for category, share in out.items()}


def kv_breakdown_figure(budget: dict[str, dict[str, float]], held: dict[str, dict[str, float]]) -> Figure | None:
    """Stacked bars, percent per category. Left: shares of D, the paper's Figure 2 bars then this run's
    (`budget`: backend/mode -> percent by the paper's category); right: shares of the memory held."""
    budget, held = {k: v for k, v in budget.items() if v}, {k: v for k, v in held.items() if v}
    if not budget:
        return None
    left_bars = {f"paper: {k}": v for k, v in paper.FIG2_SHARES_PCT.items()} | {
        f"this run: {k}": v for k, v in budget.items()
    }
    fig = new_figure(figsize=(max(9, 1.0 * (len(left_bars) + len(held)) + 3), 4.8), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[len(left_bars), max(len(held), 1)], sharey=True)
    _stacked(left, left_bars)
    left.axvline(len(paper.FIG2_SHARES_PCT) - 0.5, color="black", lw=0.8)
    left.set_ylabel("% of KV-cache memory")
    left.set_title(
        "Shares of D, the memory set aside for KV (paper: Kwon et al. 2023, Fig. 2;\n"
        "vLLM's 3.7% rest not broken down there)",
        loc="left",
        fontsize=9,
    )
    _stacked(right, held)
    right.set_title("Shares of the KV memory held\n(a paged pool's free blocks left out)", loc="left", fontsize=9)
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _stacked(ax, bars: dict[str, dict[str, float]]) -> None:
    x = list(range(len(bars)))
    bottom = [0.0] * len(bars)
    for category in paper.FIG2_CATEGORIES + ("not broken down",):
        values = [
            v.get(category, 0.0) if category != "not broken down" else max(0.0, 100 - sum(v.values()))
            for v in bars.values()
        ]
        if category == "not broken down" and max(values, default=0.0) < 0.5:
            continue
        hatch = "//" if category == "not broken down" else None
        drawn = ax.bar(x, values, 0.7, bottom=bottom, label=category, color=CATEGORY_COLORS[category], hatch=hatch)
        ax.bar_label(drawn, labels=[f"{v:.1f}" if v >= 4 else "" for v in values], label_type="center", fontsize=7)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(x, [k.replace(": ", ":\n") for k in bars], fontsize=8)
    ax.set_ylim(0, 100)


# -- writing ---------------------------------------------------------------------------------------


def write_plots(view: RunView, breakdown: list[BreakdownEntry]) -> list[dict]:
    """Draw every plot the run's data allows; write plots.json; return its entries.

    Entry: {"name", "title", "file"} for a drawn plot, {"name", "title", "skipped": reason} otherwise.
    """
    budget = {e.run: paper_categories_pct(e.budget_shares or e.shares) for e in breakdown}
    held = {e.run: paper_categories_pct(e.shares) for e in breakdown}
    entries = [
        _save(
            view.folder,
            "memory",
            "Memory over time",
            memory_figure(plot_parts(view)),
            "no collector samples in this run",
        ),
        _save(
            view.folder,
            "gpu_memory",
            "Memory per GPU over time",
            gpu_memory_figure(plot_parts(view)),
            "no backend/mode used several GPUs (memory.png shows the one it used)",
        ),
        _save(
            view.folder,
            "performance",
            "Throughput and latency",
            performance_figure(view.runs),
            "no backend/mode in this run",
        ),
        _save(
            view.folder,
            "online",
            "Normalized latency against request rate (Figure 12)",
            online_figure(view.runs),
            "no backend/mode ran at a finite request rate (--request-rate)",
        ),
        _save(
            view.folder,
            "online_kv",
            "KV-cache usage over each offered rate's timed pass",
            online_kv_figure([view.part(run) for run in view.runs]),
            "no paged backend/mode kept KV samples at a finite request rate (--request-rate)",
        ),
        _save(
            view.folder,
            "kv_breakdown",
            "KV-cache memory breakdown beside the paper's Figure 2",
            kv_breakdown_figure(budget, held),
            "no shares in the KV breakdown" if breakdown else "the KV breakdown found no data in this run",
        ),
    ]
    rf.write_json(view.folder.plots_index, {"plots": entries})
    return entries


def _save(folder: rf.RunFolder, name: str, title: str, fig: Figure | None, reason: str) -> dict:
    path = folder.plot(name)
    if fig is None:
        path.unlink(missing_ok=True)  # a regenerated report must not show a stale plot
        return {"name": name, "title": title, "skipped": reason}
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    rf.atomic_write(path, png.getvalue())
    return {"name": name, "title": title, "file": path.name}
