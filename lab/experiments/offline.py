"""`lab experiment`: every backend/mode in its own process, one after the other, with the collector.

Offline: every request is available at t=0. Online serving (`--request-rate`, issue 16): each backend's
process runs every offered rate in turn after its one warm-up (`lab.runner`, `lab.arrivals`). The steps:

1. build (or check) the model once, through the launcher, so no backend pays for it;
   A KV pool given as a share of the workload (`--kv-cache-memory workload:SHARE`) is sized here,
   from the workload's lengths and the model's bytes per token, before any engine starts;
2. for each backend/mode: start `lab run` and, beside it, `lab collect` watching its process tree,
   within the backend's time limit (`--timeout`, default `lab.experiments.timeout`);
3. merge what the runs wrote into records.jsonl, kv.jsonl, timeline.jsonl and summary.json;
4. write manifest.json and the report, then rename the temporary folder to results/<run-id>/.

A backend that fails, crashes or runs past its limit is recorded with its reason and the others still
run; the run folder is written all the same, and `Finished.failed` names them (exit code 1). Anything
else that fails, and an interrupt (Ctrl-C, SIGTERM), stops every process the run started (their
containers too) and shows the last lines of the running backend's log. The backend/modes that finished
before it are kept as a run folder of their own, with the backend that was running where its process
kept the offered rates it finished, and the manifest's `cut` names the rest as not run and why
(`lab.experiments.sweep`; exit 128 + N for signal N, else 1). With nothing finished the temporary
folder is removed: nothing half-written stays in results/.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

from lab import run_folder as rf
from lab.accounting.capacity import workload_budget_bytes
from lab.accounting.parallel import kv_bytes_per_token_per_gpu
from lab.config import ExperimentSpec, RunSpec
from lab.cut import Cut, cut_entry
from lab.experiments.backend_run import end_cut_part, execute_run, recut
from lab.experiments.merge import merge_runs
from lab.experiments.steps import Finished, describe_result, manifest, model_build, resolve_once
from lab.experiments.sweep import Sweep, supervised_folder
from lab.experiments.timeout import default_timeout_s, describe_timeout
from lab.launchers.base import Echo, Launcher
from lab.progress import StepBar
from lab.records import BackendResult
from lab.report.writer import write_report


def run_experiment(
    spec: ExperimentSpec, results_dir: Path, launcher: Launcher, echo: Echo, tag: str = "", keep_cut: bool = True
) -> Finished:
    """Run every backend/mode of `spec`; return the finished run folder, what failed in it and the cut
    that stopped it early (its finished backend/modes kept, `lab.experiments.sweep`). `keep_cut` False
    (one point of a sharing sweep, whole or not at all): a cut keeps nothing and goes on up."""
    run_id = rf.new_run_id(tag)
    with supervised_folder(results_dir, run_id, launcher, echo) as (folder, processes):
        started = time.time()
        launcher.setup(echo)
        resolved = resolve_once(spec.run_specs()[0], folder, processes, echo)
        spec = sized_from_workload(spec, resolved, echo)
        specs = spec.run_specs()
        built = model_build(spec.engine.model, resolved)
        timeout_s = spec.timeout_s or default_timeout_s(
            resolved["lengths"], spec.engine.repeats, spec.engine.online.request_rates, spec.engine.sequences
        )
        limit = describe_timeout(timeout_s, given=spec.timeout_s is not None)
        echo(f"time limit per backend/mode: {limit}")
        interval_ms = spec.collector_interval_ms if spec.collect else None
        bar = StepBar(len(specs))  # a live bar on a terminal; quiet in logs

        def run_one(run: RunSpec) -> BackendResult:
            number = specs.index(run) + 1
            with bar.step(run.label):
                bar.echo(f"[{number}/{len(specs)}] {run.label}: starting its own process")
                result = execute_run(run, folder.part(run.name), processes, bar.echo, interval_ms, timeout_s, limit)
                bar.echo(f"[{number}/{len(specs)}] {run.label}: {describe_result(result)}")
            return result

        salvage = functools.partial(finished_rates, folder, echo, keep_cut)
        sweep = Sweep(processes, echo, salvage, keep=keep_cut, whole=measured_whole)
        sweep.run(specs, run_one, lambda r: r.label)
        swept = sweep.end()
        merge_runs(folder, [s.name for s in specs[: len(swept.done)]], spec.engine.online)
        info = manifest(spec.to_dict(), launcher, swept.done, built, started, folder)
        rf.write_json(folder.manifest, dict(info, **cut_entry(swept.cut)))
        write_report(folder.path)
    return Finished.of(results_dir / run_id, swept.done, swept.cut)


def finished_rates(folder: rf.RunFolder, echo: Echo, keep: bool, run: RunSpec, cut: Cut) -> BackendResult | None:
    """The backend/mode that was running when the experiment was cut: its result where its process kept
    the offered rates it finished (`lab.rates_kept`), with the experiment's own reason, or where it had
    finished every pass and written its result before its engine's close (`lab.teardown`): the cut only
    stopped its close or its exit, which is noted as its `close_error`. Else None, and its folder is
    removed (a backend cut mid-way is not presented as finished). Either way the last lines of its log go
    to `echo` first: what it was doing when the cut came. `keep` False: nothing is kept."""
    part = folder.part(run.name)
    result = BackendResult.from_dict(rf.read_json(part.result)) if keep and part.result.exists() else None
    kept = result is not None and (bool(result.cut) or measured_whole(result))
    end_cut_part(run.label, part, kept, echo)
    if not kept:
        return None
    if measured_whole(result):
        stopped = f"stopped by the cut ({cut.reason}) after its result was written: every pass had finished"
        result.close_error = result.close_error or stopped
        rf.write_json(part.result, result.to_dict())
        return result
    result.cut = recut(result.cut, cut.reason, cut.signal)
    result.error = f"{cut.reason}: its sweep was cut at {result.cut['cut_at']} req/s"
    rf.write_json(part.result, result.to_dict())
    return result


def measured_whole(result: BackendResult) -> bool:
    """A result written after every timed pass finished (ok, no rates of its own cut): what a backend
    writes before its engine's close, so a cut that comes later stops only the close or the exit."""
    return result.ok and not result.cut


