"""Backends: one small interface (base.Backend), one module per engine.

Heavy imports (torch, transformers, vllm) stay inside the backend modules, so that importing
`lab.backends` or building a report never pulls them in.
"""

import importlib

from lab.backends.base import Backend

_MODULES = {"hf": "lab.backends.hf", "vllm": "lab.backends.vllm"}


def backend_class(name: str) -> type[Backend]:
    """Import the backend's module only when it is used."""
    return importlib.import_module(_MODULES[name]).BACKEND
