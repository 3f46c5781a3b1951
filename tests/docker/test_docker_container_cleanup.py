"""With a real Docker engine and a real container started by the Docker launcher (`docker compose run`
with compose.yaml): stopping its process removes the container, and a container whose client died of
SIGKILL, which Docker leaves running, is removed by the sweep.

The image is the lab's base image plus a fake `lab` command that only sleeps (built here in seconds):
these tests are about the container's life, not the engines in it (tests/docker/test_docker_experiment.py
runs those)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from lab.launchers import docker_engine, images
from lab.launchers.docker import DockerLauncher

pytestmark = pytest.mark.docker

FAKE_LAB_IMAGE = f"{images.IMAGE_PREFIX}/test-fake-lab:sleep"
DOCKERFILE = """FROM {base}
RUN printf '#!/bin/sh\\nexec sleep 300\\n' > /usr/local/bin/lab && chmod 755 /usr/local/bin/lab
"""


def docker(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=False)


@pytest.fixture(scope="module")
def fake_lab_image() -> str:
    ok, reason = docker_engine.engine_status()
    if not ok:
        pytest.skip(f"no usable Docker engine: {reason}")
    base = images.resolve_base_image()
    if not images.image_exists(base):
        pytest.skip(f"no base image {base} here (run `make base-image-offline`, or set LAB_BASE_IMAGE)")
    built = subprocess.run(
        ["docker", "build", "--network", "host", "-t", FAKE_LAB_IMAGE, "-"],
        input=DOCKERFILE.format(base=base),
        capture_output=True,
        text=True,
        env={**os.environ, **images.BUILD_ENV},
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    return FAKE_LAB_IMAGE


@pytest.fixture
def launcher(fake_lab_image, tmp_path) -> DockerLauncher:
    launcher = DockerLauncher(cache_dir=tmp_path / "cache", results_dir=tmp_path / "results", variant="cpu")
    launcher._tags = {name: fake_lab_image for name in ("base", *images.SERVICES)}
    return launcher


def container_state(name: str) -> str | None:
    """'running', 'exited', ... or None when no container has that name."""
    out = docker("inspect", "--format", "{{.State.Status}}", name, timeout_s=30)
    return out.stdout.strip() if out.returncode == 0 else None


def start_container(launcher: DockerLauncher):
    name = f"lab-test-{uuid.uuid4().hex[:8]}-hf-batched"
    proc = launcher.start("hf", ["run"], name, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while container_state(name) != "running":
        assert time.monotonic() < deadline, f"container {name} did not start"
        assert proc.popen.poll() is None, f"docker compose run exited with {proc.returncode}"
        time.sleep(0.5)
    return proc, name


def test_stopping_the_process_removes_its_container(launcher):
    proc, name = start_container(launcher)
    proc.stop(grace_s=2)
    assert container_state(name) is None
    assert proc.returncode is not None


def test_a_container_left_running_by_a_killed_client_is_removed_by_the_sweep(launcher):
    proc, name = start_container(launcher)
    proc.popen.kill()  # the client dies of SIGKILL, as it would with the orchestrator's process group
    proc.wait(30)
    time.sleep(2)
    assert container_state(name) == "running"  # Docker does not stop it: this is why containers are named
    proc.sweep()
    assert container_state(name) is None
