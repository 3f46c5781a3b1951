"""Which launcher `--runtime` means on this host."""

from __future__ import annotations

from pathlib import Path

from lab.errors import LabInputError
from lab.hardware.gpus import docker_gpus
from lab.launchers.base import Echo, Launcher
from lab.launchers.docker import DockerLauncher
from lab.launchers.docker_engine import default_variant, require_engine
from lab.launchers.native import NativeLauncher


def choose_launcher(
    runtime: str,
    cache_dir: Path | None,
    results_dir: Path,
    echo: Echo,
    *,
    device: str | None = None,
    lab_gpus: str | None = None,
    tensor_parallel_size: int = 1,
) -> Launcher:
    """native; docker; or auto: docker when the engine, compose v2 and, for CUDA images, the NVIDIA
    Container Toolkit all answer, else native with one line that says why.

    `device` (cuda or cpu, already resolved) picks the image variant; None: the host's. --runtime
    docker stops with a LabInputError naming the fix instead, before any image is built.
    `lab_gpus`: LAB_GPUS as given (None: unset); a container gets those GPUs, else the first
    `tensor_parallel_size` ones.
    """
    if runtime == "native":
        return NativeLauncher(cache_dir, lab_gpus)
    variant = device if device in ("cuda", "cpu") else default_variant()
    try:
        require_engine(gpu=variant == "cuda")
    except LabInputError as exc:
        if runtime == "docker":
            raise LabInputError(f"{exc}. Or run with --runtime native") from None
        echo(f"containers unavailable ({exc}): running natively in this Python environment")
        return NativeLauncher(cache_dir, lab_gpus)
    return DockerLauncher(cache_dir, results_dir, variant=variant, gpus=docker_gpus(lab_gpus, tensor_parallel_size))
