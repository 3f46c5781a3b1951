"""Launchers: how the experiment starts a `lab` command for a service (hf, vllm, collector).

The native launcher runs `python -m lab ...` in a child process of this Python; the Docker launcher
(`lab.docker`) runs the same command in the service's container. Either way every backend/mode gets
a process of its own, so its memory is attributable, and the same `lab` CLI does the work.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


class NativeLauncher:
    runtime = "native"

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir

    def prepare(self, echo) -> None:
        """Nothing to build: the engines are installed in this Python's environment."""

    def command(self, service: str, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "lab", *args]

    def env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.cache_dir is not None:
            env["LAB_CACHE_DIR"] = str(self.cache_dir)
        return env

    def describe(self) -> dict:
        return {"runtime": self.runtime, "python": sys.executable}
