"""Containers are named per run and removed by name when their process is stopped or has died: the
commands the Docker launcher builds and runs, checked against a fake docker CLI (no engine needed;
tests/docker/test_docker_container_cleanup.py does the same with a real container)."""

from __future__ import annotations

import os
import subprocess
import sys

from lab.launchers import compose
from lab.launchers.container import ContainerProcess, stop_container_commands
from lab.launchers.docker import DockerLauncher


class FakeDocker:
    """Records the docker commands it is asked to run instead of running them: NOT Docker."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str]) -> subprocess.CompletedProcess:
        self.calls.append(args)
        return subprocess.CompletedProcess(["docker", *args], 0, "", "")


def sleeping_client(docker: FakeDocker, name: str = "lab-run-1-vllm-offline") -> ContainerProcess:
    """A real sleeping process in the place of the `docker compose run` client."""
    argv = [sys.executable, "-c", "import time; time.sleep(600)"]
    return ContainerProcess(argv, dict(os.environ), name, docker=docker)


def test_compose_run_names_the_container():
    cmd = compose.compose_run_command("vllm", ["run", "--spec", "/r/spec.json"], gpu=False, container="lab-x-vllm")
    run = cmd.index("run")
    assert cmd[run : run + 6] == ["run", "--rm", "-T", "--name", "lab-x-vllm", "vllm"]
    assert "--name" not in compose.compose_run_command("vllm", ["run"], gpu=False)


def test_the_docker_launcher_names_each_container_after_its_process(tmp_path):
    launcher = DockerLauncher(cache_dir=tmp_path / "cache", results_dir=tmp_path / "results", variant="cpu")
    cmd = launcher.command("hf", ["run", "--out", str(tmp_path / "results" / "x")], "lab-run-1-hf-batched")
    assert cmd[cmd.index("--name") + 1] == "lab-run-1-hf-batched"


def test_stopping_a_container_process_stops_then_removes_the_container_and_ends_the_client():
    docker = FakeDocker()
    proc = sleeping_client(docker)
    proc.stop(grace_s=3)
    assert docker.calls == [
        ["stop", "--time", "3", "lab-run-1-vllm-offline"],
        ["rm", "--force", "lab-run-1-vllm-offline"],
    ]
    assert proc.returncode is not None  # the client is gone too


def test_a_container_whose_client_died_is_removed_by_the_sweep():
    docker = FakeDocker()
    proc = sleeping_client(docker)
    proc.popen.kill()  # the client dies of SIGKILL: Docker would leave the container running
    proc.wait(10)
    proc.sweep()
    assert docker.calls == [["rm", "--force", "lab-run-1-vllm-offline"]]


def test_stop_commands_give_the_engine_a_grace_period_of_at_least_a_second():
    assert stop_container_commands("c", 0.2)[0] == ["stop", "--time", "1", "c"]


def test_a_container_killed_by_a_signal_reports_it_as_docker_does():
    proc = sleeping_client(FakeDocker())
    proc.popen.kill()
    proc.wait(10)
    for code, signal in [(137, "SIGKILL"), (143, "SIGTERM"), (1, None), (2, None), (0, None)]:
        proc.popen.returncode = code  # what `docker compose run` returns for the container's process
        assert proc.exit_signal() == signal, code
