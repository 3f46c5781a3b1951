"""lab.models: shapes, what a model costs with hand-computed numbers, name validation (no model is built)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab.accounting.kv import kv_bytes_per_token
from lab.errors import LabInputError
from lab.models import build, resolve
from lab.models.resolve import model_info, resolve_model
from lab.models.shapes import SYNTHETIC, llama_num_parameters


def test_synthetic_shapes_are_the_real_models_shapes():
    one_b, eight_b = SYNTHETIC["synthetic:llama-1b"], SYNTHETIC["synthetic:llama-8b"]
    assert (one_b.num_layers, one_b.hidden_size, one_b.num_heads, one_b.num_kv_heads) == (22, 2048, 32, 4)
    assert (one_b.intermediate_size, one_b.vocab_size, one_b.max_position_embeddings) == (5632, 32000, 2048)
    assert (eight_b.num_layers, eight_b.hidden_size, eight_b.num_heads, eight_b.num_kv_heads) == (32, 4096, 32, 8)
    assert (eight_b.intermediate_size, eight_b.vocab_size, eight_b.max_position_embeddings) == (14336, 128256, 8192)
    assert eight_b.rope_theta == 500000.0
    seventy_b = SYNTHETIC["synthetic:llama-70b"]
    seventy = (seventy_b.num_layers, seventy_b.hidden_size, seventy_b.num_heads, seventy_b.num_kv_heads)
    assert seventy == (80, 8192, 64, 8)
    assert (seventy_b.intermediate_size, seventy_b.vocab_size, seventy_b.head_dim) == (28672, 128256, 128)
    assert seventy_b.num_parameters() == 70_553_706_496  # Llama-3-70B's published count


def test_head_dim_is_hidden_over_heads_and_never_16():
    for shape in SYNTHETIC.values():
        assert shape.head_dim * shape.num_heads == shape.hidden_size
        assert shape.head_dim >= 64  # vLLM's CPU attention kernels reject head_dim 16


def test_only_the_large_shapes_skip_weights_by_default():
    assert {name for name, shape in SYNTHETIC.items() if not shape.save_weights} == {
        "synthetic:llama-8b",
        "synthetic:llama-70b",
    }


def test_kv_bytes_per_token_hand_computed():
    assert kv_bytes_per_token(22, 4, 64, 2) == 2 * 22 * 4 * 64 * 2 == 22528
    assert kv_bytes_per_token(32, 8, 128, 2) == 131072  # Llama-3-8B bf16: 128 KiB per token
    assert kv_bytes_per_token(2, 1, 64, 4) == 1024  # tiny fp32


def test_param_count_matches_published_sizes():
    tinyllama = llama_num_parameters(
        num_layers=22,
        hidden_size=2048,
        num_heads=32,
        num_kv_heads=4,
        head_dim=64,
        intermediate_size=5632,
        vocab_size=32000,
    )
    llama3_8b = llama_num_parameters(
        num_layers=32,
        hidden_size=4096,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=14336,
        vocab_size=128256,
    )
    assert tinyllama == 1_100_048_384
    assert llama3_8b == 8_030_261_248
    assert SYNTHETIC["synthetic:llama-1b"].num_parameters() == tinyllama


def test_model_info_of_unbuilt_synthetic_uses_its_shape(tmp_path):
    info = model_info("synthetic:llama-1b", cache_dir=tmp_path)
    assert info["path"] is None
    assert info["kv_bytes_per_token"] == 22528
    assert info["num_parameters"] == 1_100_048_384
    assert info["weights_bytes"] == 2 * 1_100_048_384
    assert info["torch_dtype"] == "bfloat16" and info["has_weights"] is True
    assert info["architecture"] == "LlamaForCausalLM"
    assert model_info("synthetic:llama-8b", cache_dir=tmp_path)["has_weights"] is False


def test_model_info_dtype_override_scales_bytes(tmp_path):
    info = model_info("synthetic:llama-1b", dtype="float32", cache_dir=tmp_path)
    assert info["dtype"] == "float32" and info["torch_dtype"] == "bfloat16"
    assert info["kv_bytes_per_token"] == 2 * 22 * 4 * 64 * 4 == 45056
    assert info["weights_bytes"] == 4 * 1_100_048_384


def test_model_info_rejects_unknown_dtype(tmp_path):
    with pytest.raises(LabInputError, match="float32, bfloat16, float16"):
        model_info("synthetic:tiny", dtype="int3", cache_dir=tmp_path)


def test_tiny_param_count_matches_the_real_model(tmp_path):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(build.llama_config(SYNTHETIC["synthetic:tiny"]))
    assert model_info("synthetic:tiny", cache_dir=tmp_path)["num_parameters"] == model.num_parameters()


def test_unknown_synthetic_name_lists_the_known_ones(tmp_path):
    with pytest.raises(LabInputError) as error:
        resolve_model("synthetic:foo", tmp_path)
    for name in SYNTHETIC:
        assert name in str(error.value)


def test_missing_path_is_an_input_error(tmp_path):
    with pytest.raises(LabInputError, match="no such folder"):
        resolve_model(str(tmp_path / "nowhere" / "deeper" / "model"), tmp_path)


def test_folder_without_config_is_an_input_error(tmp_path):
    with pytest.raises(LabInputError, match="config.json"):
        resolve_model(str(tmp_path), tmp_path)


def test_local_folder_with_config_resolves_to_itself(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path


def test_unbuilt_synthetic_without_build_says_how_to_build(tmp_path):
    with pytest.raises(LabInputError, match="lab models build synthetic:tiny"):
        resolve_model("synthetic:tiny", tmp_path, build=False)


def test_unknown_hub_id_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub is never asked; the local cache has no such model
    with pytest.raises(LabInputError) as error:
        resolve_model("no-such-org/no-such-model", tmp_path)
    message = str(error.value)
    assert "not found locally or on the hub" in message
    assert "synthetic:tiny" in message and "local folder with config.json" in message


def test_unreachable_hub_is_reported_without_retrying(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # the discard port: refused at once
    assert "unreachable" in resolve._hub_unreachable_reason()


def test_safe_name_and_default_cache(monkeypatch, tmp_path):
    assert build.safe_name("synthetic:llama-1b") == "synthetic-llama-1b"
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    assert build.default_cache_dir() == tmp_path
    assert build.model_dir("synthetic:tiny") == tmp_path / "models" / "synthetic-tiny"
    monkeypatch.delenv("LAB_CACHE_DIR")
    assert build.default_cache_dir() == Path.home() / ".cache" / "paged-attention-lab"


def test_prompt_vocab_ids_exclude_special_tokens():
    tokenizer = build.train_tokenizer(400)
    ids = build.prompt_vocab_ids(tokenizer)
    assert set(tokenizer.all_special_ids).isdisjoint(ids)
    assert ids == sorted(ids) and len(ids) == len(tokenizer) - len(build.SPECIAL_TOKENS)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)


def test_importing_models_does_not_import_torch():
    code = (
        "import sys, lab.models.build, lab.models.resolve, lab.models.shapes; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.stdout.split() == ["False", "False"]
