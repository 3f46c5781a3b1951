"""Building synthetic:tiny for real: the folder loads in transformers, generates, and is built once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lab.models import build
from lab.models.build import BUILD_MARKER, build_model
from lab.models.resolve import model_info, resolve_model

pytestmark = pytest.mark.engine


def _leftovers(folder):
    """Hidden temp/old siblings of a model folder (a finished build leaves none; its lock file stays)."""
    return [p.name for p in folder.parent.iterdir() if p.name.startswith(".") and p.suffix != ".lock"]


def test_tiny_generates_five_tokens_with_transformers(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    batch = tokenizer(["Hello!", "Explain what a KV cache stores."], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 5)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == model.config.pad_token_id
    # Ids beyond the small tokenizer (vocab 2048 > tokenizer) must not break decoding.
    tokenizer.decode([5, len(tokenizer), model.config.vocab_size - 1])


def test_tiny_build_is_complete_and_sized_as_model_info_says(tiny_model):
    from transformers import AutoModelForCausalLM

    info = model_info(tiny_model)
    assert info["has_weights"] is True and info["name"] == "synthetic:tiny"
    assert (tiny_model / "model.safetensors").is_file() and (tiny_model / BUILD_MARKER).is_file()
    assert info["num_parameters"] == AutoModelForCausalLM.from_pretrained(tiny_model).num_parameters()
    assert info["kv_bytes_per_token"] == 2 * 2 * 1 * 64 * 4
    assert _leftovers(tiny_model) == []


def test_second_build_reuses_the_folder(tiny_model):
    marker_mtime_ns = (tiny_model / BUILD_MARKER).stat().st_mtime_ns
    cache = tiny_model.parent.parent
    messages: list[str] = []
    assert build_model("synthetic:tiny", cache, progress=messages.append) == tiny_model
    assert resolve_model("synthetic:tiny", cache) == tiny_model
    assert (tiny_model / BUILD_MARKER).stat().st_mtime_ns == marker_mtime_ns
    assert any("already built" in m for m in messages)


def test_failed_build_leaves_no_temp_folder(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(build, "_write_weights", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        build_model("synthetic:tiny", tmp_path)
    assert [p.name for p in (tmp_path / "models").iterdir()] == [".synthetic-tiny.lock"]  # no model, no temp folder


def test_weightless_build_and_forced_rebuild(tmp_path):
    folder = build_model("synthetic:tiny", tmp_path, weights=False)
    assert model_info(folder)["has_weights"] is False
    assert not list(folder.glob("*.safetensors")) and (folder / "config.json").is_file()
    # Asking for weights now rebuilds in place; the old folder is replaced atomically.
    assert build_model("synthetic:tiny", tmp_path, weights=True) == folder
    assert model_info(folder)["has_weights"] is True
    assert _leftovers(folder) == []


def test_stale_temp_folder_of_a_dead_build_is_removed(tmp_path, monkeypatch):
    models_dir = tmp_path / "models"
    stale = models_dir / ".synthetic-tiny.tmp-999999999-abc"
    stale.mkdir(parents=True)
    monkeypatch.setattr(build, "_pid_alive", lambda pid: False)
    build_model("synthetic:tiny", tmp_path, weights=False)
    assert not stale.exists()


def test_two_processes_building_one_model_at_once_both_get_the_complete_folder(tmp_path):
    """Experiments that share a cache (one per GPU of a host) may build the same model together."""
    command = [sys.executable, "-m", "lab", "models", "build", "synthetic:tiny", "--cache-dir", str(tmp_path)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    folder = build.model_dir("synthetic:tiny", tmp_path)
    assert (folder / BUILD_MARKER).is_file() and (folder / "model.safetensors").is_file()
    assert sum("tokenizer" in out for out in outputs) == 1, outputs  # trained once: the other waited and reused it
    assert _leftovers(folder) == []
