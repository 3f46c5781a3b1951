"""transformers' tensor parallelism: the model split over torchrun's ranks, one GPU each.

`from_pretrained(..., distributed_config=DistributedConfig(tp_size=N, tp_plan="auto"))` (transformers
5.17 and 5.19; the older spelling `tp_plan="auto"` is deprecated there) starts torch.distributed from
torchrun's RANK/LOCAL_RANK/WORLD_SIZE (NCCL on CUDA, gloo on the CPU), builds the model on the meta
device, applies the model's own plan (Llama: q, k, v, gate and up projections split by columns, o and
down by rows, one all-reduce after each) and loads each rank's shard as a DTensor. Each rank then
holds 1/N of the attention and MLP weights and of the KV heads, so its KV cache (DynamicCache,
StaticCache or the paged cache) holds num_kv_heads / N heads per token. Every rank runs the same
`generate` on the same token ids; rank 0's clock and records are the run's.

A model without saved weights (e.g. synthetic:llama-8b) is loaded the same way from its config alone:
`from_pretrained(None, config=..., state_dict={})` finds every weight missing and initialises each
rank's shard on its GPU, so the whole model is never built on one device (Llama-70B's 141 GB would
not fit). `accelerate` must be installed: transformers refuses a tensor-parallel load without it.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM, DistributedConfig

from lab.models.resolve import has_weights
from lab.teardown import TEARDOWN_LIMIT_S, call_within


def load_tensor_parallel(model_path: str, dtype: torch.dtype, ranks: int, device: str):
    """This rank's shard of the model at `model_path`, split over `ranks` ranks (under torchrun)."""
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # before NCCL starts: one GPU per rank
    distributed = DistributedConfig(tp_size=ranks, tp_plan="auto")
    if has_weights(model_path):
        return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, distributed_config=distributed)
    config = AutoConfig.from_pretrained(model_path)
    # The concrete class: the Auto class refuses a None path before it reaches the loader.
    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    return model_class.from_pretrained(None, config=config, state_dict={}, dtype=dtype, distributed_config=distributed)


def close_tensor_parallel(limit_s: float = TEARDOWN_LIMIT_S) -> None:
    """End torch.distributed where the load started it (no TCPStore or NCCL warnings at exit), within
    `limit_s`: a teardown that hangs raises `lab.teardown.StillRunning` (the run records it as its
    close_error) rather than holding the finished run. Its lines in the log: 'distributed teardown: ...'."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def destroy() -> None:
        if device is not None:  # a new thread starts on GPU 0: this rank's GPU, not a context on another's
            torch.cuda.set_device(device)
        torch.distributed.destroy_process_group()

    call_within(destroy, limit_s, "distributed teardown")
