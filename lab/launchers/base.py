"""What a launcher is: how the experiment starts a `lab` command for a service in a process of its own.

A service is `hf`, `vllm` (the backends) or `collector`. Whatever the launcher, every backend/mode
gets a process of its own, so its memory is attributable, and the same `lab` CLI does the work:
`lab.launchers.native` runs `python -m lab ...` as a child of this Python, `lab.launchers.docker`
runs it in the service's container.

Each launcher starts a process in a session of its own and knows how to stop it with everything it
started (`lab.launchers.process.LabProcess`: the process tree; Docker: the container too), so a
timeout or an interrupt leaves no engine holding a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from lab.launchers.process import LabProcess

Echo = Callable[[str], None]


class Launcher(Protocol):
    runtime: str  # "native" or "docker": the manifest's `runtime`

    def setup(self, echo: Echo) -> None:
        """Make every service runnable before the first command (Docker: build the missing images)."""

    def start(self, service: str, args: list[str], name: str, **popen_kwargs) -> LabProcess:
        """Start `lab <args>` for `service` as a process (or container) called `name`, unique to this
        run; `popen_kwargs` go to subprocess.Popen (stdout, stderr, text...)."""

    def command(self, service: str, args: list[str]) -> list[str]:
        """The argv that runs `lab <args>` for `service`."""

    def env(self) -> dict[str, str]:
        """The environment of that process."""

    def collector_gpus(self) -> str | None:
        """The NVML indices the collector reads ("0,1"): the backend's GPUs; None: every GPU it sees."""

    def describe(self) -> dict:
        """What the manifest records about how the processes were started."""
