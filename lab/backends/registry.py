"""Which class runs each backend/mode. A new mode adds its module and one line here.

The engine modules import their engine (torch, transformers, vllm) at their top, so each is imported
only when its backend/mode runs: in that backend's own process, never in the orchestrator or the
report.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from lab.backends.base import Backend
from lab.config import run_label


def _hf() -> type[Backend]:
    from lab.backends.hf import HfBackend  # noqa: PLC0415 - heavy: torch and transformers, in an hf process only

    return HfBackend


def _hf_continuous() -> type[Backend]:
    from lab.backends.hf_continuous import HfContinuousBackend  # noqa: PLC0415 - heavy: torch and transformers

    return HfContinuousBackend


def _vllm() -> type[Backend]:
    from lab.backends.vllm import VllmBackend  # noqa: PLC0415 - heavy: vllm and torch, in a vllm process only

    return VllmBackend


# backend/mode -> the class that runs it (lab.config.BACKEND_MODES lists the same pairs).
BACKENDS: dict[str, Callable[[], type[Backend]]] = {
    "hf/sequential": _hf,
    "hf/batched": _hf,
    "hf/static-cache": _hf,
    "hf/static-cache-eager": _hf,
    "hf/continuous": _hf_continuous,
    "vllm/offline": _vllm,
    "vllm/shared": _vllm,  # the same engine with prefix caching on (lab.backends.vllm.prefix_caching)
}


def backend_class(backend: str, mode: str) -> type[Backend]:
    """The class of `backend/mode`; its engine missing from this Python is an error that names the fix."""
    try:
        return BACKENDS[run_label(backend, mode)]()
    except ImportError as exc:
        raise MissingEngine(
            f"{run_label(backend, mode)} cannot run here: {exc} (Python {sys.executable}). Fix: install the "
            f"engines (`make venv`, or pip install -r requirements/cpu.txt or cuda.txt), or leave {backend} "
            "out of --backends"
        ) from exc


class MissingEngine(RuntimeError):
    """A backend's engine (torch, transformers, vLLM) cannot be imported in this Python."""
