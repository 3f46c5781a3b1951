"""report.md: the run's conditions, tables (tabulate) and observations, from the analyses' data.

Every number printed here is read from the run folder (`RunView`) or computed by an analysis
(`lab.report.analyses.Analyses`); nothing is typed in and nothing is computed twice.
"""

from __future__ import annotations

from tabulate import tabulate

from lab.records import RunSummary
from lab.report.analyses import Analyses
from lab.report.continuous import settings_lines
from lab.report.cut_markdown import cut_lines
from lab.report.format import fmt, mib, version
from lab.report.gc_markdown import frozen_note, gc_section
from lab.report.gpus_markdown import energy_section, per_gpu_section
from lab.report.host_cpu_markdown import host_cpu_section
from lab.report.kv_markdown import bandwidth_section, breakdown_section
from lab.report.online_markdown import online_section
from lab.report.online_memory_markdown import breakdown_rate_note
from lab.report.run_view import RunView
from lab.report.timing_markdown import (
    compile_section,
    latency_section,
    passes_note,
    repeats_section,
    throughput_table,
)
from lab.report.tutorial_markdown import tutorial_section


def render_markdown(view: RunView, analyses: Analyses, plots: list[dict]) -> str:
    """The whole report.md text; `plots`: the plots index (`lab.report.plots.write_plots`)."""
    runs = view.runs
    lines = [f"# PagedAttention Lab run `{view.manifest['run_id']}`", ""]
    lines += cut_lines(view.manifest.get("cut")) + ["## Conditions", ""]
    lines += conditions(view)
    stats = {s.run: s for s in analyses.repeats}
    lines += ["", "## Throughput", "", passes_note(runs), "", throughput_table(runs, stats)]
    lines += [""] + latency_section(runs)
    if analyses.repeats:
        lines += [""] + repeats_section(analyses.repeats)
    if online := online_section(runs, view.engine.online, analyses.sweep_memory):
        lines += [""] + online
    for section in (compile_section(runs), gc_section(runs)):
        lines += [""] + section if section else []
    tutorial = tutorial_section(view)
    if tutorial:
        lines += [""] + tutorial
    lines += [
        "",
        "## Memory",
        "",
        "Each column names its source: NVML (read by the collector process, per process and for the whole GPU), "
        "psutil RSS (host memory), the torch allocator (inside the transformers process, CUDA only) and "
        "the KV pool the paged engines report (vLLM, hf/continuous).",
        "",
        memory_table(runs),
    ]
    if per_gpu := per_gpu_section(runs):
        lines += [""] + per_gpu
    lines += [""] + energy_section(runs)
    lines += [""] + host_cpu_section(runs)
    lines += [""] + breakdown_section(view.engine, analyses.breakdown)
    if analyses.breakdown and (note := breakdown_rate_note(runs)):
        lines += note + [""]
    if analyses.bandwidth or analyses.bandwidth_omitted:
        lines += [""] + bandwidth_section(
            analyses.bandwidth, analyses.peak_gb_s, analyses.peak_source, analyses.bandwidth_omitted
        )
    failed = [r for r in runs if not r.ok]
    if failed:
        lines += ["", "## Failures", ""] + [f"- {r.label}: {r.error}" for r in failed]
    lines += process_end_section(runs)
    torn = [r for r in runs if (r.collector or {}).get("torn_line")]
    if torn:
        lines += ["", "## Skipped lines", ""] + [
            f"- {r.label}: the last line of runs/{r.name}/timeline.jsonl (line {r.collector['torn_line']}) was cut "
            "short when the collector was stopped mid-write, and was skipped"
            for r in torn
        ]
    lines += [""] + plots_section(plots)
    lines += ["", "## Observations", "", "The tutorial's conclusions, each checked against this run's numbers.", ""]
    lines += [f"- **{o.claim}** {o.verdict}: {o.evidence}" for o in analyses.observations]
    lines += ["", "Field definitions: docs/results.md.", ""]
    return "\n".join(lines)


