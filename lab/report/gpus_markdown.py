"""report.md's sections about the GPUs: energy per output token (every run), and, where a backend/mode
used several GPUs, its memory and KV pool per GPU.

Numbers come from summary.json (`lab.experiments.merge`): `energy` (`lab.accounting.energy`),
`memory.per_gpu` and `memory.allocator_per_rank` (NVML through the collector, the torch allocator in
each rank), and vLLM's own KV pool (`engine`).
"""

from __future__ import annotations

from tabulate import tabulate

from lab.records import RunSummary
from lab.report.format import fmt, mib


def energy_section(runs: list[RunSummary]) -> list[str]:
    """'## Energy': joules per output token of each backend/mode's timed pass, or n/a with the reason."""
    rows, missing = [], []
    for run in runs:
        energy = run.energy
        if not energy or not energy.get("available"):
            reason = (energy or {}).get("reason") or "not recorded (a run from before the lab measured energy)"
            missing.append(f"- {run.label}: n/a: {reason}")
            continue
        per_gpu = energy["per_gpu"]
        rows.append(
            [
                run.label,
                ", ".join(str(g) for g in energy["gpus"]),
                fmt(energy["seconds"], 3),
                fmt(energy["energy_j"], 1),
                fmt(energy["j_per_output_token"], 4),
                fmt(energy["mean_power_w"], 0),
                " / ".join(fmt(g["mean_power_w"], 0) for g in per_gpu),
                " / ".join(fmt(g["peak_power_w"], 0) for g in per_gpu),
                " / ".join(fmt(g["mean_util_pct"], 0) for g in per_gpu),
                energy["method"],
            ]
        )
    lines = [
        "## Energy",
        "",
        "The timed pass's energy over the GPUs each backend/mode used: NVML's total-energy counter of each "
        "GPU, read by the backend process right before the pass's clock starts and right after its last "
        "reading (exact to the counter's own update period, given below). Joules per output token = "
        "energy / output tokens of the pass. Mean power = energy / pass seconds; peak power and "
        "utilisation: the collector's NVML samples inside the pass. Per-GPU columns list the GPUs in order.",
        "",
    ]
    if rows:
        lines.append(
            tabulate(
                rows,
                headers=[
                    "backend/mode",
                    "GPUs",
                    "pass s",
                    "energy J",
                    "J per output token",
                    "mean power W (sum)",
                    "mean power W per GPU",
                    "peak power W per GPU",
                    "mean util % per GPU",
                    "source",
                ],
                tablefmt="github",
                disable_numparse=True,
            )
        )
        updates = [r.energy.get("counter_update_ms") for r in runs if r.energy and r.energy.get("available")]
        known = [u for u in updates if u is not None]
        if known:
            lines += ["", f"The counter changed every {fmt(min(known), 0)}-{fmt(max(known), 0)} ms in the samples."]
    if missing:
        lines += ([""] if rows else []) + missing
    return lines


def used_several_gpus(run: RunSummary) -> bool:
    return len(run.memory.get("gpus_used") or ()) > 1 or (run.engine or {}).get("tensor_parallel_size", 1) > 1


def per_gpu_section(runs: list[RunSummary]) -> list[str]:
    """'## Memory per GPU' where some backend/mode used several GPUs; nothing otherwise."""
    several = [r for r in runs if used_several_gpus(r)]
    if not several:
        return []
    rows = []
    for run in several:
        whole = (run.memory.get("per_gpu") or {}).get("whole_process") or {}
        timed = (run.memory.get("per_gpu") or {}).get("generate_phase") or {}
        engine = run.engine or {}
        for gpu in run.memory.get("gpus_used") or []:
            own, in_pass = whole.get(str(gpu)) or {}, timed.get(str(gpu)) or {}
            rows.append(
                [
                    run.label,
                    gpu,
                    fmt(own.get("nvml_tree_peak_mib"), 0),
                    fmt(in_pass.get("nvml_tree_peak_mib"), 0),
                    fmt(own.get("nvml_device_peak_mib"), 0),
                    fmt(mib(engine.get("kv_pool_bytes")), 0),
                    fmt(in_pass.get("mean_gpu_util_pct"), 0),
                ]
            )
    pools = [
        f"- {r.label}: KV pool {fmt(mib(r.engine.get('kv_pool_bytes')), 0)} MiB on each of "
        f"{r.engine.get('tensor_parallel_size')} {'GPUs' if r.device != 'cpu' else 'CPU workers'} = "
        f"{fmt(mib(r.engine.get('kv_pool_bytes_total')), 0)} MiB "
        f"in total, {fmt(r.engine.get('kv_tokens_capacity'))} tokens, {fmt(r.engine.get('kv_heads_per_gpu'))} KV "
        "heads per GPU"
        for r in several
        if (r.engine or {}).get("kv_pool_bytes_total")
    ]
    ranks = [
        f"- {r.label}: torch allocator peak allocated per rank: "
        + ", ".join(
            f"rank {k}: {fmt(mib((m or {}).get('peak_allocated_bytes')), 0)} MiB"
            for k, m in enumerate(r.memory["allocator_per_rank"])
        )
        for r in several
        if r.memory.get("allocator_per_rank")
    ]
    return [
        "## Memory per GPU",
        "",
        "Backend/modes split over several GPUs (`--tensor-parallel-size`): each GPU's own peaks. NVML, read by "
        "the collector: the backend's processes on that GPU (vLLM's worker, or the torchrun rank) and the "
        "whole GPU. vLLM's pool holds every block on every GPU, for that GPU's share of the KV heads. The "
        "Memory table above sums the GPUs; the torch allocator's figures there are rank 0's (each rank's below).",
        "",
        per_gpu_table(rows)
        if rows
        else "No NVML figures per GPU: no GPU held by these backend/modes (their ranks or workers ran on the CPU).",
        *([""] + pools + ranks if pools or ranks else []),
    ]


def per_gpu_table(rows: list[list]) -> str:
    return tabulate(
        rows,
        headers=[
            "backend/mode",
            "GPU",
            "NVML process peak MiB",
            "NVML process peak in timed pass MiB",
            "NVML whole GPU peak MiB",
            "vLLM KV pool MiB (engine)",
            "mean util % in timed pass",
        ],
        tablefmt="github",
        disable_numparse=True,
    )
