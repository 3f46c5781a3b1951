"""report.md's KV-cache sections: where the memory went (beside the paper's Figure 2), and the decode
bandwidth, from the accounting's entries."""

from __future__ import annotations

from tabulate import tabulate

from lab import paper
from lab.accounting.bandwidth import DecodeBandwidth
from lab.accounting.breakdown import DETAILS, TOLERANCE
from lab.accounting.continuous import CHECK_KIND as CONTINUOUS_CHECK
from lab.config import EngineSettings
from lab.records import BreakdownEntry
from lab.report.continuous import check_line as continuous_check_line
from lab.report.format import MIB, pct


def breakdown_section(engine: EngineSettings, entries: list[BreakdownEntry]) -> list[str]:
    """The "KV-cache memory breakdown" section."""
    lines = ["", "## KV-cache memory breakdown", ""]
    if not entries:
        return lines + ["No backend/mode recorded the cache figures this section needs.", ""]
    lines += [
        "Where the KV-cache memory each approach held went, in the form of the PagedAttention paper's Figure 2, "
        "averaged over the timed pass (each step weighted by its duration). Shares of the slots held, summing to "
        "100%: token states (the requests' own tokens), reservation (empty, to be filled by the request's own "
        "later tokens), internal fragmentation (never to hold the request's tokens: left padding, tokens a finished "
        "sequence keeps generating in its batch, a reservation's tail past the request's end, a last block's "
        "unreachable slots), external fragmentation (allocator reserved but unallocated, CUDA only; n/m: not "
        "measurable here) and other (held beyond what the arithmetic explains). The free blocks of the paged pools "
        "(vLLM, hf/continuous) are held by no request and in no share: a pool is reserved up front whatever the "
        "load (last column). Definitions: lab/accounting/kv.py and lab/accounting/continuous.py.",
        "",
        conditions_line(engine, entries),
        "",
        breakdown_table(entries),
        "",
        "Arithmetic against measurement:",
        "",
    ]
    return lines + check_lines(entries) + [""]


def conditions_line(engine: EngineSettings, entries: list[BreakdownEntry]) -> str:
    bpt = next((e.kv_bytes_per_token for e in entries if e.kv_bytes_per_token), None)
    return (
        f"Conditions: model `{engine.model}` ({bpt:,} KV bytes per token), workload `{engine.workload}`, "
        f"hf batch size {engine.batch_size}, vLLM block size {engine.block_size}, device "
        f"{engine.device}; outputs fixed (EOS ignored), prefix caching "
        f"{'on' if engine.enable_prefix_caching else 'off'}. The paper: {paper.FIG2_CONDITIONS}."
        if bpt
        else ""
    )


def breakdown_table(entries: list[BreakdownEntry]) -> str:
    rows = []
    for e in entries:
        s, d = e.shares, e.internal_detail_shares
        detail = " / ".join(pct(d[k]) for k in DETAILS)
        external = pct(s["external_fragmentation"]) if e.external_fragmentation_measured else "n/m"
        rows.append(
            [
                f"{e.run} (this run)",
                pct(s["token_states"]),
                pct(s["reservation"]),
                f"{pct(s['internal_fragmentation'])} ({detail})",
                external,
                pct(s["other"]),
                f"{e.mean_slots_held:,.0f}" if e.mean_slots_held is not None else "-",
                pct(e.pool_occupancy_mean),
            ]
        )
    for name, token_states_pct in paper.FIG2_TOKEN_STATES_PCT.items():
        rows.append([f"{name} (paper, Fig. 2)", f"{token_states_pct:.1f}", "-", "-", "-", "-", "-", "-"])
    return tabulate(
        rows,
        headers=[
            "backend/mode",
            "token states %",
            "reservation %",
            "internal fragmentation % (padding / finished / unused tail / block tail)",
            "external fragmentation %",
            "other %",
            "mean KV slots held",
            "paged pool in use %",
        ],
        tablefmt="github",
    )


def check_lines(entries: list[BreakdownEntry]) -> list[str]:
    by_kind = {"vLLM blocks": _vllm_check_line, CONTINUOUS_CHECK: continuous_check_line}
    return [by_kind.get(e.checks["kind"], _hf_check_line)(e) for e in entries]


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


def bandwidth_section(entries: list[DecodeBandwidth], peak: float | None, gpu: str) -> list[str]:
    """The "Decode bandwidth" section; `peak` (GB/s) and `gpu` (its name, or why there is no peak)."""
    rows = [
        [
            e.run,
            f"{e.decode_steps:,}",
            f"{e.steps_per_s:,.1f}",
            f"{e.weight_bytes_per_step / MIB:,.0f}",
            f"{e.kv_bytes_per_step_mean / MIB:,.1f}",
            f"{e.achieved_gb_s:,.1f}",
            "-" if e.share_of_peak is None else f"{e.share_of_peak:.1%}",
        ]
        for e in entries
    ]
    peak_line = (
        f"Peak: {peak:,.0f} GB/s, the {gpu}'s theoretical figure from NVML (2 x max memory clock x bus width)."
        if peak
        else f"No share of peak: {gpu}."
    )
    return [
        "## Decode bandwidth",
        "",
        "Bytes a decode step must read (weights once, plus the K/V of every attended slot) x decode steps per "
        "second: a lower bound of the memory traffic, as a share of the GPU's peak. hf attends over its padding "
        "(and, with the static cache, over every slot); vLLM and hf/continuous over each request's own tokens. "
        + peak_line,
        "",
        tabulate(
            rows,
            headers=[
                "backend/mode",
                "decode steps",
                "steps/s",
                "weights read/step MiB",
                "KV read/step MiB (mean)",
                "achieved GB/s",
                "share of peak",
            ],
            tablefmt="github",
        ),
    ]
