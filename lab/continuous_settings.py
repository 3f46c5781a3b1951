"""The settings of hf/continuous: transformers' continuous batching over its paged KV cache.

They are the knobs transformers' `ContinuousBatchingConfig` exposes for speed, given on the command
line as one option, `--hf-continuous KEY=VALUE,...`, and written into every result with the figures
they produced. The KV pool itself is not here: it is sized like vLLM's, from `--kv-cache-memory` or
vLLM's rule (`lab.accounting.continuous`), so that both paged engines get the same memory.

    attn             sdpa (default) | eager | flash_attention_2 | flash_attention_3: the attention kernel.
                     sdpa and eager gather each request's K/V from the pool and attend densely, with
                     a block-diagonal mask over the whole batch; only flash reads the blocks in place
                     (and only flash has transformers' decode fast path, a block-table kernel).
    block_size       tokens per KV block (transformers' `page_size`, `block_size` before 5.18);
                     auto: the experiment's --block-size, the same as vLLM's.
    max_batch_tokens tokens one engine step may carry (prefill chunks plus one per decoding request);
                     auto: see `lab.accounting.continuous.auto_max_batch_tokens`.
    cuda_graphs      on | off | auto (transformers' choice: off where an attention mask is needed,
                     i.e. for sdpa and eager).
    compile_level    0 (default, no torch.compile) to 3: transformers' `default_compile_level`.
    async_batching   on | off | auto (transformers' choice: on only with CUDA graphs and flash).

Nothing here imports torch or transformers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lab.errors import LabInputError

KERNELS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
BLOCK_SIZES = (8, 16, 32, 64, 128, 256, 512)
COMPILE_LEVELS = (0, 1, 2, 3)
MIN_BATCH_TOKENS = 16
EXAMPLE = "--hf-continuous cuda_graphs=on,max_batch_tokens=2048,block_size=256"


@dataclass(frozen=True)
class ContinuousSettings:
    """What hf/continuous asks of transformers; None means "auto" (the lab's or transformers' default)."""

    attn: str = "sdpa"
    block_size: int | None = None
    max_batch_tokens: int | None = None
    cuda_graphs: bool | None = None
    compile_level: int = 0
    async_batching: bool | None = None

    def __post_init__(self) -> None:
        if self.attn not in KERNELS:
            raise LabInputError(f"hf/continuous attn={self.attn!r}: choose from {', '.join(KERNELS)} ({EXAMPLE})")
        if self.block_size is not None and self.block_size not in BLOCK_SIZES:
            raise LabInputError(
                f"hf/continuous block_size={self.block_size}: choose from "
                f"{', '.join(map(str, BLOCK_SIZES))} or auto ({EXAMPLE})"
            )
        if self.max_batch_tokens is not None and self.max_batch_tokens < MIN_BATCH_TOKENS:
            raise LabInputError(
                f"hf/continuous max_batch_tokens={self.max_batch_tokens}: give at least "
                f"{MIN_BATCH_TOKENS}, or auto ({EXAMPLE})"
            )
        if self.compile_level not in COMPILE_LEVELS:
            raise LabInputError(f"hf/continuous compile_level={self.compile_level}: choose 0 (off) to 3 ({EXAMPLE})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def coerce(cls, value: ContinuousSettings | dict | str | None) -> ContinuousSettings:
        """The settings from what a config may hold: the object, its dict (a manifest), the option's text, None."""
        if isinstance(value, cls):
            return value
        if value is None:
            return cls()
        if isinstance(value, str):
            return parse_continuous_settings(value)
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise LabInputError(f"hf/continuous settings: unknown keys {', '.join(sorted(unknown))}")
            return cls(**value)
        raise LabInputError(f"hf/continuous settings: cannot read {value!r}")


def parse_continuous_settings(text: str | None) -> ContinuousSettings:
    """'cuda_graphs=on,max_batch_tokens=2048' -> ContinuousSettings; '' or None -> the defaults."""
    if not text or not text.strip():
        return ContinuousSettings()
    fields = {f.name for f in dataclasses.fields(ContinuousSettings)}
    values: dict = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, raw = (s.strip() for s in item.partition("="))
        if not sep or key not in fields:
            raise LabInputError(
                f"--hf-continuous: cannot read {item!r}: write KEY=VALUE with KEY one of "
                f"{', '.join(sorted(fields))} ({EXAMPLE})"
            )
        values[key] = _value(key, raw)
    return ContinuousSettings(**values)


def _value(key: str, raw: str):
    lowered = raw.lower()
    if key == "attn":
        return lowered
    if key in ("cuda_graphs", "async_batching"):
        choices = {"on": True, "true": True, "off": False, "false": False, "auto": None}
        if lowered not in choices:
            raise LabInputError(f"--hf-continuous {key}={raw}: write on, off or auto")
        return choices[lowered]
    if lowered == "auto" and key != "compile_level":
        return None
    try:
        return int(raw)
    except ValueError:
        raise LabInputError(
            f"--hf-continuous {key}={raw}: write a whole number" + (" or auto" if key != "compile_level" else "")
        ) from None
