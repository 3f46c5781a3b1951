"""The `lab` command line: with `lab.cli_options`, `lab.cli_images` and `lab.cli_models`, the only place that
reads argv and the environment and builds the config.

Exit codes: 0 done; 1 a run or step failed (its error is recorded); 2 bad input (the message says
what to change); 128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM). A run cut off part-way keeps
what finished and exits with the cut's code (`lab.cut.Cut.exit_code`: 128 + N, or 1 for an error).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from lab import run_folder as rf
from lab import teardown
from lab.cli_faults import fault_injection
from lab.cli_images import images
from lab.cli_models import models
from lab.cli_options import (
    DEFAULT_CPU_MODEL,
    apply_preset,
    cache_dir_option,
    check_engine_inputs,
    check_gpus,
    check_inputs,
    check_vllm_device,
    default_model,
    engine_options,
    engine_settings,
    handle_errors,
    lab_gpus,
    parse_bytes,
    parse_concurrency,
    parse_gpus,
    progress,
    report_failures,
    results_option,
    runtime_option,
    show_results,
    timeout_option,
)
from lab.cli_sweeps import online_options, online_settings, sharing_options, sharing_sweep
from lab.config import (
    BACKEND_MODES,
    MAX_TIMEOUT_S,
    CapacitySpec,
    ExperimentSpec,
    RunSpec,
    check_mode,
    check_range,
    parse_backends,
)
from lab.errors import Interrupted, LabInputError
from lab.experiments.capacity import run_capacity
from lab.experiments.offline import run_experiment
from lab.experiments.presets import PRESETS, preset_options
from lab.experiments.sharing import SHARING_BACKENDS, run_sharing
from lab.hardware.collector import run_collector
from lab.hardware.device import resolve_device
from lab.hardware.env import collect_environment, format_environment
from lab.hardware.gpus import multicast_env
from lab.launchers import torchrun
from lab.launchers.base import Launcher
from lab.launchers.choose import choose_launcher
from lab.online_judged import short_trace_warning
from lab.phases import say
from lab.report.compare import render_comparison
from lab.report.sharing_writer import write_sharing_report
from lab.report.writer import write_report
from lab.runner import resolve_inputs, run_backend


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """PagedAttention Lab: vLLM's paged KV cache against transformers generate(), measured."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def env(as_json: bool) -> None:
    """Python, torch, CUDA, GPUs, transformers, vLLM and NVML as this machine has them."""
    data = collect_environment()
    click.echo(json.dumps(data, indent=2, default=str) if as_json else format_environment(data))


@cli.command(hidden=True)
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="JSON file to write: the model's folder and facts, and every request's lengths.",
)
@cache_dir_option
@handle_errors
def resolve(spec_file: Path, out: Path, cache_dir: Path | None) -> None:
    """Build or check the model of a spec and its workload against it (exit 2: bad input); print the model's path."""
    spec = RunSpec.from_dict(json.loads(spec_file.read_text()))
    inputs = resolve_inputs(spec, cache_dir)
    progress(f"workload {spec.engine.workload}: {len(inputs.requests)} requests fit the model's context")
    rf.write_json(out, inputs.to_dict())
    click.echo(str(inputs.model_path))


@cli.command()
@click.option(
    "--spec",
    "spec_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A spec.json written by `lab experiment` (instead of the options below).",
)
@click.option("--backend", type=click.Choice(list(BACKEND_MODES)), default=None)
@click.option(
    "--mode",
    default=None,
    help="sequential|batched|static-cache|static-cache-eager|continuous for hf; offline for vllm.",
)
@engine_options
@online_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder to write into.")
@cache_dir_option
@handle_errors
def run(spec_file, backend, mode, out, cache_dir, model, **kw) -> None:
    """One backend/mode in this process: load, warm-up, timed pass, records in --out.

    \b
    Exit codes: 0 ok; 1 the run failed (result.json says why); 2 bad input (nothing written);
    128+N stopped by signal N (the engine is closed first).
    """
    if spec_file:
        if not spec_file.is_file():
            raise LabInputError(f"spec file not found: {spec_file}")
        spec = RunSpec.from_dict(json.loads(spec_file.read_text()))
    else:
        if not backend or not mode:
            raise LabInputError("give --backend and --mode (e.g. --backend hf --mode batched), or --spec FILE")
        check_mode(backend, mode)
        check_engine_inputs(model or DEFAULT_CPU_MODEL, kw["workload"])
        spec = RunSpec(backend, mode, engine_settings(model or DEFAULT_CPU_MODEL, **kw))
    if rf.PartFolder(out).result.exists():
        raise LabInputError(f"{out} already holds a run ({rf.RESULT}); give a new --out folder")
    torchrun.exec_ranks_if_needed(spec, sys.argv[1:], cache_dir)  # hf on several GPUs: N ranks of this command
    signal.signal(signal.SIGTERM, Interrupted.on_signal)  # so that the engine is closed, not orphaned
    out = torchrun.rank_out(out)
    say(f"{spec.label} on {spec.engine.model}, workload {spec.engine.workload}")
    result = run_backend(spec, out, cache_dir, on_phase=fault_injection(spec.label))
    say(result.status + (f": {result.error}" if not result.ok else ""))
    teardown.exit_now_if_stuck(0 if result.ok else 1)  # a teardown that hung: not the interpreter's shutdown
    sys.exit(0 if result.ok else 1)


