"""One backend/mode in one process: load, warm-up, the timed pass, records.

The runner owns fairness: one clock (`Clock`, synchronised with the device), warm-up outside the
timed pass, output lengths fixed by the workload. It writes into its output folder:

    pid            this process's id, first thing (the collector watches this process tree)
    phases.json    epoch times of load / warm-up / generate, to line up with the collector's timeline
    records.jsonl  one line per request of the timed pass (the last, with --repeats)
    kv.jsonl       KV-cache samples the backend took during the timed pass
    result.json    status ("ok" or "error" with the message), timings, engine and memory figures

A failure (an exception, out of memory) is written as status "error" with its message; the process
then exits with 1, and the experiment goes on with the next backend.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

from lab import records as rec
from lab.backends import backend_class
from lab.config import RunSpec

RESULT = "result.json"
PHASES = "phases.json"
PID = "pid"


def resolve_device(device: str) -> str:
    """auto -> cuda where torch sees a GPU, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """auto -> bfloat16 on CUDA, float32 on the CPU."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device == "cuda" else "float32"


class Phases:
    """Epoch start/end of each phase: the collector's samples carry epoch times too."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def start(self, name: str) -> None:
        self.items.append({"phase": name, "start": time.time(), "end": None})

    def end(self) -> None:
        self.items[-1]["end"] = time.time()


def run_backend(spec: RunSpec, out_dir: Path, cache_dir: Path | None = None) -> dict:
    """Run one backend/mode and write its folder. Returns the result dict (status ok or error)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PID).write_text(str(os.getpid()))
    rec.write_json(out_dir / "spec.json", spec.to_dict())
    phases = Phases()
    result: dict = {"backend": spec.backend, "mode": spec.mode, "status": "error", "error": None}
    backend = None
    try:
        backend, requests = _prepare(spec, cache_dir, phases, result)
        _warm_up(spec, backend, requests, phases, result)
        records, kv_samples = _timed_passes(spec.engine.repeats, backend, requests, phases, result)
        rec.write_jsonl(out_dir / rec.RECORDS, records)
        rec.write_jsonl(out_dir / rec.KV_SAMPLES, kv_samples)
        result["engine"] = backend.engine_info()
        result["status"] = "ok" if all(r["status"] == "ok" for r in records) else "error"
        if result["status"] == "error":
            result["error"] = "some requests failed; see records.jsonl"
    except BaseException as exc:  # noqa: BLE001 - every failure, OOM included, becomes a record
        if isinstance(exc, KeyboardInterrupt):
            result["error"] = "interrupted"
        else:
            result["error"] = f"{type(exc).__name__}: {exc}"
            result["traceback"] = traceback.format_exc(limit=20)
        if phases.items and phases.items[-1]["end"] is None:
            phases.end()
    finally:
        if backend is not None:
            try:
                backend.close()
            except Exception as exc:  # noqa: BLE001 - the run's own result matters more
                result["close_error"] = repr(exc)
        result["phases"] = phases.items
        rec.write_json(out_dir / PHASES, phases.items)
        rec.write_json(out_dir / RESULT, result)
    return result


def _prepare(spec: RunSpec, cache_dir: Path | None, phases: Phases, result: dict):
    from lab.env import collect_environment

    # NOTE: first, before torch is imported here: collect_environment() then probes torch in a child
    # Python instead of this process, so no CUDA context is created beside vLLM's engine.
    result["environment"] = collect_environment()
    device = resolve_device(spec.engine.device)
    dtype = resolve_dtype(spec.engine.dtype, device)
    model_path, info, requests = prepare(spec, cache_dir, dtype)
    result.update(device=device, dtype=dtype, model_path=str(model_path), model=info)
    result["workload"] = {
        "name": spec.engine.workload,
        "requests": len(requests),
        "prompt_tokens": sum(r.prompt_tokens for r in requests),
        "output_tokens": sum(r.output_tokens for r in requests),
    }
    backend = backend_class(spec.backend)(spec, str(model_path), device, dtype)
    phases.start("load")
    t0 = time.perf_counter()
    backend.load()
    result["load_s"] = time.perf_counter() - t0
    phases.end()
    return backend, requests


def prepare(spec: RunSpec, cache_dir: Path | None, dtype: str | None = None):
    """The model (built if synthetic and missing), its facts and the workload's requests.

    Raises LabInputError for a model or workload that cannot work (e.g. an output beyond the context).
    """
    from transformers import AutoTokenizer

    from lab.models import model_info, prompt_vocab_ids, resolve_model
    from lab.workloads import build_workload

    model_path = resolve_model(spec.engine.model, cache_dir)
    info = model_info(model_path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    engine = spec.engine
    requests = build_workload(
        engine.workload,
        tokenizer,
        prompt_vocab_ids(tokenizer),
        engine.max_model_len or info["max_position_embeddings"],
        seed=engine.seed,
        num_requests=engine.num_requests,
        output_tokens=engine.output_tokens,
    )
    return model_path, info, requests


def _warm_up(spec: RunSpec, backend, requests, phases: Phases, result: dict) -> None:
    from lab.backends.base import Clock

    if spec.engine.warmup == "none":
        result["warmup"] = {"requests": 0, "s": 0.0}
        return
    warm = backend.warmup_requests(requests)
    phases.start("warmup")
    clock = Clock(backend.device_sync())
    clock.start()
    backend.generate(warm, clock)
    result["warmup"] = {"requests": len(warm), "s": clock.now()}
    phases.end()


def _timed_passes(repeats: int, backend, requests, phases: Phases, result: dict):
    """`repeats` timed passes of the whole workload; each pass's seconds go into result["passes_s"].

    Everything else (records, KV samples, memory peaks, the "generate" phase) is the last pass's: the
    earlier passes are phases named "repeat".
    """
    passes: list[float] = []
    for index in range(repeats):
        last = index == repeats - 1
        records, kv_samples = _timed_pass(backend, requests, phases, result, "generate" if last else "repeat")
        passes.append(result["generate_s"])
        result["passes_s"] = passes  # after each pass: a failing later pass keeps the earlier ones
    return records, kv_samples


def _timed_pass(backend, requests, phases: Phases, result: dict, phase: str = "generate"):
    from lab.backends.base import Clock

    backend.reset_memory_stats()
    clock = Clock(backend.device_sync())
    phases.start(phase)
    clock.start()
    records = backend.generate(requests, clock)
    result["generate_s"] = clock.now()
    phases.end()
    result["clock_wall_t0"] = clock.wall_t0
    result["memory"] = backend.memory_stats()
    rows = [dict(r.to_dict(), backend=backend.spec.backend, mode=backend.spec.mode) for r in records]
    return rows, backend.kv_samples()
