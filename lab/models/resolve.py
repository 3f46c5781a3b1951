"""What a model name means: a synthetic model (built on first use), a local folder or a hub id;
and what the model costs, read from its config alone.

Importing this module imports no engine: the CLI checks model names with it before any engine
starts. The functions that read a config import transformers where they run.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lab.accounting.kv import dtype_bytes, kv_bytes_per_token
from lab.errors import LabInputError
from lab.models.build import Progress, build_model, model_dir, read_build_marker
from lab.models.configs import model_config
from lab.models.shapes import SYNTHETIC_PREFIX, llama_num_parameters, synthetic_names, synthetic_shape

WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")
# Any one of these makes a folder's tokenizer loadable: fast (tokenizers), SentencePiece, BPE, WordPiece.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
HUB_PROBE_TIMEOUT_S = 3.0
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ----------------------------------------------------------------------------- names


def resolve_model(
    name: str, cache_dir: Path | None = None, *, build: bool = True, progress: Progress | None = None
) -> Path | str:
    """A model name -> what backends load: a local folder (Path) or a hub id (str, unchanged).

    - `synthetic:NAME`: its built folder, built first if missing and `build`.
    - a folder with config.json: that folder.
    - `org/name` that is no local folder: the hub id, once its config is found (cache or hub).
    Anything else raises LabInputError saying what is accepted.
    """
    text = str(name).strip()
    if text.startswith(SYNTHETIC_PREFIX):
        return _resolve_synthetic(text, cache_dir, build=build, progress=progress)
    folder = Path(text).expanduser()
    if folder.exists():
        if (folder / "config.json").is_file():
            return folder
        raise LabInputError(f"{folder} has no config.json: {_accepted()}")
    if HUB_ID.match(text):
        _check_hub_id(text)
        return text
    raise LabInputError(f"model {text!r} not found: no such folder. {_accepted().capitalize()}")


def check_model_name(name: str) -> None:
    """Validate a model name without building or downloading anything (fails fast, exit 2).

    A synthetic name must be known; a local path must exist with config.json; a hub id (org/name)
    passes here and is checked when the model is resolved (`lab resolve`).
    """
    text = str(name).strip()
    if text.startswith(SYNTHETIC_PREFIX):
        synthetic_shape(text)
        return
    folder = Path(text).expanduser()
    if folder.exists():
        if not (folder / "config.json").is_file():
            raise LabInputError(f"{folder} has no config.json: {_accepted()}")
        return
    if not HUB_ID.match(text):
        raise LabInputError(f"model {text!r} not found: no such folder. {_accepted().capitalize()}")


def _accepted() -> str:
    return f"use one of {synthetic_names()}, a hub id (org/name), or a local folder with config.json"


def _resolve_synthetic(name: str, cache_dir: Path | None, *, build: bool, progress: Progress | None) -> Path:
    synthetic_shape(name)
    if build:
        return build_model(name, cache_dir, progress=progress)
    folder = model_dir(name, cache_dir)
    if read_build_marker(folder) is None:
        raise LabInputError(f"{name} is not built yet in {folder}: run `lab models build {name}`")
    return folder


def has_weights(path_or_id: str | Path) -> bool:
    """Whether a model folder holds saved weights (else backends initialise randomly); a hub id has them.

    A lab build says so in its marker; any other folder, by its weight files.
    """
    folder = Path(path_or_id)
    if not folder.is_dir():
        return True
    marker = read_build_marker(folder)
    if marker is not None:
        return bool(marker["has_weights"])
    return any(any(folder.glob(pattern)) for pattern in WEIGHT_FILE_PATTERNS)


def has_tokenizer(path_or_id: str | Path) -> bool:
    """Whether a model folder holds a tokenizer (`TOKENIZER_FILES`); a hub id is assumed to have one.

    A folder without one still runs workloads of token counts: prompts are drawn from the config's
    vocabulary (`config_prompt_ids`), and the backends feed token ids, never text.
    """
    folder = Path(path_or_id)
    if not folder.is_dir():
        return True
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


class MissingTokenizer:
    """Stands in for the tokenizer of a model folder that has none: a workload of token counts never
    calls it; a text prompt gets a LabInputError that names the missing files and the fix."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        raise LabInputError(
            f"the workload has text prompts, but model folder {self.folder} has no tokenizer (none of "
            f"{', '.join(TOKENIZER_FILES)}). Fix: copy the model's tokenizer files into the folder, or use a "
            'workload of token counts: sharegpt-like, or file:PATH.jsonl with {"prompt_tokens": N, '
            '"output_tokens": N} lines'
        )


def config_prompt_ids(folder: Path) -> list[int]:
    """The ids prompts draw from without a tokenizer: the config's vocabulary less its special ids."""
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    special: set[int] = set()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = config.get(key)
        special.update(value if isinstance(value, list) else [] if value is None else [value])
    return [i for i in range(int(config["vocab_size"])) if i not in special]


# ----------------------------------------------------------------------------- the hub