@cli.command()
@engine_options(repeats=3)
@online_options
@click.option(
    "--backends",
    default="hf,vllm",
    show_default=True,
    help="Backends or backend/mode pairs, e.g. hf,vllm or hf/batched,vllm/offline.",
)
@results_option
@runtime_option
@click.option("--collector-interval-ms", type=int, default=15, show_default=True)
@click.option("--no-collector", is_flag=True, help="Run without the NVML/psutil collector (to measure its cost).")
@click.option("--label", "tag", default="", help="Added to the run id.")
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default=None,
    help="A named experiment whose options apply unless given here; tutorial: the tutorial's own run "
    "(synthetic:gpt2, seed, 50 new tokens, context 512, hf/sequential and vLLM) beside its figures.",
)
@timeout_option
@sharing_options
@cache_dir_option
@handle_errors
def experiment(
    backends, results_dir, runtime, collector_interval_ms, no_collector, tag, preset, timeout_s, cache_dir, model, **kw
) -> None:
    """Every backend/mode in its own process on the same workload, the collector beside each; then the report.
    With --n, --beam-width or --shared-prefix-tokens: a sweep, one such run a point, and the sharing report
    (offline only: with --request-rate or --max-concurrency, exit 2).

    \b
    Exit codes:
      0    every backend/mode succeeded
      1    at least one failed, crashed or timed out: its error is recorded, and the run folder
           and its report are written all the same (the last line of stdout); or a step outside
           the backends failed part-way, and what finished before it is kept (as below)
      2    bad input: nothing was started and nothing written
      130  Ctrl-C (SIGINT), 143 SIGTERM, 129 SIGHUP: every process and container the run
           started was stopped. The backend/modes (a sweep's points; an online sweep's
           offered rates) that finished are kept as a run folder whose manifest's `cut`
           names the rest as not run and why (the last line of stdout); with nothing
           finished, its temporary folder is removed (no run folder)
    """
    points = sharing_sweep(kw)  # bad counts, or a sharing sweep with arrivals: exit 2 before anything starts
    if points and click.get_current_context().get_parameter_source("backends") == ParameterSource.DEFAULT:
        backends = SHARING_BACKENDS
    kw = apply_preset(click.get_current_context(), preset_options(preset), dict(kw, model=model, backends=backends))
    model, runs = kw.pop("model"), parse_backends(kw.pop("backends"))
    online_settings(kw)  # bad rates or SLOs: exit 2 before anything starts
    device, launcher = device_and_launcher(runtime, cache_dir, results_dir, kw["device"], kw["tensor_parallel_size"])
    model = model or default_model(device)
    check_inputs(launcher, model, kw["workload"])
    check_vllm_device(launcher, device, any(backend == "vllm" for backend, _ in runs))
    kw["device"] = device
    engine = engine_settings(model, **kw)
    if warning := short_trace_warning(engine, runs):  # a warning only: the report says which points it left unjudged
        progress(warning)
    spec = ExperimentSpec(engine, runs, collector_interval_ms, not no_collector, preset, timeout_s)
    progress(
        f"lab experiment: {len(runs)} backend/modes on {model}, workload {spec.engine.workload}, "
        f"device {device}, runtime {launcher.runtime}"
    )
    if points:
        finished = run_sharing(spec, points, results_dir, launcher, progress, tag)
        report = rf.RunFolder(finished.path).sharing_md
    else:
        finished = run_experiment(spec, results_dir, launcher, progress, tag)
        report = rf.RunFolder(finished.path).report
    show_results(report.read_text(encoding="utf-8"), finished.path)
    report_failures(finished)