def conditions(view: RunView) -> list[str]:
    manifest, config, runs = view.manifest, view.engine, view.runs
    host = manifest.get("host") or {}
    first = next((r for r in runs if r.model), None)
    model = (first.model if first else None) or {}
    workload = (first.workload if first else None) or {}
    device, dtype = (first.device, first.dtype) if first else ("-", "-")
    gpus = host.get("nvml", {}).get("gpus") if isinstance(host.get("nvml"), dict) else None
    machine = (
        ", ".join(f"{g.get('name')} ({fmt(g.get('memory_total_mib'), 0)} MiB)" for g in gpus) if gpus else "no GPU"
    )
    cpu = host.get("cpu", {}).get("model", "-") if isinstance(host.get("cpu"), dict) else "-"
    env = next((r for r in (manifest.get("backend_environments") or {}).values() if r), {}) or {}
    versions = ", ".join(f"{k} {version(env.get(k))}" for k in ("torch", "transformers", "vllm"))
    pool = (
        f"kv_cache_memory_bytes={fmt(config.kv_cache_memory_bytes)}"
        if config.kv_cache_memory_bytes
        else f"gpu_memory_utilization={config.gpu_memory_utilization or 'engine default'}"
    )
    if config.kv_cache_workload_share is not None:
        pool += f" (sized to {config.kv_cache_workload_share:g} of the workload's blocks at their final lengths)"
    return [
        f"- Run `{manifest['run_id']}`, {manifest['started']} to {manifest['finished']}, "
        f"runtime: {manifest['runtime']}",
        f"- Machine: {machine}; CPU: {cpu}; device used: {device}",
        f"- Versions: {versions}; lab {host.get('lab_version', '-')}",
        f"- Model: `{config.model}` ({fmt(model.get('num_layers'))} layers, {fmt(model.get('num_kv_heads'))} KV heads, "
        f"head_dim {fmt(model.get('head_dim'))}, {dtype}, {fmt(model.get('kv_bytes_per_token'))} KV bytes per token, "
        f"{'saved' if model.get('has_weights') else 'random-init'} weights)",
        f"- Workload: `{config.workload}`, {fmt(workload.get('requests'))} requests, "
        f"{fmt(workload.get('prompt_tokens'))} prompt tokens, {fmt(workload.get('output_tokens'))} output tokens "
        f"(fixed: EOS ignored), seed {config.seed}",
        f"- Warm-up: {warmup_text(config.warmup)} (excluded from every timing); hf batch size {config.batch_size}; "
        f"prefix caching {'on' if config.enable_prefix_caching else 'off'}; KV pool (vLLM, hf/continuous): " + pool,
        passes_line(config.repeats, config.sample_kv_every_step) + frozen_note(runs),
        f"- GPUs per backend/mode: {config.tensor_parallel_size}"
        + (
            " (tensor parallelism: vLLM's workers; torchrun ranks for transformers)"
            if config.tensor_parallel_size > 1
            else ""
        ),
        *settings_lines(runs),
        "- Clock: one `time.perf_counter` clock per process, read after `torch.cuda.synchronize()` on CUDA; "
        "t=0 when the timed pass starts; every request arrives at t=0 "
        + (
            "(offline) or at its time in the seeded arrival schedule (online) "
            if view.engine.online.request_rates and any(r.sweep for r in runs)
            else ""
        )
        + "and every latency counts from its arrival",
    ]


WARMUPS = {
    "shapes": "every shape the timed passes use (hf batches: each prefill shape and each batch size through every "
    "cache length; vLLM and hf/continuous: the whole workload once)",
    "full-pass": "the whole workload once, untimed",
    "first-batch": "the first batch only (first calls of other shapes fall inside the timed pass)",
    "none": "none (first calls fall inside the timed pass)",
}


def warmup_text(kind: str) -> str:
    return f"{kind}: {WARMUPS.get(kind, kind)}"


def passes_line(repeats: int, sample_kv_every_step: bool) -> str:
    """Timed passes per backend/mode and whether the paged engines sampled their KV usage (older manifests: 1, on)."""
    passes = f'{repeats} (the tables give medians; "Repeated timed passes" gives each)' if repeats > 1 else "1"
    samples = "on" if sample_kv_every_step else "off (engine stats disabled, as in `vllm bench`)"
    return f"- Timed passes per backend/mode: {passes}; per-step KV samples (vLLM, hf/continuous): {samples}"


def memory_table(runs: list[RunSummary]) -> str:
    rows = []
    for run in runs:
        whole, gen = run.memory["whole_process"], run.memory["generate_phase"]
        alloc, pool = run.memory.get("allocator") or {}, run.engine or {}
        rows.append(
            [
                run.label,
                whole.get("source") or "-",
                fmt(whole.get("nvml_tree_peak_mib"), 0),
                fmt(gen.get("nvml_tree_peak_mib"), 0),
                fmt(whole.get("nvml_device_peak_mib"), 0),
                fmt(whole.get("rss_tree_peak_mib"), 0),
                fmt(mib(alloc.get("peak_allocated_bytes")), 0),
                fmt(mib(alloc.get("peak_reserved_bytes")), 0),
                fmt(mib(pool.get("kv_pool_bytes")), 0),
                fmt(pool.get("kv_tokens_capacity")),
            ]
        )
    return tabulate(
        rows,
        headers=[
            "backend/mode",
            "sampled by",
            "NVML process tree peak MiB",
            "NVML tree peak in timed pass MiB",
            "NVML whole GPU peak MiB",
            "RSS tree peak MiB (psutil)",
            "allocator peak allocated MiB (torch)",
            "allocator peak reserved MiB (torch)",
            "KV pool MiB (engine; vLLM: per GPU)",
            "KV pool tokens (engine)",
        ],
        tablefmt="github",
    )


def plots_section(plots: list[dict]) -> list[str]:
    """An image link per drawn plot, a line per skipped one (`plots`: the plots index's entries)."""
    lines = ["## Plots", ""]
    for entry in plots:
        if entry.get("file"):
            lines += [f"![{entry['title']}]({entry['file']})", ""]
        else:
            lines += [f"- {entry['title']}: not drawn: {entry['skipped']}.", ""]
    return lines


def process_end_section(runs: list[RunSummary]) -> list[str]:
    """'## How the processes ended': each backend/mode whose process, after its measured work, failed or
    hung closing its engine, was stopped still running after its result, or left processes behind
    (`RunSummary.process_end`); [] where none did. Its figures stand: they were written before."""
    notes = []
    for run in runs:
        end = run.process_end or {}
        said = []
        if end.get("close_error"):
            said.append(f"closing its engine failed or hung: {end['close_error']}")
        if end.get("exit_stuck_s"):
            said.append(f"still running {end['exit_stuck_s']:.0f} s after writing its result: stopped, result kept")
        if end.get("leftover_pids"):
            said.append(f"left {len(end['leftover_pids'])} process(es) running, killed: {end['leftover_pids']}")
        if said:
            notes.append(f"- {run.label}: " + "; ".join(said))
    if not notes:
        return []
    intro = "After the timed passes (their figures were written before, and stand):"
    return ["", "## How the processes ended", "", intro, ""] + notes
