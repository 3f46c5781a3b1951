"""Tensor parallelism's arithmetic: which head counts split over G GPUs, and the KV cache per GPU.

Under tensor parallelism every GPU holds every token's K/V for its share of the KV heads, so a KV
pool holds the same number of tokens on each GPU, and one token's bytes on one GPU are

    kv_bytes_per_token_per_gpu = 2 x layers x kv_heads_per_gpu x head_dim x dtype bytes

- vLLM: kv_heads_per_gpu = max(1, kv_heads // G); where G > kv_heads each head is replicated on
  G / kv_heads GPUs (vLLM needs kv_heads % G == 0 or G % kv_heads == 0).
- transformers (`tp_plan="auto"`): the k and v projections are split by columns, so kv_heads % G
  must be 0; kv_heads_per_gpu = kv_heads / G, never replicated.
Both need num_heads % G == 0 (the query heads and o_proj's rows split the same way).

A KV budget given per GPU (vLLM's `kv_cache_memory_bytes` is per GPU) therefore holds
budget // kv_bytes_per_token_per_gpu tokens: G times one GPU's worth where nothing is replicated.
"""

from __future__ import annotations

from lab.accounting.kv import kv_bytes_per_token
from lab.config import RunSpec

# Backends whose tensor parallelism cannot replicate KV heads (transformers' plan splits them).
SPLIT_ONLY = ("hf",)
# Modes the lab does not split over GPUs, and why (recorded as not run rather than run on one GPU).
NOT_SPLIT = {
    "hf/continuous": "the lab sizes transformers' paged pool and reads its block tables for one GPU; "
    "transformers' continuous batching can split its cache over ranks, but this mode is not wired or "
    "measured with several GPUs yet",
}


def kv_heads_per_gpu(num_kv_heads: int, gpus: int) -> int:
    """KV heads each GPU holds: kv_heads // G, at least 1 (a replicated head where G > kv_heads)."""
    return max(1, num_kv_heads // gpus)


def kv_bytes_per_token_per_gpu(model: dict, gpus: int) -> int | None:
    """One token's K/V bytes on one GPU, from `lab.models.resolve.model_info`'s figures; None where
    the model's facts lack a piece."""
    try:
        heads = kv_heads_per_gpu(model["num_kv_heads"], gpus)
        return kv_bytes_per_token(model["num_layers"], heads, model["head_dim"], model["dtype_bytes"])
    except (KeyError, TypeError):
        return None


def spec_problem(spec: RunSpec, model: dict) -> str | None:
    """`tensor_parallel_problem` of a run's backend/mode and GPUs on `model` (`lab.models.resolve.model_info`)."""
    gpus = spec.engine.tensor_parallel_size
    return tensor_parallel_problem(spec.backend, spec.mode, model["num_heads"], model["num_kv_heads"], gpus)


def tensor_parallel_problem(backend: str, mode: str, num_heads: int, num_kv_heads: int, gpus: int) -> str | None:
    """Why `backend`/`mode` cannot split a model of these heads over `gpus` GPUs, or None where it can."""
    if gpus == 1:
        return None
    if f"{backend}/{mode}" in NOT_SPLIT:
        return NOT_SPLIT[f"{backend}/{mode}"]
    if num_heads % gpus:
        return f"its {num_heads} attention heads do not split evenly over {gpus} GPUs"
    if backend in SPLIT_ONLY and num_kv_heads % gpus:
        return (
            f"transformers splits the {num_kv_heads} KV heads over the {gpus} ranks and cannot replicate "
            f"them ({num_kv_heads} % {gpus} != 0); use a model whose KV heads divide by {gpus}"
        )
    if num_kv_heads % gpus and gpus % num_kv_heads:
        return f"vLLM needs the {num_kv_heads} KV heads to divide by {gpus} GPUs, or {gpus} to divide by them"
    return None
