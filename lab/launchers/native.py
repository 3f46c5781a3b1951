"""The native launcher: each `lab` command runs as `python -m lab ...`, a child process of this Python."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lab.hardware.gpus import collector_gpus, native_gpu_env
from lab.launchers.base import Echo
from lab.launchers.process import LabProcess


class NativeLauncher:
    """A `lab.launchers.base.Launcher` for engines installed in this Python's environment."""

    runtime = "native"

    def __init__(self, cache_dir: Path | None = None, gpus: str | None = None) -> None:
        self.cache_dir = cache_dir
        self.gpus = gpus  # LAB_GPUS (NVML indices), or None: the caller's CUDA_VISIBLE_DEVICES, if any

    def setup(self, echo: Echo) -> None:
        """Nothing to build: the engines are installed in this Python's environment."""

    def start(self, service: str, args: list[str], name: str, **popen_kwargs) -> LabProcess:
        """A child process in a session of its own; `name` only labels it (no container to name)."""
        return LabProcess(self.command(service, args), self.env(), name, **popen_kwargs)

    def command(self, service: str, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "lab", *args]

    def env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **native_gpu_env(self.gpus))
        if self.cache_dir is not None:
            env["LAB_CACHE_DIR"] = str(self.cache_dir)
        return env

    def collector_gpus(self) -> str | None:
        return collector_gpus(self.gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))

    def describe(self) -> dict:
        return {"runtime": self.runtime, "python": sys.executable, "gpus": self.gpus}