@cli.command()
@engine_options
@click.option(
    "--kv-budget",
    default="4GiB",
    show_default=True,
    help="KV-cache memory every approach gets, e.g. 4GiB or 512MiB (sets vLLM's kv_cache_memory_bytes).",
)
@click.option(
    "--max-len",
    type=int,
    default=None,
    help="Tokens the static approach reserves per request (default: --max-model-len or the model's context).",
)
@click.option(
    "--concurrency",
    default=None,
    help="Points of the throughput curve, e.g. 1,2,4,8 (default: 1, 2, 4, ... up to each capacity).",
)
@click.option(
    "--measure/--no-measure",
    default=True,
    show_default=True,
    help="Run the engines at the computed points (else the arithmetic only).",
)
@click.option("--curve/--no-curve", default=True, show_default=True, help="Measure throughput against concurrency.")
@results_option
@runtime_option
@click.option("--no-collector", is_flag=True, help="Run the points without the NVML/psutil collector.")
@click.option("--label", "tag", default="capacity", show_default=True, help="Added to the run id.")
@timeout_option
@cache_dir_option
@handle_errors
def capacity(
    kv_budget,
    max_len,
    concurrency,
    measure,
    curve,
    results_dir,
    runtime,
    no_collector,
    tag,
    timeout_s,
    cache_dir,
    model,
    **kw,
) -> None:
    """Concurrent requests each approach fits in one KV-cache budget (arithmetic and measured), and throughput.

    Exit codes as `lab experiment`'s: 1 when a measured point failed (recorded in capacity.json); cut
    off after its first measured point, the points measured are kept (capacity.json `cut`).
    """
    device, launcher = device_and_launcher(runtime, cache_dir, results_dir, kw["device"], kw["tensor_parallel_size"])
    model = model or default_model(device)
    check_inputs(launcher, model, kw["workload"])
    check_vllm_device(launcher, device, uses_vllm=True)
    kw["device"] = device
    levels = parse_concurrency(concurrency)
    engine = engine_settings(model, **kw)
    spec = CapacitySpec(engine, parse_bytes(kv_budget), max_len, levels, measure, curve, not no_collector, timeout_s)
    progress(
        f"lab capacity: {model}, workload {spec.engine.workload}, KV budget {spec.kv_budget_bytes:,} bytes, "
        f"device {device}, runtime {launcher.runtime}"
    )
    finished = run_capacity(spec, results_dir, launcher, progress, tag)
    show_results(rf.RunFolder(finished.path).capacity_md.read_text(encoding="utf-8"), finished.path)
    report_failures(finished, "measured points")


def device_and_launcher(
    runtime: str, cache_dir: Path | None, results_dir: Path, device: str, tensor_parallel_size: int
) -> tuple[str, Launcher]:
    """--device resolved and checked against the GPUs the run may use (exit 2), then the launcher for
    that device: the container images' variant follows it."""
    device = resolve_device(device, progress)
    check_gpus(device, tensor_parallel_size)
    launcher = choose_launcher(
        runtime,
        cache_dir,
        results_dir,
        progress,
        device=device,
        lab_gpus=lab_gpus(),
        tensor_parallel_size=tensor_parallel_size,
    )
    return device, launcher


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--force", is_flag=True, help="Compare even when the model, workload, request count or output lengths differ."
)
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the combined Figure 12 of the online sweeps (normalized latency against offered rate, every "
    "backend/mode of every run) to this PNG file.",
)
@handle_errors
def compare(run_dirs, force, plot) -> None:
    """The same metrics of two or more runs side by side, with ratios to the first (GPUs, versions, settings);
    for online sweeps (perhaps one backend group per run), every rate and one sustained-rate table over all."""
    click.echo(render_comparison(list(run_dirs), force=force, plot=plot))


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@handle_errors
def report(run_dir: Path) -> None:
    """Regenerate report.md, the plots and report.html from a run folder's raw records (a sharing sweep:
    sharing.md and its plots); print the report."""
    click.echo(
        write_sharing_report(run_dir) if rf.is_sharing_sweep(run_dir) else write_report(rf.check_run_dir(run_dir))
    )


@cli.command()
@click.option("--pid", type=int, default=None, help="Root of the process tree to watch.")
@click.option(
    "--pid-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Wait for this file and watch the pid written in it.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="timeline JSON lines.")
@click.option(
    "--run", "--label", "run_name", default="", help="The backend/mode's name, written into every sample as 'run'."
)
@click.option("--interval-ms", type=int, default=15, show_default=True)
@click.option("--gpus", default=None, help="GPU indices to read, e.g. 0,1 (default: all).")
@click.option("--stop-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--max-seconds", type=float, default=None)
@handle_errors
def collect(pid, pid_file, out, run_name, interval_ms, gpus, stop_file, max_seconds) -> None:
    """Sample NVML (or psutil where NVML is missing) for a process tree until it exits."""
    if pid is None and pid_file is None:
        raise LabInputError("give --pid PID or --pid-file FILE")
    check_range("--pid", pid, 1, 2**31 - 1)
    check_range("--interval-ms", interval_ms, 1, 1000, "15 is ~66 samples a second")
    check_range("--max-seconds", max_seconds, 0.001, MAX_TIMEOUT_S, "or leave it out to run until the process exits")
    indices = parse_gpus(gpus)
    summary = run_collector(
        out,
        pid=pid,
        pid_file=pid_file,
        interval_ms=interval_ms,
        run_name=run_name,
        gpu_indices=indices,
        stop_file=stop_file,
        max_seconds=max_seconds,
    )
    click.echo(json.dumps(summary, default=str))


cli.add_command(images)
cli.add_command(models)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # NVLink multicast off in this process and every one it starts, unless set (lab.hardware.gpus).
    os.environ.update(multicast_env(os.environ))
    cli(prog_name="lab")
