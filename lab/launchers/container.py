"""A `lab` command running in a container: the `docker compose run` client is a process here, the
work is in the container, outside this process tree. Stopping it removes the container too.

Each container is named by the experiment (`docker compose run --name lab-<run-id>-<part>`), so it
can be found and removed by that name whatever happened to the client: killed, timed out, or never
told (Docker does not stop a container whose `compose run` client dies of SIGKILL).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from lab.launchers.process import GRACE_S, LabProcess, signal_name

DockerCall = Callable[[list[str]], subprocess.CompletedProcess]
DOCKER_TIMEOUT_S = 60.0


def docker_call(args: list[str]) -> subprocess.CompletedProcess:
    """`docker <args>`, its output captured; a container that is already gone is not an error here."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=DOCKER_TIMEOUT_S, check=False)


def stop_container_commands(container: str, grace_s: float) -> list[list[str]]:
    """SIGTERM to the container's main process (the lab closes its engine), SIGKILL after `grace_s`
    (`docker stop`), then removal, which also kills anything still running in it (`rm --force`)."""
    return [["stop", "--time", str(max(1, round(grace_s))), container], ["rm", "--force", container]]


class ContainerProcess(LabProcess):
    """The client of one `docker compose run --name <name>`; `docker` runs a docker command (a
    fake one in unit tests)."""

    def __init__(
        self, argv: list[str], env: dict[str, str], name: str, docker: DockerCall = docker_call, **popen_kwargs
    ) -> None:
        super().__init__(argv, env, name, **popen_kwargs)
        self.docker = docker

    def exit_signal(self) -> str | None:
        """Docker reports a container's process that a signal ended as 128 + the signal (137: SIGKILL,
        the kernel's out-of-memory killer among others)."""
        code = self.returncode
        if code is not None and 128 < code < 128 + 65:
            return signal_name(code - 128)
        return super().exit_signal()

    def stop(self, grace_s: float = GRACE_S) -> list[int]:
        for command in stop_container_commands(self.name, grace_s):
            self.docker(command)
        return super().stop(grace_s)  # the compose client, and anything it started here

    def sweep(self) -> list[int]:
        """`--rm` removes the container when the client sees it end; the client may have died first."""
        self.docker(["rm", "--force", self.name])
        return super().sweep()