def _check_hub_id(model_id: str) -> None:
    """LabInputError unless the config of hub id `model_id` is in the local hub cache or on the hub.

    The local cache is tried first. The hub is asked only when it answers a TCP connection within
    HUB_PROBE_TIMEOUT_S: huggingface_hub retries an unreachable host for about 20 s, which would
    make every offline typo slow. HF_HUB_OFFLINE=1 is respected by transformers itself.
    """
    from transformers import AutoConfig  # noqa: PLC0415 - heavy: loaded only when a hub id is checked

    try:
        AutoConfig.from_pretrained(model_id, local_files_only=True)
        return
    except Exception:  # noqa: BLE001 - any failure here only means "not in the local cache"
        pass
    reason = _hub_unreachable_reason()
    if reason is None:
        try:
            AutoConfig.from_pretrained(model_id)
            return
        except Exception as error:  # noqa: BLE001 - 404, gated, network: all mean "cannot use it"
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    raise LabInputError(
        f"model {model_id!r} was not found locally or on the hub ({reason}). {_accepted().capitalize()}"
    )


def _hub_unreachable_reason() -> str | None:
    """Why the hub cannot be asked now (offline mode, no route), or None when it answers."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # behind a proxy a direct connection proves nothing; let the hub client try
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as error:
        return f"{host} is unreachable: {error}"
    return None


# ----------------------------------------------------------------------------- what a model costs


def model_info(path_or_id: str | Path, *, dtype: str | None = None, cache_dir: Path | None = None) -> dict:
    """What a model costs, read from its config alone (no weights are loaded).

    `path_or_id`: a model folder, a hub id, or `synthetic:NAME` (its built folder if there is one,
    else the shape it would be built with). `dtype`: the dtype the model runs in ('float32',
    'bfloat16', 'float16'); default the config's. Byte figures use that dtype:
    weights_bytes = num_parameters x dtype bytes;
    kv_bytes_per_token = 2 x num_layers x num_kv_heads x head_dim x dtype bytes.
    """
    config, name, path, has_weights = _load_config(path_or_id, cache_dir)
    run_dtype = dtype or _config_dtype(config)
    element_bytes = dtype_bytes(run_dtype)
    num_parameters = _num_parameters(config)
    num_kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = _config_head_dim(config)
    architectures = getattr(config, "architectures", None) or [config.model_type]
    return {
        "name": name,
        "path": path,
        "architecture": architectures[0],
        "num_layers": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "num_kv_heads": num_kv_heads,
        "head_dim": head_dim,
        "hidden_size": config.hidden_size,
        "intermediate_size": getattr(config, "intermediate_size", None),
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "torch_dtype": _config_dtype(config),
        "dtype": run_dtype,
        "dtype_bytes": element_bytes,
        "num_parameters": num_parameters,
        "weights_bytes": num_parameters * element_bytes,
        "has_weights": has_weights,
        "kv_bytes_per_token": kv_bytes_per_token(config.num_hidden_layers, num_kv_heads, head_dim, element_bytes),
    }


def _load_config(path_or_id: str | Path, cache_dir: Path | None) -> tuple[Any, str, str | None, bool]:
    """(config, name, path or hub id or None, has_weights) of a synthetic name, a folder or a hub id."""
    from transformers import AutoConfig  # noqa: PLC0415 - heavy: loaded only when a config is read

    text = str(path_or_id)
    if text.startswith(SYNTHETIC_PREFIX):
        shape = synthetic_shape(text)
        folder = model_dir(text, cache_dir)
        if read_build_marker(folder) is None:
            return model_config(shape), text, None, shape.save_weights
        return AutoConfig.from_pretrained(folder), text, str(folder), has_weights(folder)
    folder = Path(text).expanduser()
    if (folder / "config.json").is_file():
        marker = read_build_marker(folder)
        name = marker["name"] if marker else folder.name
        return AutoConfig.from_pretrained(folder), name, str(folder), has_weights(folder)
    # A hub id: resolve_model has validated it; a hub model always has weights.
    return AutoConfig.from_pretrained(text), text, text, True


def _config_dtype(config: Any) -> str:
    """The dtype a config declares ('bfloat16'), float32 where it declares none."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if value is None:
        return "float32"
    return str(value).removeprefix("torch.")


def _config_head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _num_parameters(config: Any) -> int:
    """Parameters from the config: the Llama formula where the layout is Llama's, else a meta-device model.

    The meta device gives shapes without allocating memory, so even an 8B model costs nothing here.
    """
    if getattr(config, "model_type", None) in ("llama", "mistral"):
        return llama_num_parameters(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            num_heads=config.num_attention_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            head_dim=_config_head_dim(config),
            intermediate_size=config.intermediate_size,
            vocab_size=config.vocab_size,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            attention_bias=bool(getattr(config, "attention_bias", False)),
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
        )
    import torch  # noqa: PLC0415 - heavy: only a layout other than Llama's is counted on the meta device
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - heavy: as torch, just above

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model.num_parameters()
