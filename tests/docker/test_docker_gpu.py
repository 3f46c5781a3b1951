"""The CUDA images on an NVIDIA host whose Docker has the NVIDIA Container Toolkit: every
backend/mode in its container on the GPU, synthetic:tiny, the seed prompts (4) x 16 new tokens.
Skipped, with the reason, where NVML sees no GPU (conftest), where no Docker engine answers, or
where Docker cannot hand GPUs to containers. Not yet run: no machine here has a GPU and Docker."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.config import BACKEND_MODES
from lab.launchers import docker_engine, images

pytestmark = [pytest.mark.gpu, pytest.mark.docker, pytest.mark.engine]

ALL_RUNS = [f"{b}/{m}" for b, modes in BACKEND_MODES.items() for m in modes]
OUTPUT_TOKENS = 16
PASSES = 3  # lab experiment's default --repeats


@pytest.fixture(scope="module")
def cuda_container_run(docker_host, run_lab, tmp_path_factory):
    ok, reason = docker_engine.nvidia_runtime_status()
    if not ok:
        pytest.skip(reason)
    results = tmp_path_factory.mktemp("results")
    proc = run_lab(
        *("experiment", "--runtime", "docker", "--device", "cuda", "--model", "synthetic:tiny"),
        *("--workload", "seed", "--output-tokens", str(OUTPUT_TOKENS), "--batch-size", "2"),
        *("--kv-cache-memory", "1GiB", "--results", str(results)),
        *("--cache-dir", str(tmp_path_factory.mktemp("cache"))),
        timeout_s=5400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def test_every_mode_runs_on_the_gpu_in_its_container(cuda_container_run):
    runs = rf.read_json(cuda_container_run / rf.SUMMARY)["runs"]
    assert [f"{r['backend']}/{r['mode']}" for r in runs] == ALL_RUNS
    assert {f"{r['backend']}/{r['mode']}": r["status"] for r in runs} == {name: "ok" for name in ALL_RUNS}
    assert all(r["device"] == "cuda" for r in runs)
    rows = rf.read_jsonl(cuda_container_run / rf.RECORDS)
    assert len(rows) == 4 * PASSES * len(ALL_RUNS)  # every timed pass's records
    assert {row["pass_index"] for row in rows} == set(range(PASSES))
    assert all(row["status"] == "ok" and row["output_tokens"] == OUTPUT_TOKENS for row in rows)


def test_the_collector_container_sees_the_vllm_engine_core_on_the_gpu(cuda_container_run):
    """NVML reports host pids; with `pid: host` they are the pids of the backend's tree."""
    samples = [s for s in rf.read_jsonl(cuda_container_run / rf.TIMELINE) if s["run"] == "vllm-offline"]
    assert samples and {s["source"] for s in samples} == {"nvml"}
    root_pid = int((cuda_container_run / rf.RUNS / "vllm-offline" / "pid").read_text())
    using_gpu = {int(pid) for s in samples for pid, mib in (s.get("proc_gpu_mib") or {}).items() if mib}
    assert using_gpu and using_gpu != {root_pid}, "the GPU memory should sit in a child process of the run"


def test_manifest_names_the_cuda_images(cuda_container_run):
    manifest = rf.read_json(cuda_container_run / rf.MANIFEST)
    assert manifest["runtime"] == "docker" and manifest["launcher"]["variant"] == "cuda"
    assert manifest["launcher"]["compose_files"] == ["compose.yaml", "compose.gpu.yaml"]
    for service in images.SERVICES:
        assert (manifest["launcher"]["images"][service]["id"] or "").startswith("sha256:"), service
    for name, env in manifest["backend_environments"].items():
        assert env["torch"]["cuda_available"], name
