"""Which launcher `--runtime` means on this host."""

from __future__ import annotations

from pathlib import Path

from lab.errors import LabInputError
from lab.hardware.gpus import docker_gpus
from lab.launchers.base import Echo, Launcher
from lab.launchers.docker import DockerLauncher
from lab.launchers.docker_engine import engine_status
from lab.launchers.native import NativeLauncher


def choose_launcher(
    runtime: str,
    cache_dir: Path | None,
    results_dir: Path,
    echo: Echo,
    lab_gpus: str | None = None,
    tensor_parallel_size: int = 1,
) -> Launcher:
    """native; docker (LabInputError naming the fix without an engine); auto: docker if it answers, else native.

    `lab_gpus`: LAB_GPUS as given (None: unset); a container gets those GPUs, else the first
    `tensor_parallel_size` ones.
    """
    if runtime == "native":
        return NativeLauncher(cache_dir, lab_gpus)
    ok, reason = engine_status()
    if ok:
        return DockerLauncher(cache_dir, results_dir, gpus=docker_gpus(lab_gpus, tensor_parallel_size))
    if runtime == "docker":
        raise LabInputError(f"no Docker engine: {reason}. Start Docker, or run with --runtime native")
    echo(f"no Docker engine ({reason}): running natively in this Python environment")
    return NativeLauncher(cache_dir, lab_gpus)
