"""`lab capacity`: how many requests each approach runs at once under one fixed KV-cache budget.

The question of the PagedAttention paper's Figure 13a (`lab.paper`), asked of this lab's engines.
The arithmetic is `lab.accounting.capacity`'s; this module measures the same points, each in its
own process through `lab.experiments.backend_run.execute_run`, as every experiment run is:
- vLLM with `kv_cache_memory_bytes` = B: the requests per step it actually ran (from its KV samples);
- hf/continuous with the same pool (transformers' paged cache, `lab.accounting.continuous`): the same,
  from its own samples;
- hf/batched at the batch size the arithmetic allows (and hf/static-cache at the static capacity):
  the cache tensors' bytes, checked against B, and the throughput at that point;
- the curve: throughput against concurrency, hf/batched at batch sizes 1, 2, 4, ... up to its
  capacity and vLLM with `max_num_seqs` (`EngineSettings.max_num_seqs`) 1, 2, 4, ... up to the
  most requests it ran at once at the budget; drawn as capacity.png.
The budget bounds the KV cache only: weights, activations and the CUDA context are outside it. The
workload's lengths and the model's bytes per token come from `lab resolve` through the launcher,
so nothing is tokenized in this process.

Writes `results/<run-id>/`: manifest.json, capacity.json, capacity.md, capacity.png (the curve, where
one was measured) and runs/<point>/ for each measured point; written as `.tmp-<run-id>` and renamed
when complete, never overwriting. A run cut off after its first measured point (a signal, an error
outside the backends) keeps the points measured, and `cut` names the rest (`lab.experiments.sweep`).
It runs wherever `lab experiment` runs: the launcher it is given (native or Docker) starts every point.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab import paper
from lab import run_folder as rf
from lab.accounting.capacity import batched_requests as paged_batches
from lab.accounting.capacity import capacity_arithmetic, concurrency_levels
from lab.accounting.continuous import batched_requests
from lab.accounting.parallel import kv_bytes_per_token_per_gpu
from lab.config import CapacitySpec, ExperimentSpec, RunSpec, run_label
from lab.cut import Cut, cut_entry
from lab.experiments.backend_run import end_cut_part, execute_run
from lab.experiments.steps import Finished, manifest, model_build, resolve_once
from lab.experiments.sweep import Sweep, Swept, supervised_folder
from lab.experiments.timeout import default_timeout_s, describe_timeout
from lab.launchers.base import Echo, Launcher
from lab.launchers.supervisor import Supervisor
from lab.metrics import passes_of, run_metrics
from lab.records import BackendResult, KvSample, RequestRecord
from lab.report.capacity import render_capacity, write_capacity_plot

COLLECTOR_INTERVAL_MS = 15  # the experiment's default


def run_capacity(
    spec: CapacitySpec, results_dir: Path, launcher: Launcher, echo: Echo, tag: str = "capacity"
) -> Finished:
    """Arithmetic for all three approaches, then the measured points; returns the finished run folder
    and the points that failed (each point within its time limit, as `lab experiment`'s backends)."""
    run_id = rf.new_run_id(tag)
    with supervised_folder(results_dir, run_id, launcher, echo) as (folder, processes):
        started = time.time()
        launcher.setup(echo)
        base = RunSpec("vllm", "offline", dataclasses.replace(spec.engine, kv_cache_memory_bytes=spec.kv_budget_bytes))
        resolved = resolve_once(base, folder, processes, echo)
        facts = workload_facts(resolved, base, spec)
        arithmetic = capacity_arithmetic(
            facts["lengths"],
            spec.kv_budget_bytes,
            facts["kv_bytes_per_token"],
            spec.engine.block_size,
            facts["max_len"],
        )
        echo("arithmetic: " + ", ".join(f"{k} {v['concurrency']}" for k, v in arithmetic.items()))
        timeout_s = spec.timeout_s or default_timeout_s(facts["lengths"], spec.engine.repeats)
        points = Points(
            folder, processes, spec.collect, timeout_s, describe_timeout(timeout_s, spec.timeout_s is not None)
        )
        swept = measure_all(spec, base, arithmetic, points, echo) if spec.measure else Swept([])
        measured = swept.done
        data = dict(capacity_data(spec, facts, arithmetic, [p for p, _ in measured]), **cut_entry(swept.cut))
        rf.write_json(folder.capacity_json, data)
        drawn = write_capacity_plot(folder, data)
        rf.atomic_write(folder.capacity_md, render_capacity(data, drawn))
        experiment = ExperimentSpec(
            base.engine, (("hf", "batched"), ("vllm", "offline")), collect=spec.collect, timeout_s=spec.timeout_s
        )
        info = manifest(
            experiment.to_dict(),
            launcher,
            [r for _, r in measured],
            model_build(spec.engine.model, resolved),
            started,
            folder,
        )
        rf.write_json(folder.manifest, dict(info, kind="capacity", capacity=spec.to_dict(), **cut_entry(swept.cut)))
    return Finished(results_dir / run_id, len(measured), [p["point"] for p, r in measured if not r.ok], swept.cut)


def workload_facts(resolved: dict, run: RunSpec, spec: CapacitySpec) -> dict:
    """The workload's (prompt, output) lengths and the model's KV bytes per token, as `lab resolve` found them.

    Split over G GPUs the budget is per GPU (vLLM's `kv_cache_memory_bytes` is), and so are the bytes
    per token: one GPU's share of the KV heads (`lab.accounting.parallel`).
    """
    model = resolved["model"]
    max_len = spec.max_len or run.engine.max_model_len or model["max_position_embeddings"]
    gpus = run.engine.tensor_parallel_size
    return {
        "lengths": [tuple(pair) for pair in resolved["lengths"]],
        "kv_bytes_per_token": kv_bytes_per_token_per_gpu(model, gpus) if gpus > 1 else model["kv_bytes_per_token"],
        "tensor_parallel_size": gpus,
        "max_len": max_len,
        "dtype": resolved["dtype"],
    }


# ----------------------------------------------------------------------------- the measured points


@dataclass(frozen=True)
class Points:
    """Where and how each measured point runs: its folder, the processes, the collector, the limit."""

    folder: rf.RunFolder
    processes: Supervisor
    collect: bool
    timeout_s: float
    timeout_text: str


@dataclass(frozen=True)
class Planned:
    """A point to measure: its name (runs/<name>/), its run, and what capacity.json adds to it."""

    name: str
    run: RunSpec
    extra: dict = field(default_factory=dict)


def measure_all(
    spec: CapacitySpec, base: RunSpec, arithmetic: dict, where: Points, echo: Echo
) -> Swept[tuple[dict, BackendResult]]:
    """The measured points: vLLM at the budget, then (`later_points`) hf/continuous at the budget, hf at
    its capacities and the curve. A cut after the first keeps those measured (`lab.experiments.sweep`)."""

    def measure(planned: Planned) -> tuple[dict, BackendResult]:
        point, result = measure_point(planned.name, planned.run, where, echo)
        return dict(point, **planned.extra), result

    sweep = Sweep(where.processes, echo, functools.partial(unmeasured, where.folder, echo))
    if sweep.run([Planned("vllm-offline-budget", base)], measure, lambda p: p.name):
        sweep.run(later_points(spec, base, arithmetic, sweep.done[0][0]), measure, lambda p: p.name)
    return sweep.end()


def later_points(spec: CapacitySpec, base: RunSpec, arithmetic: dict, budget_point: dict) -> list[Planned]:
    """hf/continuous at the budget, hf/batched at its capacities (and the curve's batch sizes),
    hf/static-cache at the static capacity, then vLLM's curve up to the most requests it ran at once."""
    engine = base.engine
    planned = [Planned("hf-continuous-budget", RunSpec("hf", "continuous", engine))]
    hf_sizes = set(concurrency_levels(arithmetic["padded"]["concurrency"], spec.concurrency) if spec.curve else [])
    hf_sizes.add(arithmetic["padded"]["concurrency"])
    for size in sorted(s for s in hf_sizes if s >= 1):
        run = RunSpec("hf", "batched", dataclasses.replace(engine, batch_size=size))
        planned.append(Planned(f"hf-batched-b{size}", run, {"role": "curve"}))
    static = arithmetic["static"]["concurrency"]
    if static >= 1:
        run = RunSpec("hf", "static-cache", dataclasses.replace(engine, batch_size=static))
        planned.append(Planned(f"hf-static-cache-b{static}", run))
    if spec.curve:
        limit = budget_point.get("max_running") or arithmetic["paged"]["concurrency"]
        for seqs in concurrency_levels(limit, spec.concurrency):
            run = RunSpec("vllm", "offline", dataclasses.replace(engine, max_num_seqs=seqs))
            planned.append(Planned(f"vllm-offline-c{seqs}", run, {"role": "curve", "max_num_seqs_requested": seqs}))
    return planned


def unmeasured(folder: rf.RunFolder, echo: Echo, planned: Planned, cut: Cut) -> None:
    """The point that was running when the run was cut keeps nothing: the last lines of its log go to
    `echo` (what it was doing), then its runs/<name>/ is removed."""
    end_cut_part(planned.name, folder.part(planned.name), False, echo)


def measure_point(name: str, run: RunSpec, where: Points, echo: Echo) -> tuple[dict, BackendResult]:
    """Run one point in its own process (`execute_run`) and read back what it measured."""
    echo(f"{name}: starting its own process")
    part = where.folder.part(name)
    interval_ms = COLLECTOR_INTERVAL_MS if where.collect else None
    result = execute_run(run, part, where.processes, echo, interval_ms, where.timeout_s, where.timeout_text)
    records = [RequestRecord.from_dict(r) for r in rf.iter_jsonl(part.records)]
    samples = [KvSample.from_dict(s) for s in rf.iter_jsonl(part.kv_samples)]
    figures = point_figures(result, records, samples)
    echo(
        f"{name}: {result.status}"
        + (f", {figures['output_tokens_per_s']:,.1f} output tokens/s" if figures.get("output_tokens_per_s") else "")
    )
    point = dict(
        figures,
        point=name,
        backend=run.backend,
        mode=run.mode,
        batch_size=run.engine.batch_size,
        status=result.status,
        error=result.error,
    )
    return point, result


def point_figures(result: BackendResult, records: list[RequestRecord], samples: list[KvSample]) -> dict:
    """Throughput (the median over its timed passes), requests per step and cache bytes of one finished
    point; the KV samples are its last pass's, and so are the records set beside them."""
    metrics = run_metrics(records)[0] if records else {}
    engine = result.engine or {}
    out = {
        "output_tokens_per_s": metrics.get("output_tokens_per_s"),
        "requests_per_s": metrics.get("requests_per_s"),
        "duration_s": metrics.get("duration_s"),
        "requests": len(records),
    }
    if result.backend == "vllm" or result.label == "hf/continuous":  # the paged pools
        last_pass = passes_of(records)[-1] if records else []
        paged = batched_requests(samples) if result.backend == "hf" else vllm_batched_requests(samples, last_pass)
        out.update(paged)
        out.update(
            max_num_seqs=engine.get("max_num_seqs"),
            max_num_batched_tokens=engine.get("max_num_batched_tokens"),
            kv_pool_bytes=engine.get("kv_pool_bytes"),
            num_blocks=engine.get("num_blocks"),
        )
    else:
        batches = result.hf_batches
        out["max_cache_bytes"] = max((b.cache_bytes or 0 for b in batches), default=None)
        out["max_batch"] = max((b.batch_size for b in batches), default=None)
        durations = [(b.end_s - b.start_s, b.batch_size) for b in batches]
        total = sum(d for d, _ in durations)
        out["mean_running"] = sum(d * s for d, s in durations) / total if total else None
        out["max_running"] = out["max_batch"]
        out["cache_slots_per_sequence"] = max((b.cache_slots_per_sequence or 0 for b in batches), default=None)
    return out


def vllm_batched_requests(samples: list[KvSample], records: list[RequestRecord]) -> dict:
    """Requests each engine step ran: `running` after the step plus those that finished in it.

    vLLM's `num_running_reqs` is read after the step has removed its finished requests; adding them
    back gives the step's batch, the paper's "batched requests". Steps that ran nothing are left out;
    the mean is weighted by step duration.
    """
    ends: dict[float, int] = {}
    for r in records:
        if r.ok:
            ends[r.end_s] = ends.get(r.end_s, 0) + 1
    return paged_batches(samples, lambda s: (s.running or 0) + ends.get(s.t_s, 0))


# ----------------------------------------------------------------------------- capacity.json


def capacity_data(spec: CapacitySpec, facts: dict, arithmetic: dict, measured: list[dict]) -> dict:
    """capacity.json: conditions, arithmetic, measured points, the curve and the paper's figures."""
    lengths = facts["lengths"]
    vllm = next((p for p in measured if p["point"] == "vllm-offline-budget"), None)
    if vllm and vllm.get("max_num_seqs"):  # the simulation again, with the limits the engine reported
        arithmetic = dict(
            arithmetic,
            paged_engine_limits=capacity_arithmetic(
                lengths,
                spec.kv_budget_bytes,
                facts["kv_bytes_per_token"],
                spec.engine.block_size,
                facts["max_len"],
                vllm["max_num_seqs"],
                vllm.get("max_num_batched_tokens"),
            )["paged"],
        )
    return {
        "conditions": {
            "model": spec.engine.model,
            "dtype": facts["dtype"],
            "device": spec.engine.device,
            "kv_bytes_per_token": facts["kv_bytes_per_token"],
            "kv_budget_bytes": spec.kv_budget_bytes,
            "block_size": spec.engine.block_size,
            "max_len": facts["max_len"],
            "workload": spec.engine.workload,
            "requests": len(lengths),
            "mean_prompt_tokens": sum(p for p, _ in lengths) / len(lengths),
            "mean_output_tokens": sum(o for _, o in lengths) / len(lengths),
            "budget_covers": "the KV cache only (weights, activations and the CUDA context are outside it)"
            + (
                f", on each of {facts['tensor_parallel_size']} GPUs (KV bytes per token: one GPU's share)"
                if facts.get("tensor_parallel_size", 1) > 1
                else ""
            ),
            "tensor_parallel_size": facts.get("tensor_parallel_size", 1),
        },
        "arithmetic": arithmetic,
        "measured": measured,
        "curve": curve_rows(measured),
        "paper_fig13a_mean_batched_requests": dict(paper.FIG13A_MEAN_BATCHED),
    }


def curve_rows(measured: list[dict]) -> list[dict]:
    """Throughput against concurrency: one row per curve point, hf batch size or vLLM max_num_seqs."""
    rows = []
    for p in measured:
        if p.get("role") != "curve":
            continue
        level = p["batch_size"] if p["backend"] == "hf" else p["max_num_seqs_requested"]
        rows.append(
            {
                "approach": run_label(p["backend"], p["mode"]),
                "concurrency": level,
                "status": p["status"],
                "mean_running": p.get("mean_running"),
                "output_tokens_per_s": p.get("output_tokens_per_s"),
            }
        )
    return sorted(rows, key=lambda r: (r["approach"], r["concurrency"]))
