"""Fixtures shared by every test folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lab.models.build import build_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # what synthetic:tiny's tokenizer is saved as


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
