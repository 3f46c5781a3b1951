"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.models.build import build_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """synthetic:tiny, built once per test session into its own cache; the model folder's Path."""
    return build_model("synthetic:tiny", tmp_path_factory.mktemp("lab-cache"))
