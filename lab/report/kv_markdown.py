"""report.md's KV-cache sections: where the memory went (beside the paper's Figure 2), and the decode
bandwidth, from the accounting's entries."""

from __future__ import annotations

from tabulate import tabulate

from lab import paper
from lab.accounting.bandwidth import DecodeBandwidth
from lab.accounting.breakdown import DETAILS, TOLERANCE
from lab.config import EngineSettings
from lab.records import BreakdownEntry
from lab.report.continuous import check_line as continuous_check_line
from lab.report.format import MIB, pct


def breakdown_section(engine: EngineSettings, entries: list[BreakdownEntry]) -> list[str]:
    """The "KV-cache memory breakdown" section: shares of D and shares of the memory held."""
    lines = ["", "## KV-cache memory breakdown", ""]
    if not entries:
        return lines + ["No backend/mode recorded the cache figures this section needs.", ""]
    lines += [
        "Where the KV-cache memory each approach set aside went, in the form of the PagedAttention paper's Figure 2, "
        "per step and averaged over the timed pass (each step weighted by how long its state lasted). Token states: "
        "the requests' own tokens, prompts already scheduled included; reservation: empty, to be filled by the "
        "request's own later tokens (a paged engine's look-ahead slot included); internal fragmentation: never to "
        "hold the request's tokens (left padding, tokens a finished sequence keeps generating in its batch, a "
        "reservation's tail past the request's end, a last block's unreachable slots); external fragmentation & "
        "others: a paged pool's free blocks, and for the hf caches only allocator memory traced to the KV tensors; "
        "residual: held beyond what the engine's own figures explain (above 1% the run fails its check). "
        "Definitions: lab/accounting/kv.py and lab/accounting/paged.py.",
        "",
        conditions_line(engine, entries),
        "",
        "### Shares of D, the memory each approach set aside for KV",
        "",
        "D: a paged engine's KV pool (its usable blocks: KV budget, `--kv-cache-memory`), for the hf caches their "
        "cache tensors. A paged pool the workload never filled shows its unused budget as free blocks: such a run "
        "is labelled unsaturated and is not the paper's comparison.",
        "",
        budget_table(entries),
        "",
        "### Shares of the KV memory held",
        "",
        "The same slot-seconds without a paged pool's free blocks: the KV tensors' memory that held or awaited "
        "a request's tokens. The torch allocator's slack beside them (peak reserved - peak allocated, CUDA) is not "
        "KV and is given in MiB only.",
        "",
        held_table(entries),
        "",
        "Arithmetic against measurement:",
        "",
    ]
    return lines + check_lines(entries) + [""]


def conditions_line(engine: EngineSettings, entries: list[BreakdownEntry]) -> str:
    bpt = next((e.kv_bytes_per_token for e in entries if e.kv_bytes_per_token), None)
    return (
        f"Conditions: model `{engine.model}` ({bpt:,} KV bytes per token), workload `{engine.workload}`, "
        f"hf batch size {engine.batch_size}, paged block size {engine.block_size}, KV pool "
        + (f"{engine.kv_cache_memory_bytes:,} B" if engine.kv_cache_memory_bytes else "by the engines' rule")
        + (
            f" (--kv-cache-memory workload:{engine.kv_cache_workload_share:g})"
            if engine.kv_cache_workload_share is not None
            else ""
        )
        + f", device {engine.device}; outputs fixed (EOS ignored), prefix caching "
        f"{'on' if engine.enable_prefix_caching else 'off'}. The paper: {paper.FIG2_CONDITIONS}."
        if bpt
        else ""
    )


def saturation_label(e: BreakdownEntry) -> str:
    """Whether the workload filled D: only a paged pool has a budget to fill."""
    s = e.saturation
    if not s:
        return "no budget beyond the cache"
    peak = f"peak {pct(s['pool_occupancy_peak'])}% in use"
    return f"saturated ({peak})" if s["saturated"] else f"unsaturated ({peak})"


