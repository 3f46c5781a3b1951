"""torch.compile's activity in this process, read from torch._dynamo's own counters.

A snapshot is cumulative; the runner takes one before and after each window (load, warm-up, each
timed pass) and `lab.records.CompileCount.between` gives what happened inside it:
- `frames`: `counters["frames"]["total"]`, each Python frame dynamo converted: a function's first
  compile and every recompile (a call whose guards missed every cached graph);
- `graphs`: `counters["stats"]["unique_graphs"]`, the graphs dynamo produced;
- `recompiles`: dynamo's own compilation metrics (`get_compilation_metrics()`, the last 64) whose
  `recompile_reason` is set, by compile id, with the reason.

Not counted: a CUDA graph recorded again by inductor's cudagraph trees ("reduce-overhead") when a
static input moved, which compiles nothing; the hf backend keeps its static cache at one address so
that this does not happen (lab.backends.hf_static).
"""

from __future__ import annotations

import torch._dynamo.utils as dynamo_utils

SOURCE = "torch._dynamo counters"


def snapshot(source: str = SOURCE) -> dict:
    """Cumulative counters of this process: {"frames", "graphs", "recompiles": {compile id: reason}, "source"}."""
    counters = dynamo_utils.counters
    get_metrics = getattr(dynamo_utils, "get_compilation_metrics", lambda: [])
    recompiles = {
        str(getattr(m, "compile_id", i)): str(m.recompile_reason)
        for i, m in enumerate(get_metrics())
        if getattr(m, "recompile_reason", None)
    }
    return {
        "frames": int(counters["frames"]["total"]),
        "graphs": int(counters["stats"]["unique_graphs"]),
        "recompiles": recompiles,
        "source": source,
    }
