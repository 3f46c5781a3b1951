"""Building hf/continuous's engine: transformers' `ContinuousBatchingManager` over a pool sized as vLLM's.

`lab.backends.hf_continuous` drives the manager; this module makes it, once per process, and says
what it made (`describe`, for result.json's `engine`):
- the attention kernel (`set_attention`), named as the installed transformers names it;
- the pool (`plan_pool`): `--kv-cache-memory` bytes, or vLLM's rule, in blocks of vLLM's block
  formula (`lab.accounting.continuous`);
- the manager (`build_manager`): `ContinuousBatchingConfig` from the lab's settings (block sharing and
  n samples as `lab.backends.hf_continuous_sharing` says), warmed up (the
  pool allocated and CUDA graphs captured) before anything is timed. With max_batch_tokens auto and
  transformers' own memory check refusing it, max_batch_tokens is halved until it fits.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import psutil
import torch
import transformers
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching.utils import WorkloadHints

from lab.accounting.continuous import (
    MIN_AUTO_BATCH_TOKENS,
    RESERVED_BLOCKS,
    auto_max_batch_tokens,
    bytes_per_block,
    mask_bytes,
    num_blocks_for_budget,
    pool_budget_bytes,
)
from lab.backends.hf_continuous_hooks import (
    VERIFIED_TRANSFORMERS,
    cache_view,
    paged_attention_name,
    plain_sdpa_is_paged,
)
from lab.backends.hf_continuous_sharing import block_sharing, generation_options
from lab.config import RunSpec
from lab.errors import LabInputError
from lab.models.resolve import model_info

NO_EOS = -1  # transformers ignores negative EOS ids: every request runs to its max_new_tokens


def set_attention(model, kernel: str) -> None:
    """The paged attention implementation for `kernel` ('sdpa', 'eager', 'flash_attention_2', ...)."""
    name = paged_attention_name(kernel, plain_sdpa_is_paged())
    try:
        model.set_attn_implementation(name)
    except (ImportError, ValueError) as exc:
        raise LabInputError(
            f"hf/continuous attn={kernel}: transformers refused {name!r} ({exc}); "
            "use attn=sdpa or install the kernel's package"
        ) from None


def plan_pool(spec: RunSpec, model, model_path: str, dtype: str, device: str) -> dict:
    """The pool vLLM would get, in blocks of the chosen size (see lab.accounting.continuous)."""
    engine, settings = spec.engine, spec.engine.hf_continuous
    block_size = settings.block_size or engine.block_size
    per_token = model_info(model_path, dtype=dtype)["kv_bytes_per_token"]
    budget, rule = pool_budget_bytes(
        engine.kv_cache_memory_bytes, engine.gpu_memory_utilization, device, lambda: device_memory(device)
    )
    block_bytes = bytes_per_block(per_token, block_size)
    return {
        "budget_bytes": budget,
        "rule": rule,
        "block_size": block_size,
        "kv_bytes_per_token": per_token,
        "bytes_per_block": block_bytes,
        "num_blocks": num_blocks_for_budget(budget, block_bytes),
        "dtype_bytes": torch.empty((), dtype=model.dtype).element_size(),
    }


def device_memory(device: str) -> tuple[int, int]:
    """(total bytes, bytes in use now) of the device the pool goes on."""
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        return total, total - free
    memory = psutil.virtual_memory()
    return memory.total, memory.total - memory.available


def build_manager(model, spec: RunSpec, pool: dict):
    """A warmed-up manager and how max_batch_tokens was chosen.

    With max_batch_tokens auto, transformers' own memory check may still refuse (it plans for the
    mask and the K/V read back at their largest): halve and try again, down to 64.
    """
    settings = spec.engine.hf_continuous
    tokens = settings.max_batch_tokens
    if tokens is not None:
        return _try_manager(model, spec, pool, tokens, fixed=True), "given"
    needs_mask = settings.attn in ("sdpa", "eager")
    pool_tokens, pool_bytes = pool["num_blocks"] * pool["block_size"], pool["num_blocks"] * pool["bytes_per_block"]
    tokens = auto_max_batch_tokens(pool_tokens, pool_bytes, pool["dtype_bytes"], needs_mask)
    rule = "auto: 8192, halved while the attention mask would outgrow the KV pool" if needs_mask else "auto: 8192"
    while True:
        manager = _try_manager(model, spec, pool, tokens, fixed=tokens <= MIN_AUTO_BATCH_TOKENS)
        if manager is not None:
            return manager, rule
        tokens //= 2
        rule = rule.split(";")[0] + "; then halved until transformers' own memory check accepted it"


def _try_manager(model, spec: RunSpec, pool: dict, max_batch_tokens: int, fixed: bool):
    """The manager with this max_batch_tokens; None if transformers refuses it for memory (unless fixed)."""
    config = continuous_batching_config(spec, pool, max_batch_tokens)
    context = spec.engine.max_model_len or model.config.max_position_embeddings
    manager = model.init_continuous_batching(
        # greedy, or n samples forked per request (lab.backends.hf_continuous_sharing)
        generation_config=GenerationConfig(**generation_options(spec.engine), eos_token_id=NO_EOS),
        continuous_batching_config=config,
        # Sizes transformers' decode fast path (flash only) for any request up to the context.
        workload_hints=WorkloadHints(max_prompt_length=context, max_generated_length=0, num_requests=0),
    )
    try:
        manager.warmup()  # builds the paged cache (the pool) and captures CUDA graphs where they are on
    except MemoryError as exc:
        if fixed:
            raise LabInputError(
                f"hf/continuous: transformers cannot fit a pool of {pool['num_blocks']:,} blocks "
                f"({pool['num_blocks'] * pool['bytes_per_block'] / 2**30:.2f} GiB) with max_batch_tokens "
                f"{max_batch_tokens} ({exc}); give a smaller --kv-cache-memory or --hf-continuous "
                f"max_batch_tokens"
            ) from None
        return None
    return manager


def continuous_batching_config(spec: RunSpec, pool: dict, max_batch_tokens: int) -> ContinuousBatchingConfig:
    settings = spec.engine.hf_continuous
    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    kwargs = {
        "num_blocks": pool["num_blocks"],
        "max_batch_tokens": max_batch_tokens,
        # off, as for every mode, but where a sharing point shares something (hf_continuous_sharing)
        "allow_block_sharing": block_sharing(spec.engine),
        "default_compile_level": settings.compile_level,
        "seed": spec.engine.seed,
        # 5.18 renamed block_size to page_size (the old name still works there, with a warning)
        ("page_size" if "page_size" in fields else "block_size"): pool["block_size"],
    }
    if settings.cuda_graphs is not None:
        kwargs["use_cuda_graph"] = settings.cuda_graphs
    if settings.async_batching is not None:
        kwargs["use_async_batching"] = settings.async_batching
    if "auto_switch_to_flash" in fields:
        kwargs["auto_switch_to_flash"] = False  # the kernel is the lab's setting, not transformers' guess
    return ContinuousBatchingConfig(**kwargs)


def describe(manager, model, spec: RunSpec, pool: dict, tokens_rule: str, view, weights_bytes: int | None) -> dict:
    """What the engine is, for result.json's `engine` (docs/results.md names every key)."""
    view = view or _readable_view(manager.batch_processor.cache, pool)
    config = manager.continuous_batching_config
    settings = spec.engine.hf_continuous
    needs_mask = settings.attn in ("sdpa", "eager")
    masks = 2 if config.use_async_batching else 1
    pool_tokens = view.num_blocks * view.block_size
    return {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "weights_allocated_bytes": weights_bytes,
        "engine": "transformers ContinuousBatchingManager (init_continuous_batching)",
        "kv_hook_verified": transformers.__version__ in VERIFIED_TRANSFORMERS,
        "settings": settings.to_dict(),
        "attn_implementation": model.config._attn_implementation,
        "block_size": view.block_size,
        "kv_bytes_per_token": pool["kv_bytes_per_token"],
        "kv_bytes_per_block": view.bytes_per_block(),
        "kv_bytes_per_block_lab": pool["bytes_per_block"],
        "kv_budget_bytes": pool["budget_bytes"],
        "kv_pool_rule": pool["rule"],
        "kv_cache_memory_bytes_requested": spec.engine.kv_cache_memory_bytes,
        "gpu_memory_utilization_requested": spec.engine.gpu_memory_utilization,
        "num_blocks_requested": pool["num_blocks"],
        "num_blocks": view.num_blocks,  # all usable: the reserved (trash) blocks are beside them
        "usable_blocks": view.num_blocks,
        "reserved_blocks": RESERVED_BLOCKS,
        "kv_tokens_capacity": pool_tokens,
        "kv_pool_bytes": view.num_blocks * view.bytes_per_block(),
        "kv_reserved_bytes": view.reserved_bytes(),
        "max_batch_tokens_rule": tokens_rule,
        "attention_mask_bytes": masks * mask_bytes(config.max_batch_tokens, pool_tokens, pool["dtype_bytes"])
        if needs_mask
        else 0,
        "continuous_batching_config": _plain(config),
        "cache_layout": view.layout,
        "enable_prefix_caching": block_sharing(spec.engine),  # transformers' allow_block_sharing: forks too
        "num_return_sequences": spec.engine.n,
        "warmup": "the whole workload once, on the same manager as the timed passes",
        "kv_sampling": "ContinuousBatchProcessor.update_batch wrapped: block tables after each step"
        if spec.engine.sample_kv_every_step
        else "off (--no-kv-samples)",
    }


def _readable_view(cache, pool: dict):
    """The cache's reader, or (sampling off and a layout not known here) the lab's own plan in its place."""
    try:
        return cache_view(cache)
    except RuntimeError:
        return SimpleNamespace(
            layout="not read (layout not known here)",
            num_blocks=pool["num_blocks"],
            block_size=pool["block_size"],
            bytes_per_block=lambda: pool["bytes_per_block"],
            reserved_bytes=lambda: RESERVED_BLOCKS * pool["bytes_per_block"],
        )


def _plain(config) -> dict:
    """A resolved ContinuousBatchingConfig as JSON-ready values (compile configs as dicts, tuples as lists)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        elif isinstance(value, tuple):
            value = list(value)
        elif value is not None and not isinstance(value, (bool, int, float, str, list, dict)):
            value = repr(value)
        out[f.name] = value
    return out
