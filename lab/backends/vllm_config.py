"""What vLLM's configuration says about the engine: the KV pool in bytes, the block sizes its CPU
attention takes, and the figures result.json records. Read from `vllm_config` after the engine starts."""

from __future__ import annotations

import os

import torch
import vllm

from lab.accounting import kv
from lab.errors import LabInputError


def describe_engine(config, num_blocks: int, device: str, kwargs: dict) -> dict:
    """The engine's own account of itself, for result.json's `engine`: the KV pool (null block included
    in `num_blocks`), the scheduler's limits, compilation, and the `vllm.LLM` arguments asked for.

    With tensor parallelism every GPU holds every block, for its share of the KV heads
    (`get_num_kv_heads` is per GPU; heads are replicated where the GPUs outnumber them): `kv_pool_bytes`
    and `kv_bytes_per_block` are one GPU's, `kv_pool_bytes_total` the sum over the GPUs, and
    `kv_tokens_capacity` the tokens the pool holds whatever the number of GPUs."""
    cache, sched, model = config.cache_config, config.scheduler_config, config.model_config
    gpus = int(getattr(config.parallel_config, "tensor_parallel_size", 1) or 1)
    compilation = config.compilation_config
    block_bytes = kv_bytes_per_block(config)
    usable = kv.usable_blocks(num_blocks)
    cudagraph_mode = getattr(compilation, "cudagraph_mode", None)
    cuda_graphs = (
        device == "cuda"
        and not model.enforce_eager
        and cudagraph_mode is not None
        and _enum_name(cudagraph_mode) != "NONE"
    )
    return {
        "vllm_version": vllm.__version__,
        "num_blocks": num_blocks,  # null block included
        "usable_blocks": usable,
        "block_size": cache.block_size,
        "kv_tokens_capacity": usable * cache.block_size,
        "kv_bytes_per_block": block_bytes,
        "kv_pool_bytes": num_blocks * block_bytes if block_bytes else None,  # per GPU
        "kv_pool_bytes_total": num_blocks * block_bytes * gpus if block_bytes else None,
        "tensor_parallel_size": gpus,
        "kv_heads_per_gpu": _kv_heads_per_gpu(config),
        "kv_cache_dtype": str(cache.cache_dtype),
        "kv_cache_memory_bytes": cache.kv_cache_memory_bytes,
        "gpu_memory_utilization": cache.gpu_memory_utilization,
        "kv_cache_memory_bytes_requested": kwargs.get("kv_cache_memory_bytes"),
        "gpu_memory_utilization_requested": kwargs.get("gpu_memory_utilization"),
        "vllm_cpu_kvcache_space_gib": os.environ.get("VLLM_CPU_KVCACHE_SPACE") or None,
        "vllm_cpu_omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND") if device == "cpu" else None,
        "max_num_seqs": sched.max_num_seqs,
        "max_num_batched_tokens": sched.max_num_batched_tokens,
        "max_model_len": model.max_model_len,
        "enable_prefix_caching": bool(cache.enable_prefix_caching),
        "enable_chunked_prefill": getattr(sched, "enable_chunked_prefill", None),
        "async_scheduling": getattr(sched, "async_scheduling", None),
        "enforce_eager": model.enforce_eager,
        "compilation_mode": _enum_name(getattr(compilation, "mode", None)),
        "cudagraph_mode": _enum_name(cudagraph_mode),
        "cuda_graphs": cuda_graphs,
        "load_format": kwargs.get("load_format", "auto"),
        "skip_tokenizer_init": bool(kwargs.get("skip_tokenizer_init", False)),  # the folder has no tokenizer
        "dtype": str(model.dtype),
        "kv_sampling": "EngineCoreOutputs.scheduler_stats, read as each step() passes it",
    }


def _kv_heads_per_gpu(config) -> int | None:
    try:
        return int(config.model_config.get_num_kv_heads(config.parallel_config))
    except (AttributeError, TypeError, ValueError):
        return None


def _enum_name(value) -> str | None:
    return None if value is None else str(getattr(value, "name", value))


def kv_bytes_per_block(vllm_config) -> int | None:
    """Bytes one KV block takes: block_size x `kv.kv_bytes_per_token`.

    From the model's config as vLLM sees it; None where vLLM's config does not give the pieces.
    """
    model, cache = vllm_config.model_config, vllm_config.cache_config
    try:
        layers = model.get_num_layers(vllm_config.parallel_config)
        kv_heads = model.get_num_kv_heads(vllm_config.parallel_config)
        head_dim = model.get_head_size()
    except (AttributeError, TypeError, ValueError):
        return None
    cache_dtype = str(cache.cache_dtype)
    if cache_dtype == "auto":
        dtype_bytes = torch.empty((), dtype=model.dtype).element_size()
    elif cache_dtype.startswith("fp8"):
        dtype_bytes = 1
    else:
        dtype_bytes = torch.empty((), dtype=getattr(torch, cache_dtype)).element_size()
    return cache.block_size * kv.kv_bytes_per_token(layers, kv_heads, head_dim, dtype_bytes)


def check_cpu_block_size(block_size: int) -> None:
    """LabInputError when vLLM's CPU attention cannot use `block_size` (0.32: multiples of 32 only).

    The engine would fail later with only "Engine core initialization failed" on screen. Asks the
    CPU attention backend itself; versions without that query are not checked.
    """
    try:  # NOTE: only asked on the CPU; where vLLM keeps this backend changes between versions
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend  # noqa: PLC0415 - CPU builds only

        supported = list(CPUAttentionBackend.get_supported_kernel_block_sizes())
    except (ImportError, AttributeError, TypeError):
        return
    if not supported:
        return
    for size in supported:
        base = getattr(size, "base", None)
        if (base is not None and block_size % base == 0) or size == block_size:
            return
    allowed = ", ".join(f"multiples of {s.base}" if hasattr(s, "base") else str(s) for s in supported)
    raise LabInputError(
        f"vLLM's CPU attention cannot use --block-size {block_size}: it takes {allowed} (e.g. --block-size 32)"
    )
