"""Synthetic model specs, their local build, and what a model costs in memory.

There is no model hub on the machines this lab is tested on, so the models it measures are built
locally: a Llama config of a real model's shape, seeded random weights and a byte-level BPE
tokenizer trained in a second on `CORPUS`. Throughput and KV-cache memory depend on the shapes
(layers, KV heads, head_dim, vocabulary), not on what the weights have learned, so a random model of
TinyLlama's shape costs what TinyLlama costs.

The tokenizer is deliberately small (about a thousand tokens) while the config keeps the model's real
`vocab_size`, so the embedding and the lm_head have their real shapes. The model can therefore
generate ids the tokenizer has no token for: backends feed token ids, not text, and vLLM runs with
`detokenize=False`, so nothing ever decodes them. Prompts draw from `prompt_vocab_ids(tokenizer)`.

A built model lives in `<cache>/models/<safe-name>/` (`synthetic:tiny` -> `synthetic-tiny`) and is
complete when its marker `lab_build.json` exists: the build writes into a temporary sibling folder
and renames it into place last, so a folder with that name is never half-written.

`import lab.models` imports neither torch nor transformers (the report path must stay light); the
functions that need them import them inside.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from lab.errors import LabInputError

Progress = Callable[[str], None]

SYNTHETIC_PREFIX = "synthetic:"
BUILD_MARKER = "lab_build.json"
BUILD_FORMAT = 1  # bump when the layout of a built folder changes, so old builds are rebuilt
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")
HUB_PROBE_TIMEOUT_S = 3.0

# Special tokens get the first ids, in Llama's order: <unk>/<pad> 0, <s> 1, </s> 2.
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)
# Target size of the trained tokenizer: 256 bytes + 3 specials + merges. The corpus runs out of
# pairs to merge before that, so the real size is a little smaller (it is written in the marker).
TOKENIZER_VOCAB_SIZE = 1024

CORPUS = """\
PagedAttention stores the KV cache in fixed-size blocks of tokens, like pages of virtual memory.
A block table maps each sequence's logical blocks to physical blocks anywhere in GPU memory.
Without paging, a serving system reserves a contiguous slot for the longest possible output.
Most of that reservation is never used: the paper measured only 20 to 40 percent of it holding tokens.
With blocks, the waste is at most one partly filled block per sequence.
The key and value of every past token are kept so that the next token can attend to them.
Prefill processes the whole prompt at once and is bound by compute.
Decode produces one token per step and is bound by memory bandwidth, reading every weight each step.
Batching many sequences shares each weight read among them, so throughput grows with the batch.
The KV cache, not the weights, limits how many sequences fit in a batch.
For each token, each layer stores one key and one value vector per key-value head.
Grouped-query attention shares key-value heads among query heads and shrinks the cache.
Continuous batching admits a new request as soon as another one finishes.
Copy-on-write lets parallel samples share the blocks of a common prompt.
Prefix caching reuses blocks whose tokens were already computed for an earlier request.
Hello! Thanks! Explain in one paragraph what a KV cache stores, and why.
The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 512 1024.
def attention(query, key, value): return softmax(query @ key.T / sqrt(head_dim)) @ value
Tokens per second, time to first token, and peak memory are measured for each backend.
Every request receives the same prompt token ids and generates the same number of tokens.
"""


@dataclass(frozen=True)
class ModelShape:
    """The shape of a decoder-only Llama model: everything that sets its memory and compute cost."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int  # query heads
    num_kv_heads: int  # key-value heads (fewer than num_heads: grouped-query attention)
    head_dim: int
    intermediate_size: int  # MLP width
    vocab_size: int  # rows of the embedding and of the lm_head (may exceed the tokenizer's size)
    max_position_embeddings: int  # context length in tokens
    dtype: str  # dtype the weights are saved in
    rope_theta: float
    save_weights: bool  # default of build_model(weights=None)

    def to_dict(self) -> dict:
        return asdict(self)


