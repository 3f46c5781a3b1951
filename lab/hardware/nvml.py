"""NVML, started and stopped in one place: the environment facts, the collector and the device check use it.

NVML is the NVIDIA driver's management library (`pynvml`, from nvidia-ml-py). It may be missing
(nvidia-ml-py not installed) or fail to start (no driver, no GPU: this CPU machine); either way the
caller gets `NvmlUnavailable` with the reason, never a crash. Every function takes the module as
`nvml` so that tests pass a fake; None means the real one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    import pynvml
except ImportError as missing:  # nvidia-ml-py is in requirements/base.txt; a bare Python may lack it
    pynvml = None
    PYNVML_MISSING = f"nvidia-ml-py is not installed ({missing})"
else:
    PYNVML_MISSING = None


class NvmlUnavailable(Exception):
    """NVML cannot be used here; the message says why. `installed`: whether nvidia-ml-py is."""

    def __init__(self, reason: str, installed: bool) -> None:
        super().__init__(reason)
        self.installed = installed


def start(nvml: Any = None) -> Any:
    """The NVML module, initialised; pair with `stop`. Raises NvmlUnavailable with the reason."""
    if nvml is None:
        if pynvml is None:
            raise NvmlUnavailable(PYNVML_MISSING, installed=False)
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: every one means "no NVML"
        raise NvmlUnavailable(f"{type(e).__name__}: {e}", installed=True) from e
    return nvml


def stop(nvml: Any) -> None:
    """Shut NVML down; a failure to do so is of no consequence to the caller."""
    call(nvml.nvmlShutdown)


@contextmanager
def session(nvml: Any = None) -> Iterator[Any]:
    """NVML started for the block and stopped after it (see `start`)."""
    nvml = start(nvml)
    try:
        yield nvml
    finally:
        stop(nvml)


def gpu_count(nvml: Any = None) -> tuple[int, str | None]:
    """(number of GPUs NVML sees, None) or (0, why not): the cheap check behind `--device auto`."""
    try:
        with session(nvml) as started:
            count = started.nvmlDeviceGetCount()
    except NvmlUnavailable as e:
        return 0, str(e)
    except Exception as e:  # the driver started but could not count: no usable GPU either
        return 0, f"NVML started but a query failed: {type(e).__name__}: {e}"
    return count, None if count else "NVML sees no GPU"


def call(fn, *args) -> Any:
    """The NVML call's result, or None when the GPU or driver does not support it."""
    try:
        return fn(*args)
    except Exception:  # pynvml.NVMLError and subclasses; a fake may raise others
        return None


def text(value: Any) -> Any:
    """Old pynvml returned bytes for names and UUIDs; nvidia-ml-py returns str."""
    return value.decode() if isinstance(value, bytes) else value
