"""Building a synthetic model locally: config, seeded random weights, and a tokenizer trained here.

The tokenizer is deliberately small (about a thousand tokens) while the config keeps the model's real
`vocab_size`, so the embedding and the lm_head have their real shapes. The model can therefore
generate ids the tokenizer has no token for: backends feed token ids, not text, and vLLM runs with
`detokenize=False`, so nothing ever decodes them. Prompts draw from `prompt_vocab_ids(tokenizer)`.

A built model lives in `<cache>/models/<safe-name>/` (`synthetic:tiny` -> `synthetic-tiny`) and is
complete when its marker `lab_build.json` exists: the build writes into a temporary sibling folder
and renames it into place last, so a folder with that name is never half-written.

Importing this module imports neither torch nor transformers: the host orchestrator (Docker
launcher) asks it for the cache folder on a venv without them. The functions that need an engine
import it where they run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.accounting.kv import dtype_bytes
from lab.models.configs import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, model_config
from lab.models.shapes import ModelShape, synthetic_shape

Progress = Callable[[str], None]

BUILD_MARKER = "lab_build.json"
BUILD_FORMAT = 1  # bump when the layout of a built folder changes, so old builds are rebuilt

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


# ----------------------------------------------------------------------------- the cache


def default_cache_dir() -> Path:
    """`$LAB_CACHE_DIR` if set, else `~/.cache/paged-attention-lab`."""
    env = os.environ.get("LAB_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "paged-attention-lab"


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


# ----------------------------------------------------------------------------- config and tokenizer


def train_tokenizer(vocab_size: int = TOKENIZER_VOCAB_SIZE, model_max_length: int | None = None) -> Any:
    """A byte-level BPE tokenizer trained on `CORPUS`, wrapped for transformers.

    Byte-level: every string encodes (unknown characters fall back to their bytes), so there is no
    <unk>. Special tokens take ids 0-2 (<pad>, <s>, </s>); padding is on the left, as batched
    generation needs. `model_max_length`: the context in tokens (None: unlimited).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415 - heavy: building only
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 - heavy: loaded only where a model is built

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


def load_tokenizer(model_path: str | Path) -> Any:
    """The tokenizer saved with a model (a folder or a hub id)."""
    from transformers import AutoTokenizer  # noqa: PLC0415 - heavy: only the processes that tokenize load transformers

    return AutoTokenizer.from_pretrained(str(model_path))


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
    shape's `save_weights`: yes for tiny, tiny-tp and llama-1b, no for llama-8b and llama-70b, whose
    16 and 141 GB are not worth writing), seeded random weights as safetensors in the shape's dtype.
    Without weights the marker says `has_weights: false` and backends initialise randomly.

    An existing complete build is returned as it is, unless `force`, or it was built with another
    seed or format, or it lacks weights that are now asked for. The build happens in a temporary
    sibling folder that is renamed into place at the end (and removed on any failure), so the
    folder is either complete or absent. Processes that build the same model at once (experiments
    sharing a cache) take turns on a lock file beside it: the first builds, the others reuse it.
    Weights are drawn with torch.manual_seed(seed) on CUDA
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
    with _build_lock(final):
        if not force and _reusable(read_build_marker(final), seed=seed, want_weights=want_weights):
            say(f"{name}: built meanwhile by another process in {final}")
            return final
        _build_into(shape, final, want_weights=want_weights, seed=seed, say=say)
    say(f"{name}: built in {final}")
    return final


@contextlib.contextmanager
def _build_lock(final: Path):
    """An exclusive lock on `<cache>/models/.<name>.lock` for as long as one build runs."""
    with open(final.parent / f".{final.name}.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # closing the file releases it
        yield


def _build_into(shape: ModelShape, final: Path, *, want_weights: bool, seed: int, say: Progress) -> None:
    _remove_stale_temp_folders(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        marker = _write_model(shape, tmp, want_weights=want_weights, seed=seed, say=say)
        (tmp / BUILD_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    config = model_config(shape, ids)
    if want_weights:
        _write_weights(config, shape, folder, seed=seed, say=say)
    else:
        from transformers import GenerationConfig  # noqa: PLC0415 - heavy: loaded only where a model is built

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
    import torch  # noqa: PLC0415 - heavy: loaded only where weights are drawn
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - heavy: loaded only where weights are drawn

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, shape.dtype)
    num_parameters = shape.num_parameters()
    size_gb = num_parameters * dtype_bytes(shape.dtype) / 1e9
    say(
        f"{shape.name}: drawing {num_parameters / 1e9:.3f} B random parameters on {device} "
        f"({shape.dtype}, {size_gb:.2f} GB)"
    )
    torch.manual_seed(seed)
    # The device context allocates the weights where they are drawn, never first on the CPU and then copied.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
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
