"""Read torch.compile's counters where vLLM compiles: in its worker, inside the engine-core process.

vLLM mixes this class into its worker class (`vllm.LLM(worker_extension_cls=...)`, vLLM 0.26 and
0.32: `WorkerWrapperBase.init_worker` appends it to the worker's bases), and the lab calls its method
by name through `LLM.collective_rpc("lab_compile_snapshot")`: one snapshot per worker, taken in that
worker's process. Its name must not clash with any attribute of vLLM's workers (vLLM checks).
"""

from __future__ import annotations

from lab.backends import compile_watch

QUALNAME = "lab.backends.vllm_worker.CompileCounters"


class CompileCounters:
    def lab_compile_snapshot(self) -> dict:
        """This worker process's cumulative torch.compile counters (`compile_watch.snapshot`)."""
        return compile_watch.snapshot("torch._dynamo counters in vLLM's worker (collective_rpc)")
