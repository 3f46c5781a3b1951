"""One backend/mode's summary: throughput and latency from its records, memory from its timeline.

Memory figures keep their source in their name and beside them:
- nvml_*: NVML, read by the collector process: `tree_gpu_mib` is the GPU memory of the backend's
  whole process tree (vLLM's engine core is a child process), `device_used_mib` the whole GPU's;
- rss_*: psutil, resident memory of the same process tree (host RAM; the figure on a CPU run);
- allocator: the torch allocator inside the backend process (transformers on CUDA only).
"""

from __future__ import annotations

from lab.metrics import summarize_records

# Fields of a collector sample that hold memory, and the summary names of their peaks.
PEAKS = {
    "tree_gpu_mib": "nvml_tree_peak_mib",
    "device_used_mib": "nvml_device_peak_mib",
    "tree_rss_mib": "rss_tree_peak_mib",
}


def phase_window(result: dict, name: str) -> tuple[float, float] | None:
    for phase in result.get("phases") or []:
        if phase["phase"] == name and phase.get("end"):
            return phase["start"], phase["end"]
    return None


def timeline_peaks(samples: list[dict], window: tuple[float, float] | None = None) -> dict:
    """Peak of each memory field over the samples (within `window`, epoch seconds, if given)."""
    if window is not None:
        samples = [s for s in samples if window[0] <= s["t"] <= window[1]]
    peaks: dict = {"samples": len(samples)}
    for field, name in PEAKS.items():
        values = [s[field] for s in samples if s.get(field) is not None]
        peaks[name] = max(values) if values else None
    sources = sorted({s.get("source") for s in samples if s.get("source")})
    peaks["source"] = ",".join(sources) if sources else None
    return peaks


def summarize_run(result: dict, records: list[dict], samples: list[dict]) -> dict:
    engine = dict(result.get("engine") or {})
    engine.pop("batches", None)  # per-batch detail stays in runs/<name>/result.json
    return {
        "backend": result["backend"],
        "mode": result["mode"],
        "status": result.get("status", "error"),
        "error": result.get("error"),
        "device": result.get("device"),
        "dtype": result.get("dtype"),
        "model": result.get("model"),
        "workload": result.get("workload"),
        "load_s": result.get("load_s"),
        "warmup": result.get("warmup"),
        "generate_s": result.get("generate_s"),
        "passes_s": result.get("passes_s"),  # every timed pass (--repeats); the records are the last's
        "metrics": summarize_records(records) if records else None,
        "memory": {
            "whole_process": timeline_peaks(samples),
            "generate_phase": timeline_peaks(samples, phase_window(result, "generate")),
            "allocator": result.get("memory"),
        },
        "engine": engine,
    }
