"""Gather what the backend processes wrote (runs/<name>/) into the run folder's records.jsonl, kv.jsonl,
kv_passes.jsonl, timeline.jsonl and summary.json.

A backend/mode's summary: throughput and latency from its records, memory from its timeline. Memory
figures keep their source in their name and beside them:
- nvml_*: NVML, read by the collector process: `tree_gpu_mib` is the GPU memory of the backend's
  whole process tree (vLLM's engine core is a child process), `device_used_mib` the whole GPU's;
- rss_*: psutil, resident memory of the same process tree (host RAM; the figure on a CPU run);
- allocator: the torch allocator inside the backend process (transformers on CUDA only; with
  tensor parallelism rank 0's GPU, and `allocator_per_rank` every rank's).
With several GPUs, `nvml_*` figures are summed over the GPUs the backend's tree used (`gpus_used`; the
collector may read more: every GPU of the host where the run chose none), and `per_gpu` gives each
GPU's own peaks. `energy`: joules per timed pass and per output token (`lab.accounting.energy`);
`host_cpu`: the host CPU's load during each timed pass (`lab.accounting.host_load`).
"""

from __future__ import annotations

from lab import run_folder as rf
from lab.accounting.energy import energy_summary
from lab.accounting.host_load import host_load_summary
from lab.accounting.pass_memory import pass_memory, rate_memory
from lab.hardware.timeline import (
    gpus_holding_tree,
    in_window,
    per_gpu_peaks,
    read_timeline,
    restricted_to_gpus,
    summarize_timeline,
)
from lab.metrics import run_metrics
from lab.online_judged import concurrency_limit, judged_sweep
from lab.online_metrics import is_sweep, last_rate_records
from lab.online_settings import OnlineSettings
from lab.records import BackendResult, KvSample, RequestRecord, RunSummary

# The summary's name of each memory peak, and the collector's (lab.hardware.timeline.TimelineStats).
PEAKS = {
    "nvml_tree_peak_mib": "peak_tree_gpu_mib",
    "nvml_device_peak_mib": "peak_device_used_mib",
    "rss_tree_peak_mib": "peak_tree_rss_mib",
}
COLLECTOR_FACTS = (
    "source",
    "fallback_reason",
    "interval_ms",
    "mean_interval_ms",
    "max_gap_ms",
    "skipped_ticks",
    "stop_reason",
    "collector_cpu_pct",
    "samples",
)


def merge_runs(folder: rf.RunFolder, names: list[str], online: OnlineSettings | None = None) -> None:
    """Gather the runs' files (each read once) into the run folder's records, kv, kv_passes, timeline and summary;
    `online`: the online settings (goodput's SLOs, --max-concurrency), for an online sweep (`lab.online_metrics`)."""
    records, kv, kv_passes, timeline, summaries = [], [], [], [], []
    for name in names:
        part = folder.part(name)
        part_records = [RequestRecord.from_dict(r) for r in rf.iter_jsonl(part.records)]
        records.extend(part_records)
        kv.extend(KvSample.from_dict(dict(row, run=name)) for row in rf.iter_jsonl(part.kv_samples))
        part_kv = [KvSample.from_dict(dict(row, run=name)) for row in rf.iter_jsonl(part.kv_every_pass())]
        kv_passes.extend(part_kv)
        # header, samples, summary of the collector (absent: it was off)
        collected = read_timeline(part.timeline) if rf.existing(part.timeline) else {"samples": []}
        timeline.extend(collected["samples"])
        result = BackendResult.from_dict(rf.read_json(part.result))
        ranks = [BackendResult.from_dict(rf.read_json(r.result)) for r in part.ranks() if r.result.exists()]
        summary = summarize_run(result, part_records, collected["samples"], ranks, online, part_kv)
        summary.collector = collector_facts(collected)
        summaries.append(summary)
    rf.write_jsonl(folder.records, (r.to_dict() for r in records))
    rf.write_jsonl(folder.kv_samples, (s.to_dict() for s in kv))
    rf.write_jsonl(folder.kv_passes, (s.to_dict() for s in kv_passes))
    rf.write_jsonl(folder.timeline, timeline)
    rf.write_json(folder.summary, {"runs": [s.to_dict() for s in summaries]})