def budget_table(entries: list[BreakdownEntry]) -> str:
    rows = []
    for e in entries:
        s = e.budget_shares or e.shares
        rows.append(
            [
                f"{e.run} (this run)",
                e.budget or "-",
                pct(s["token_states"]),
                pct(s["reservation"]),
                pct(s["internal_fragmentation"]),
                pct(s["external_fragmentation"]),
                pct(s["other"]),
                saturation_label(e),
            ]
        )
    for name, shares in paper.FIG2_SHARES_PCT.items():
        paper_row = [f"{shares[c]:.1f}" if c in shares else "-" for c in paper.FIG2_CATEGORIES]
        rows.append([f"{name} (paper, Fig. 2)", "its KV cache", *paper_row[:3], paper_row[3], "-", "-"])
    return tabulate(
        rows,
        headers=[
            "backend/mode",
            "D (which memory)",
            "token states %",
            "reservation %",
            "internal fragmentation %",
            "external fragmentation & others %",
            "residual %",
            "workload fills D?",
        ],
        tablefmt="github",
        disable_numparse=True,
    )


def held_table(entries: list[BreakdownEntry]) -> str:
    rows = []
    for e in entries:
        s, d = e.shares, e.internal_detail_shares
        detail = " / ".join(pct(d[k]) for k in DETAILS)
        rows.append(
            [
                e.run,
                pct(s["token_states"]),
                pct(s["reservation"]),
                f"{pct(s['internal_fragmentation'])} ({detail})",
                pct(s["external_fragmentation"]),
                pct(s["other"]),
                f"{e.mean_kv_bytes_held / MIB:,.1f}" if e.mean_kv_bytes_held is not None else "-",
                f"{e.allocator_slack_bytes / MIB:,.1f}" if e.allocator_slack_bytes is not None else "-",
            ]
        )
    return tabulate(
        rows,
        headers=[
            "backend/mode",
            "token states %",
            "reservation %",
            "internal fragmentation % (padding / finished / unused tail / block tail)",
            "external fragmentation % (allocator, traced to KV)",
            "residual %",
            "mean KV MiB held",
            "allocator slack MiB (torch, not KV)",
        ],
        tablefmt="github",
        disable_numparse=True,
    )


def check_lines(entries: list[BreakdownEntry]) -> list[str]:
    lines = []
    for e in entries:
        kind = e.checks["kind"]
        if kind == "paged pool":
            lines.append(_paged_check_line(e))
            if "tables" in e.checks:
                lines.append(continuous_check_line(e))
        else:
            lines.append(_vllm_check_line(e) if kind == "vLLM blocks" else _hf_check_line(e))
        lines.append(_residual_line(e))
    return lines


def _residual_line(e: BreakdownEntry) -> str:
    r = e.checks["residual"]
    verdict = "ok" if r["ok"] else f"FAILS: above {r['limit']:.0%}"
    return (
        f"- {e.run}: residual {100 * r['share_of_held']:.2f}% of the KV memory held "
        f"({100 * r['share_of_budget']:.2f}% of D): {verdict}. Figures: {e.method}"
    )


def _paged_check_line(e: BreakdownEntry) -> str:
    c = e.checks["pool"]
    text = (
        f"- {e.run}: blocks the pool counts as used vs blocks in the running requests' tables, at each of "
        f"{c['steps']:,} steps: {c['steps_with_residual']} steps differ, by at most {c['max_residual_blocks']} blocks"
    )
    if c.get("steps_with_shared_blocks"):
        text += (
            f"; at {c['steps_with_shared_blocks']:,} steps the tables hold more, by at most {c['max_shared_blocks']} "
            "blocks: blocks shared between requests (prefix cache on), which the pool counts once; the "
            "shares above, built from each request's own table, count such a block once for every request "
            "holding it: the memory actually held is the pool's own count"
        )
    return text


