"""What the container tests share: whether a Docker engine answers, whether this host is ready, and
`python -m lab` run from the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from lab.launchers import docker_engine, images


def docker_engine_answers() -> tuple[bool, str]:
    """(True, server version) when `docker info` answers, else (False, why not)."""
    if shutil.which("docker") is None:
        return False, "no docker CLI"
    try:
        out = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, "`docker info` did not answer within 30 s"
    if out.returncode != 0 or not out.stdout.strip():
        return False, f"`docker info` failed: {(out.stderr or out.stdout).strip().splitlines()[-1:]}"
    return True, out.stdout.strip()


@pytest.fixture(scope="session")
def docker_host() -> str:
    """Skip only where no Docker engine answers; a host whose engine answers must be ready.

    `make test` readies such a host (scripts/docker-host-setup.sh: compose v2, the build inputs, a
    base image), so anything missing then is a failure that names the fix, not a skip.
    """
    answers, server = docker_engine_answers()
    if not answers:
        pytest.skip(f"no Docker engine answers here ({server}): container tests skipped")
    ok, reason = docker_engine.engine_status()
    if not ok:
        pytest.fail(f"a Docker engine answers but the lab cannot use it: {reason}")
    base = images.resolve_base_image()
    if not images.image_exists(base):
        pytest.fail(
            f"no base image {base} here; fix: scripts/docker-host-setup.sh {sys.prefix} "
            "(make test runs it) builds the offline one where no registry answers"
        )
    return reason


def _run_lab(*args: str, timeout_s: float) -> subprocess.CompletedProcess:
    """`python -m lab ARGS` from the checkout, output captured; the caller checks the exit code."""
    return subprocess.run(
        [sys.executable, "-m", "lab", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=images.REPO_ROOT,
        check=False,
    )


@pytest.fixture(scope="session")
def run_lab():
    """`run_lab("experiment", ..., timeout_s=...)`: the lab CLI as a user runs it."""
    return _run_lab
