"""Which launcher `--runtime` means on this host."""

from __future__ import annotations

from pathlib import Path

from lab.errors import LabInputError
from lab.launchers.base import Echo, Launcher
from lab.launchers.docker import DockerLauncher
from lab.launchers.docker_engine import engine_status
from lab.launchers.native import NativeLauncher


def choose_launcher(runtime: str, cache_dir: Path | None, results_dir: Path, echo: Echo) -> Launcher:
    """native; docker (LabInputError naming the fix without an engine); auto: docker if it answers, else native."""
    if runtime == "native":
        return NativeLauncher(cache_dir)
    ok, reason = engine_status()
    if ok:
        return DockerLauncher(cache_dir, results_dir)
    if runtime == "docker":
        raise LabInputError(f"no Docker engine: {reason}. Start Docker, or run with --runtime native")
    echo(f"no Docker engine ({reason}): running natively in this Python environment")
    return NativeLauncher(cache_dir)