def sized_from_workload(spec: ExperimentSpec, resolved: dict, echo: Echo) -> ExperimentSpec:
    """`spec` with kv_cache_memory_bytes set from `kv_cache_workload_share` (unchanged without one)."""
    engine = spec.engine
    if engine.kv_cache_workload_share is None:
        return spec
    lengths = [tuple(pair) for pair in resolved["lengths"]]
    model = resolved["model"]
    context = engine.max_model_len or model["max_position_embeddings"]
    share = engine.kv_cache_workload_share
    # Split over G GPUs the pool is per GPU (vLLM's kv_cache_memory_bytes is), so is a token's share of it.
    gpus = engine.tensor_parallel_size
    per_token = kv_bytes_per_token_per_gpu(model, gpus) if gpus > 1 else model["kv_bytes_per_token"]
    budget = workload_budget_bytes(lengths, per_token, engine.block_size, share, context)
    echo(
        f"KV pool: {budget:,} bytes, {share:g} of the blocks the {len(lengths)} requests hold at their final "
        "lengths (--kv-cache-memory workload:SHARE)"
    )
    if budget == workload_budget_bytes(lengths, per_token, engine.block_size, 0, context):
        echo(
            f"    that is its floor (the largest request, or one request of the model's context, {context:,} tokens, "
            "which vLLM needs): the workload may not fill it; a smaller --max-model-len lowers the floor"
        )
    return dataclasses.replace(spec, engine=dataclasses.replace(engine, kv_cache_memory_bytes=budget))