def _vllm_check_line(e: BreakdownEntry) -> str:
    c = e.checks
    text = (
        f"- {e.run}: blocks in use (scheduler) vs {c['formula']}, rebuilt from the records: "
        f"{c['agree']}/{c['total']} steps within {TOLERANCE:.0%}, largest difference {100 * c['max_off']:.1f}%, "
        f"time-averaged {100 * c['time_averaged_off']:.2f}%; tokens stored "
        f"{'match' if c['tokens_stored_match'] else 'do not match'} the backend's own count"
    )
    if c["reasons"]:
        text += f". Where they differ by more than {TOLERANCE:.0%}: " + "; ".join(c["reasons"])
    return text


def _hf_check_line(e: BreakdownEntry) -> str:
    c = e.checks
    text = (
        f"- {e.run}: cache tensors' bytes vs {c['formula']}: {c['agree']}/{c['total']} batches within {TOLERANCE:.0%}"
    )
    bad = [b for b in c["batches"] if not b["agrees"]]
    if bad:
        text += "; differ: " + ", ".join(
            f"batch {b['batch']} {b['cache_bytes']} B vs {b['arithmetic_bytes']} B "
            f"({b['slots_per_sequence']} vs {b['arithmetic_slots_per_sequence']} slots per sequence)"
            for b in bad
        )
    alloc = [b for b in c["batches"] if "allocator_peak_minus_weights_bytes" in b]
    if alloc:
        ratio = max(b["allocator_peak_minus_weights_bytes"] / b["cache_bytes"] for b in alloc if b["cache_bytes"])
        text += (
            f"; allocator peak minus weights is up to {ratio:.2f}x the cache bytes "
            "(the rest: activations, logits, the dynamic cache's copies as it grows)"
        )
    return text


def bandwidth_section(
    entries: list[DecodeBandwidth], peak: float | None, gpu: str, omitted: dict[str, str] | None = None
) -> list[str]:
    """The "Decode bandwidth" section; `peak` (GB/s) and `gpu` (its name, or why there is no peak); `omitted`:
    backend/mode -> why it has no row."""
    rows = [
        [
            e.run,
            f"{e.decode_steps:,}",
            f"{e.steps_per_s:,.1f}",
            f"{e.weight_bytes_per_step / MIB:,.0f}",
            f"{_mib(e.useful_kv_bytes_per_step_mean)} / {_mib(e.kv_bytes_per_step_mean)}",
            f"{_num(e.useful_gb_s)} / {_num(e.achieved_gb_s)}",
            f"{_share(e.useful_share_of_peak)} / {_share(e.share_of_peak)}",
        ]
        for e in entries
    ]
    peak_line = (
        f"Peak: {peak:,.0f} GB/s, the {gpu}'s theoretical figure from NVML (2 x max memory clock x bus width)."
        if peak
        else f"No share of peak: {gpu}."
    )
    table = (
        tabulate(
            rows,
            headers=[
                "backend/mode",
                "decode steps",
                "steps/s",
                "weights read/step MiB",
                "KV read/step MiB (mean): useful / total",
                "achieved GB/s: useful / total",
                "share of peak: useful / total",
            ],
            tablefmt="github",
            disable_numparse=True,
        )
        if rows
        else "No backend/mode with its decode steps counted."
    )
    return [
        "## Decode bandwidth",
        "",
        "Bytes a decode step must read x decode steps per second, a lower bound of the memory traffic, as a share "
        "of the GPU's peak; each figure twice, counted alike for every backend: useful (the weights once, plus each "
        "sequence's own tokens, for the sequences still generating; a request's samples or beams each count) / "
        "total (the weights plus every slot the attention reads). hf attends over its padding, the sequences of a "
        "batch that finished, and with the static cache every slot; vLLM and hf/continuous over each sequence's "
        "own tokens. " + peak_line,
        "",
        table,
        *([""] + [f"- {run}: {why}" for run, why in (omitted or {}).items()] if omitted else []),
    ]


def _mib(n_bytes: float | None) -> str:
    return "-" if n_bytes is None else f"{n_bytes / MIB:,.1f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
