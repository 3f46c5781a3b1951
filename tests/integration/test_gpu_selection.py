"""Which tests `make test` and `make test-gpu` run: the GPU tests wherever NVML sees a GPU, each
skipped with its reason elsewhere; `make test-gpu` fails, not passes, on a host without a GPU; the
tests that start vLLM on the CPU are skipped, each with its reason, where vLLM is a CUDA build (a GPU
runner), and only those. pytest runs in a subprocess; NVML is the real one of this host."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab.hardware.nvml import gpu_count

REPO = Path(__file__).resolve().parents[2]
GPU_TESTS = REPO / "tests" / "gpu"


def pytest_in_subprocess(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def no_gpu() -> str:
    count, reason = gpu_count()
    if count:
        pytest.skip(f"NVML sees {count} GPU(s) here: the GPU tests run, so their no-GPU skip cannot be seen")
    return reason


def test_gpu_tests_are_collected_not_deselected():
    """`make test` selects the GPU tests everywhere (no `-m 'not gpu'`): NVML decides, not the options."""
    out = pytest_in_subprocess("--collect-only", "-q", str(GPU_TESTS))
    assert out.returncode == 0, out.stdout[-2000:]
    collected = [line for line in out.stdout.splitlines() if "::" in line]
    assert collected and "deselected" not in out.stdout


def test_without_a_gpu_each_gpu_test_is_skipped_with_its_name_and_why(no_gpu):
    out = pytest_in_subprocess("-q", str(GPU_TESTS))
    assert out.returncode == 0, out.stdout[-2000:]
    names = re.findall(r"^def (test_\w+)", (GPU_TESTS / "test_cuda_path.py").read_text(), re.MULTILINE)
    skipped = [line for line in out.stdout.splitlines() if line.startswith("SKIPPED")]
    for name in names:
        assert any(name in line and "NVML sees no GPU" in line for line in skipped), (name, out.stdout[-2000:])


def test_make_test_gpu_fails_with_a_message_without_a_gpu(no_gpu):
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\ntest-gpu:", 1)[1].split("\n\n", 1)[0]
    assert "-m gpu --require-gpu" in recipe, "make test-gpu must not pass with every test skipped"
    out = pytest_in_subprocess("-m", "gpu", "--require-gpu", str(GPU_TESTS))
    assert out.returncode != 0
    assert "NVML sees no GPU" in out.stdout + out.stderr


def fake_cuda_vllm_metadata(folder: Path) -> dict[str, str]:
    """FAKE distribution metadata of a CUDA vLLM (`vllm` 0.26.0, as on the GPU machine), first on the
    path, so that the metadata says what a GPU runner's would; the `vllm` module stays the real one.
    Returns the environment that puts it there."""
    info = folder / "vllm-0.26.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.26.0\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO), os.environ.get("PYTHONPATH", "")])}


def test_with_a_cuda_vllm_each_cpu_engine_test_is_skipped_with_why_and_the_rest_runs(tmp_path):
    """`make test LAB_PYTHON=python3` on a GPU machine: vLLM's CUDA build cannot start on the CPU,
    so each vllm_cpu test is listed as skipped with the reason, before any engine starts; the
    module's tests that start no engine still run and pass."""
    env = fake_cuda_vllm_metadata(tmp_path / "fake_cuda_vllm_metadata")
    module = REPO / "tests" / "integration" / "test_vllm_backend.py"
    out = pytest_in_subprocess("-rs", str(module), env=env)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "vLLM: vllm 0.26.0, not its CPU build" in out.stdout
    marked = re.findall(r"@pytest.mark.vllm_cpu\ndef (test_\w+)", module.read_text())
    skipped = [line for line in out.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(marked) == len(skipped) >= 6
    for name in marked:
        assert any(name in line and "not its CPU build (vllm-cpu)" in line for line in skipped), name
    total = len(re.findall(r"^def test_", module.read_text(), re.MULTILINE))
    assert f"{total - len(marked)} passed, {len(marked)} skipped" in out.stdout
