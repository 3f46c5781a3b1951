"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.hardware.nvml import gpu_count
from lab.models.build import build_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """synthetic:tiny, built once per test session into its own cache; the model folder's Path."""
    return build_model("synthetic:tiny", tmp_path_factory.mktemp("lab-cache"))


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The `gpu` tests run wherever NVML sees a GPU (so `make test` on a GPU runner tests the GPU);
    elsewhere each is skipped with the reason, which -ra lists at the end of the run."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    count, reason = gpu_count()
    if count:
        return
    for item in gpu_items:  # the test's name in the reason, so that -ra lists each one
        item.add_marker(
            pytest.mark.skip(
                reason=f"{item.name}: GPU test, NVML sees no GPU on this host "
                f"({reason}); `make test-gpu` on an NVIDIA host runs it"
            )
        )