SYNTHETIC: dict[str, ModelShape] = {
    shape.name: shape
    for shape in (
        # head_dim 64: vLLM's CPU attention kernels reject head_dim 16, so the tiny model cannot be tinier.
        ModelShape("synthetic:tiny", num_layers=2, hidden_size=128, num_heads=2, num_kv_heads=1,
                   head_dim=64, intermediate_size=256, vocab_size=2048, max_position_embeddings=2048,
                   dtype="float32", rope_theta=10000.0, save_weights=True),
        # TinyLlama-1.1B.
        ModelShape("synthetic:llama-1b", num_layers=22, hidden_size=2048, num_heads=32, num_kv_heads=4,
                   head_dim=64, intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048,
                   dtype="bfloat16", rope_theta=10000.0, save_weights=True),
        # Llama-3-8B. Its weights are 16 GB in bf16: writing and reading them back costs minutes and
        # disk for numbers that random init gives as well, so by default only config + tokenizer are
        # saved and backends initialise randomly (HF from_config, vLLM load_format="dummy").
        ModelShape("synthetic:llama-8b", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
                   head_dim=128, intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192,
                   dtype="bfloat16", rope_theta=500000.0, save_weights=False),
    )
}


# ----------------------------------------------------------------------------- names and folders


def default_cache_dir() -> Path:
    """`$LAB_CACHE_DIR` if set, else `~/.cache/paged-attention-lab`."""
    env = os.environ.get("LAB_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "paged-attention-lab"


def synthetic_names() -> str:
    return ", ".join(SYNTHETIC)


def synthetic_shape(name: str) -> ModelShape:
    """The shape of `synthetic:NAME`; LabInputError naming the known ones otherwise."""
    if name not in SYNTHETIC:
        raise LabInputError(f"unknown synthetic model {name!r}: choose from {synthetic_names()}")
    return SYNTHETIC[name]


def safe_name(name: str) -> str:
    """'synthetic:llama-1b' -> 'synthetic-llama-1b': a folder name on every filesystem."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")


def model_dir(name: str, cache_dir: Path | None = None) -> Path:
    """Where `build_model(name)` puts the model: `<cache>/models/<safe-name>`."""
    return Path(cache_dir or default_cache_dir()) / "models" / safe_name(name)


def read_build_marker(folder: Path) -> dict | None:
    """The marker of a complete lab build, or None where the folder is not one."""
    try:
        return json.loads((Path(folder) / BUILD_MARKER).read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- accounting


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of 'float32' (4), 'bfloat16' (2) or 'float16' (2)."""
    if dtype not in DTYPE_BYTES:
        raise LabInputError(f"unknown dtype {dtype!r}: choose from {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes_: int) -> int:
    """KV-cache bytes one token occupies: 2 (key and value) x layers x kv_heads x head_dim x dtype bytes.

    TinyLlama in bf16: 2 x 22 x 4 x 64 x 2 = 22,528 bytes (22 KiB) per token.
    """
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes_


def llama_num_parameters(
    *,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    intermediate_size: int,
    vocab_size: int,
    tie_word_embeddings: bool = False,
    attention_bias: bool = False,
    mlp_bias: bool = False,
) -> int:
    """Parameters of a Llama decoder, from its shapes.

    per layer: q (H x nh*d) + k, v (H x kv*d each) + o (nh*d x H) + gate, up, down (H x I each)
               + 2 RMSNorm weights (H each)
    total: embedding (V x H) + layers x per layer + final norm (H) + lm_head (V x H, unless tied).
    TinyLlama-1.1B: 1,100,048,384; Llama-3-8B: 8,030,261,248.
    """
    q_dim, kv_dim = num_heads * head_dim, num_kv_heads * head_dim
    attention = hidden_size * q_dim + 2 * hidden_size * kv_dim + q_dim * hidden_size
    if attention_bias:
        attention += q_dim + 2 * kv_dim + hidden_size
    mlp = 3 * hidden_size * intermediate_size
    if mlp_bias:
        mlp += 2 * intermediate_size + hidden_size
    per_layer = attention + mlp + 2 * hidden_size
    embeddings = vocab_size * hidden_size * (1 if tie_word_embeddings else 2)
    return embeddings + num_layers * per_layer + hidden_size


# ----------------------------------------------------------------------------- configs


def llama_config(shape: ModelShape, tokenizer_ids: dict[str, int] | None = None) -> Any:
    """A transformers LlamaConfig of `shape`, with the special-token ids of the lab tokenizer."""
    from transformers import LlamaConfig

    ids = tokenizer_ids or {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_position_embeddings,
        rope_theta=shape.rope_theta,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=ids[PAD_TOKEN],
        bos_token_id=ids[BOS_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        dtype=shape.dtype,
    )
    # NOTE: save_pretrained of the model sets this, but a weights-less build saves the config alone,
    # and vLLM picks its model class from this field.
    config.architectures = ["LlamaForCausalLM"]
    return config


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
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model.num_parameters()


def _has_weights(folder: Path) -> bool:
    marker = read_build_marker(folder)
    if marker is not None:
        return bool(marker["has_weights"])
    return any(any(folder.glob(pattern)) for pattern in WEIGHT_FILE_PATTERNS)


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
    from transformers import AutoConfig

    text = str(path_or_id)
    if text.startswith(SYNTHETIC_PREFIX):
        shape = synthetic_shape(text)
        folder = model_dir(text, cache_dir)
        if read_build_marker(folder) is None:
            return llama_config(shape), text, None, shape.save_weights
        return AutoConfig.from_pretrained(folder), text, str(folder), _has_weights(folder)
    folder = Path(text).expanduser()
    if (folder / "config.json").is_file():
        marker = read_build_marker(folder)
        name = marker["name"] if marker else folder.name
        return AutoConfig.from_pretrained(folder), name, str(folder), _has_weights(folder)
    # A hub id: resolve_model has validated it; a hub model always has weights.
    return AutoConfig.from_pretrained(text), text, text, True


# ----------------------------------------------------------------------------- tokenizer


def train_tokenizer(vocab_size: int = TOKENIZER_VOCAB_SIZE, model_max_length: int | None = None) -> Any:
    """A byte-level BPE tokenizer trained on `CORPUS`, wrapped for transformers.

    Byte-level: every string encodes (unknown characters fall back to their bytes), so there is no
    <unk>. Special tokens take ids 0-2 (<pad>, <s>, </s>); padding is on the left, as batched
    generation needs. `model_max_length`: the context in tokens (None: unlimited).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        **({"model_max_length": model_max_length} if model_max_length else {}),
    )


def prompt_vocab_ids(tokenizer: Any) -> list[int]:
    """The ordinary token ids (no special or added tokens), sorted: what synthetic prompts draw from."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return sorted(set(tokenizer.get_vocab().values()) - special)


# ----------------------------------------------------------------------------- build


def build_model(
    name: str,
    cache_dir: Path | None = None,
    *,
    weights: bool | None = None,
    seed: int = 0,
    force: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Build `synthetic:NAME` into `<cache>/models/<safe-name>` and return that folder.

    Writes config.json, generation_config.json, the tokenizer and, when `weights` (default: the
    shape's `save_weights`: yes for tiny and llama-1b, no for llama-8b, whose 16 GB are not worth
    writing), seeded random weights as safetensors in the shape's dtype. Without weights the marker
    says `has_weights: false` and backends initialise randomly.

    An existing complete build is returned as it is, unless `force`, or it was built with another
    seed or format, or it lacks weights that are now asked for. The build happens in a temporary
    sibling folder that is renamed into place at the end (and removed on any failure), so the
    folder is either complete or absent. Weights are drawn with torch.manual_seed(seed) on CUDA
    where available, else on the CPU; the two devices draw different numbers from the same seed.
    """
    shape = synthetic_shape(name)
    want_weights = shape.save_weights if weights is None else weights
    final = model_dir(name, cache_dir)
    say = progress or (lambda message: None)
    if not force and _reusable(read_build_marker(final), seed=seed, want_weights=want_weights):
        say(f"{name}: already built in {final}")
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_folders(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        marker = _write_model(shape, tmp, want_weights=want_weights, seed=seed, say=say)
        (tmp / BUILD_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"{name}: built in {final}")
    return final


def _reusable(marker: dict | None, *, seed: int, want_weights: bool) -> bool:
    """A finished build can be reused when it has the same seed and format and any weights asked for."""
    if marker is None:
        return False
    same_build = marker.get("seed") == seed and marker.get("format") == BUILD_FORMAT
    return same_build and (marker.get("has_weights", False) or not want_weights)


def _write_model(shape: ModelShape, folder: Path, *, want_weights: bool, seed: int, say: Progress) -> dict:
    """Tokenizer, config and (optionally) weights into `folder`; returns the build marker."""
    started_s = time.perf_counter()
    say(f"{shape.name}: training the tokenizer on the built-in corpus")
    tokenizer = train_tokenizer(min(TOKENIZER_VOCAB_SIZE, shape.vocab_size), shape.max_position_embeddings)
    tokenizer.save_pretrained(folder)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = llama_config(shape, ids)
    if want_weights:
        _write_weights(config, shape, folder, seed=seed, say=say)
    else:
        from transformers import GenerationConfig

        config.save_pretrained(folder)
        GenerationConfig.from_model_config(config).save_pretrained(folder)
    return {
        "name": shape.name,
        "format": BUILD_FORMAT,
        "seed": seed,
        "has_weights": want_weights,
        "tokenizer_vocab_size": len(tokenizer),
        "shape": shape.to_dict(),
        "build_s": round(time.perf_counter() - started_s, 3),
    }


def _write_weights(config: Any, shape: ModelShape, folder: Path, *, seed: int, say: Progress) -> None:
    """Seeded random weights in the shape's dtype, saved with the config as safetensors."""
    import torch
    from transformers import LlamaForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, shape.dtype)
    num_parameters = _num_parameters(config)
    size_gb = num_parameters * dtype_bytes(shape.dtype) / 1e9
    say(f"{shape.name}: drawing {num_parameters / 1e9:.3f} B random parameters on {device} ({shape.dtype}, {size_gb:.2f} GB)")
    torch.manual_seed(seed)
    # The device context allocates the weights where they are drawn, never first on the CPU and then copied.
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    say(f"{shape.name}: saving weights to safetensors")
    model.save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def _replace_folder(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an older `final` is moved aside first and removed after."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale_temp_folders(final: Path) -> None:
    """Remove temporary build folders of `final` left by processes that died mid-build (e.g. killed).

    The temp folder name carries the builder's pid; a folder whose pid is alive belongs to a build
    still running and is left alone.
    """
    for leftover in final.parent.glob(f".{final.name}.*-*"):
        match = re.match(rf"\.{re.escape(final.name)}\.(?:tmp|old)-(\d+)-", leftover.name)
        if match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(leftover, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


# ----------------------------------------------------------------------------- resolve


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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
    passes here and is checked when the model is prepared.
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


def _check_hub_id(model_id: str) -> None:
    """LabInputError unless the config of hub id `model_id` is in the local hub cache or on the hub.

    The local cache is tried first. The hub is asked only when it answers a TCP connection within
    HUB_PROBE_TIMEOUT_S: huggingface_hub retries an unreachable host for about 20 s, which would
    make every offline typo slow. HF_HUB_OFFLINE=1 is respected by transformers itself.
    """
    from transformers import AutoConfig

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
