"""capacity.md and capacity.png: a capacity run's arithmetic, measured points and curve, beside the
paper's Figure 13a.

Renders capacity.json's data (`lab.experiments.capacity.capacity_data`); computes nothing.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from tabulate import tabulate

from lab import paper
from lab import run_folder as rf
from lab.report.cut_markdown import cut_lines
from lab.report.figure import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CAPACITY_PLOT = "capacity"


def _num(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def render_capacity(data: dict, plot_drawn: bool = False) -> str:
    c, a = data["conditions"], data["arithmetic"]
    by_point = {p["point"]: p for p in data["measured"]}
    padded = by_point.get(f"hf-batched-b{a['padded']['concurrency']}")
    static = by_point.get(f"hf-static-cache-b{a['static']['concurrency']}")
    vllm = by_point.get("vllm-offline-budget")
    continuous = by_point.get("hf-continuous-budget")
    fig13a = paper.FIG13A_MEAN_BATCHED
    rows = [
        [
            "static, max-length reservation",
            a["static"]["concurrency"],
            _measured(static),
            "Orca (Max)",
            f"{fig13a['Orca (Max)']:.2f}",
        ],
        ["hf/batched (dynamic, padded)", a["padded"]["concurrency"], _measured(padded), "-", "-"],
        [
            "vllm/offline (paged)",
            f"{a['paged']['concurrency']} (mean {_num(a['paged'].get('mean_running'))})",
            _measured(vllm),
            "vLLM",
            f"{fig13a['vLLM']:.2f}",
        ],
        [
            "hf/continuous (paged, transformers)",
            "same pool as vLLM, its own scheduler",
            _measured(continuous),
            "-",
            "-",
        ],
    ]
    lines = [
        "# KV-cache capacity under one budget",
        "",
        *cut_lines(data.get("cut"), "measured points"),
        f"Budget {c['kv_budget_bytes']:,} bytes for {c['budget_covers']}; model `{c['model']}` ({c['dtype']}, "
        f"{c['kv_bytes_per_token']:,} KV bytes per token); workload `{c['workload']}`, {c['requests']} requests, mean "
        f"{c['mean_prompt_tokens']:.1f} prompt + {c['mean_output_tokens']:.1f} output tokens; static reservation "
        f"{c['max_len']:,} tokens per request; vLLM block size {c['block_size']}. A concurrency equal to the number "
        "of requests is the workload's limit, not the budget's.",
        "",
        tabulate(
            rows,
            headers=[
                "approach",
                "arithmetic: concurrent requests",
                "measured: max / mean per step, output tokens/s",
                "paper analogue",
                "paper Fig. 13a mean batched",
            ],
            tablefmt="github",
        ),
        "",
        "Static max-length reservation is measured with hf/static-cache at that batch size, but transformers sizes "
        "its static cache to the call (padded prompt + longest output - 1), not to the maximum length: the "
        "measured point gives the throughput at that concurrency, not the reservation. Paper Fig. 13a "
        "(OPT-13B, ShareGPT): " + ", ".join(f"{k} {v:.2f}" for k, v in fig13a.items()) + ".",
    ]
    limits = a.get("paged_engine_limits")
    if limits:
        lines += [
            "",
            f"Paged simulation with the engine's limits (max_num_seqs {limits['max_num_seqs']}, "
            f"max_num_batched_tokens {limits['max_num_batched_tokens']}): max {limits['concurrency']}, "
            f"mean {_num(limits.get('mean_running'))} requests per step, {limits.get('preemptions', 0)} preemptions.",
        ]
    if data["curve"]:
        lines += [
            "",
            "## Throughput against concurrency",
            "",
            tabulate(
                [
                    [
                        r["approach"],
                        r["concurrency"],
                        r["status"],
                        _num(r["mean_running"]),
                        _num(r["output_tokens_per_s"]),
                    ]
                    for r in data["curve"]
                ],
                headers=[
                    "approach",
                    "batch size / max_num_seqs",
                    "status",
                    "mean requests per step",
                    "output tokens/s",
                ],
                tablefmt="github",
            ),
        ]
    if plot_drawn:
        lines += ["", f"![Throughput against concurrency]({CAPACITY_PLOT}.png)"]
    return "\n".join(lines) + "\n"


def capacity_figure(data: dict) -> Figure | None:
    """Output tokens/s against concurrency (hf batch size, vLLM max_num_seqs), one line per approach; None
    without a measured curve point."""
    by_approach: dict[str, list[tuple[int, float]]] = {}
    for row in data["curve"]:
        if row["status"] == "ok" and row.get("output_tokens_per_s"):
            by_approach.setdefault(row["approach"], []).append((row["concurrency"], row["output_tokens_per_s"]))
    if not by_approach:
        return None
    fig = new_figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    for approach, points in sorted(by_approach.items()):
        points.sort()
        ax.plot([c for c, _ in points], [t for _, t in points], "o-", label=approach)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency: hf batch size / vLLM max_num_seqs (log scale)")
    ax.set_ylabel("output tokens/s (timed pass)")
    c = data["conditions"]
    ax.set_title(f"Throughput against concurrency, KV budget {c['kv_budget_bytes'] / 2**20:,.0f} MiB", loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def write_capacity_plot(folder: rf.RunFolder, data: dict) -> bool:
    """capacity.png where the curve has points; whether it was drawn."""
    fig = capacity_figure(data)
    if fig is None:
        return False
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    rf.atomic_write(folder.plot(CAPACITY_PLOT), png.getvalue())
    return True


def _measured(point: dict | None) -> str:
    if point is None:
        return "not measured"
    if point.get("status") != "ok":
        return f"{point.get('status')}: {(point.get('error') or '')[:80]}"
    text = f"{point.get('max_running')} / {_num(point.get('mean_running'))}, {_num(point.get('output_tokens_per_s'))}"
    if point.get("max_cache_bytes") is not None:
        text += f" (cache {point['max_cache_bytes']:,} B)"
    return text
