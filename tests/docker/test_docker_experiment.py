"""End to end in containers: `lab experiment --runtime docker` builds the CPU images (on the offline
base where no registry can be reached) and runs every backend/mode through docker compose on
synthetic:tiny; the report, the manifest's image ids and the files' owner are then checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.config import BACKEND_MODES, OPT_IN_MODES
from lab.launchers import docker_engine, images

pytestmark = [pytest.mark.docker, pytest.mark.engine]

# First build of the engine images about 3 min, engine starts about 40 s each on 2 cores.
TIMEOUT_S = 3600


@pytest.fixture(scope="module")
def engine() -> None:
    ok, reason = docker_engine.engine_status()
    if not ok:
        pytest.skip(f"no usable Docker engine: {reason}")
    if not os.environ.get("LAB_BASE_IMAGE") and not images.image_exists(images.OFFLINE_BASE):
        pytest.skip(
            f"no {images.OFFLINE_BASE} and no LAB_BASE_IMAGE: run `make base-image-offline` "
            "(or scripts/ci-docker-setup.sh) on hosts that cannot pull"
        )


@pytest.fixture(scope="module")
def experiment(engine, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    results = tmp_path_factory.mktemp("results")
    cache = tmp_path_factory.mktemp("cache")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab",
            "experiment",
            "--runtime",
            "docker",
            "--model",
            "synthetic:tiny",
            "--workload",
            "seed",
            "--results",
            str(results),
            "--cache-dir",
            str(cache),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=images.REPO_ROOT,
        check=False,
    )
    return out, results


def run_dir_of(out: subprocess.CompletedProcess) -> Path:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1])


def test_experiment_exits_zero_and_prints_the_run_folder_last(experiment):
    out, results = experiment
    run_dir = run_dir_of(out)
    assert run_dir.is_dir()
    assert run_dir.resolve().parent == results.resolve()


def test_report_names_every_backend_and_mode(experiment):
    report = (run_dir_of(experiment[0]) / "report.md").read_text()
    for backend, modes in BACKEND_MODES.items():
        for mode in (m for m in modes if (backend, m) not in OPT_IN_MODES):
            assert f"{backend}-{mode}" in report or f"{backend}/{mode}" in report, (backend, mode)


def test_manifest_records_docker_runtime_and_every_image_id(experiment):
    manifest = json.loads((run_dir_of(experiment[0]) / "manifest.json").read_text())
    assert manifest["runtime"] == "docker"
    images = manifest["launcher"]["images"]
    for service in images.SERVICES:
        assert images[service]["tag"].startswith(f"paged-attention-lab/{service}:")
        assert (images[service]["id"] or "").startswith("sha256:"), service


def test_every_result_file_belongs_to_the_host_user(experiment):
    run_dir = run_dir_of(experiment[0])
    paths = [run_dir, *run_dir.rglob("*")]
    wrong = [str(p) for p in paths if p.lstat().st_uid != os.getuid()]
    assert not wrong, f"not owned by uid {os.getuid()}: {wrong[:5]}"