def summarize_run(
    result: BackendResult,
    records: list[RequestRecord],
    samples: list[dict],
    ranks: list[BackendResult] = (),
    online: OnlineSettings | None = None,
    kv_samples: list[KvSample] = (),
) -> RunSummary:
    """`ranks`: the results of torchrun ranks 1.. (a tensor-parallel hf run), for their allocator figures.
    An online sweep's `metrics` are its last rate's (inf where given); `sweep` has every rate's, and
    `sweep_memory` every rate's KV, NVML and allocator peaks (`lab.accounting.pass_memory`); each finite
    point is judged against `concurrency_limit` (`lab.online_judged`)."""
    online = online or OnlineSettings()
    engine = dict(result.engine or {})
    limit = concurrency_limit(result.backend, result.mode, engine, online.max_concurrency)
    engine.pop("batches", None)  # per-batch detail stays in runs/<name>/result.json
    last = last_rate_records(records)
    metrics, pass_metrics = run_metrics(last) if last else (None, None)
    used = gpus_holding_tree(samples)
    own = restricted_to_gpus(samples, used) if used else samples  # the collector may read more GPUs
    window = result.phase("generate")
    return RunSummary(
        backend=result.backend,
        mode=result.mode,
        status=result.status,
        error=result.error,
        device=result.device,
        dtype=result.dtype,
        model=result.model,
        workload=result.workload,
        load_s=result.load_s,
        warmup=result.warmup,
        generate_s=result.generate_s,
        passes_s=result.passes_s,
        passes=result.passes,
        compile=result.compile,
        metrics=metrics,
        pass_metrics=pass_metrics,
        memory={
            "whole_process": timeline_peaks(own),
            "generate_phase": timeline_peaks(own, window),
            "allocator": result.memory,
            "gpus_used": used,
            "per_gpu": {"whole_process": per_gpu_peaks(own), "generate_phase": per_gpu_peaks(in_window(own, window))},
            "allocator_per_rank": [r.memory for r in (result, *ranks)] if ranks else None,
        },
        engine=engine,
        energy=energy_summary(result.phases, samples, (metrics or {}).get("output_tokens"), result.energy_meter),
        host_cpu=host_load_summary(result.phases),
        sweep=judged_sweep(records, list(kv_samples), online.slos, limit) if is_sweep(records) else None,
        sweep_memory=rate_memory(pass_memory(result, records, list(kv_samples), own)) if is_sweep(records) else None,
        skipped_rates=result.skipped_rates,
        concurrency_limit=limit,
        cut=result.cut,
        process_end=process_end(result),
    )


def process_end(result: BackendResult) -> dict | None:
    """What went wrong as the backend process ended, after its measured work: its engine's close failed or
    hung (`close_error`), it was stopped still running after its result (`exit_stuck_s`), it left
    processes running (`leftover_pids`); None where nothing did."""
    facts = {
        "close_error": result.close_error,
        "exit_stuck_s": result.exit_stuck_s,
        "leftover_pids": result.leftover_pids or None,
    }
    kept = {key: value for key, value in facts.items() if value is not None}
    return kept or None


def timeline_peaks(samples: list[dict], window: tuple[float, float] | None = None) -> dict:
    """Peak of each memory figure over the samples (within `window`, epoch seconds, if given), the
    collector's own fold (`summarize_timeline`) under the summary's names."""
    stats = summarize_timeline(in_window(samples, window))
    peaks: dict = {"samples": stats["samples"]}
    peaks.update({name: stats[key] for name, key in PEAKS.items()})
    peaks["source"] = ",".join(stats["sources"]) or None
    return peaks


def collector_facts(collected: dict) -> dict:
    """How the timeline was taken: its source, why NVML was not used, and the collector's own cost."""
    header, summary = collected.get("header") or {}, collected.get("summary") or {}
    facts = {k: summary.get(k, header.get(k)) for k in COLLECTOR_FACTS}
    facts["complete"] = collected.get("complete")
    facts["torn_line"] = collected.get("torn_line")  # a torn last line was skipped (the collector was killed)
    return facts
