"""Memory of each timed pass and of each offered rate (online serving, issue 16): pure arithmetic over
what a backend/mode's folder holds. Every figure names its source in its key:

- kv_*: the paged engines' own KV samples of the pass (`records.KvSample`: vLLM's scheduler,
  transformers' block tables; one per engine step), none for the hf generate() modes:
  kv_samples, the steps sampled; kv_peak_blocks_used, the most blocks in use after any step;
  kv_usable_blocks, D in blocks (vLLM: num_blocks - 1, the null block left out; None in older runs);
  kv_peak_occupancy = max over the steps of kv_usage (blocks in use / D, 0-1);
  kv_peak_tokens_stored, the most tokens whose K/V were in the pool, over the steps where that count is
  known (vLLM leaves it out where a preemption makes it unknown);
  kv_peak_mib = kv_peak_blocks_used x kv_block_bytes / 2^20 (vLLM with tensor parallelism: one GPU's).
- nvml_tree_peak_mib: NVML, the GPU memory of the backend's process tree (summed over the GPUs it used),
  the largest collector sample inside the pass; rss_tree_peak_mib: psutil, the tree's resident host
  memory (the figure on a CPU run); collector_samples: the samples inside the pass, collector_source.
  A pass shorter than the collector's interval, or one during which the collector got no CPU, may hold
  no sample: its process figures are then None, not a neighbour's.
- allocator_peak_allocated_bytes, allocator_peak_reserved_bytes: the torch allocator inside the
  backend's process (hf on CUDA; vLLM's engine runs in another process), its peaks reset before the pass.

A pass's window is its phase in result.json (`lab.accounting.energy.timed_phases`: the k-th is pass k).
An offered rate's figures are the largest over its passes (--repeats), its sample counts their sum.
Older runs kept the KV samples (untagged) and the allocator figures of their last pass only: their other
passes have none (None), never another pass's.
"""

from __future__ import annotations

from lab.accounting.energy import timed_phases
from lab.hardware.timeline import in_window, summarize_timeline
from lab.metrics import passes_of
from lab.online_settings import rate_text, rate_value
from lab.pass_records import samples_by_pass
from lab.records import BackendResult, KvSample, RequestRecord

MIB = 2**20
KV_PEAKS = ("kv_peak_blocks_used", "kv_usable_blocks", "kv_peak_occupancy", "kv_peak_tokens_stored", "kv_peak_mib")
PROCESS_PEAKS = ("nvml_tree_peak_mib", "rss_tree_peak_mib")
ALLOCATOR_PEAKS = ("allocator_peak_allocated_bytes", "allocator_peak_reserved_bytes")
PEAKS = KV_PEAKS + PROCESS_PEAKS + ALLOCATOR_PEAKS
COUNTS = ("kv_samples", "collector_samples")  # summed over a rate's passes, as are their seconds


def kv_block_bytes(engine: dict | None) -> float | None:
    """Bytes of one block of a paged engine's pool: kv_pool_bytes / num_blocks (vLLM: one GPU's); None
    where the engine reports no pool."""
    engine = engine or {}
    pool, blocks = engine.get("kv_pool_bytes"), engine.get("num_blocks")
    return pool / blocks if pool and blocks else None


def _peak(values) -> float | int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def kv_peaks(samples: list[KvSample], block_bytes: float | None) -> dict:
    """The kv_* figures of one pass's samples (module docstring)."""
    blocks = _peak(s.blocks_used for s in samples)
    return {
        "kv_samples": len(samples),
        "kv_peak_blocks_used": blocks,
        "kv_usable_blocks": _peak(s.usable_blocks for s in samples),
        "kv_peak_occupancy": _peak(s.kv_usage for s in samples),
        "kv_peak_tokens_stored": _peak(s.tokens_stored for s in samples),
        "kv_peak_mib": blocks * block_bytes / MIB if blocks is not None and block_bytes else None,
    }


def process_peaks(timeline: list[dict], window: tuple[float, float] | None) -> dict:
    """The collector's peaks inside `window` (epoch seconds; None: a pass without a phase, no samples):
    NVML's process tree, psutil's RSS."""
    stats = summarize_timeline(in_window(timeline, window) if window else [])
    return {
        "collector_samples": stats["samples"],
        "collector_source": ",".join(stats["sources"]) or None,
        "nvml_tree_peak_mib": stats["peak_tree_gpu_mib"],
        "rss_tree_peak_mib": stats["peak_tree_rss_mib"],
    }


def allocator_peaks(memory: dict | None) -> dict:
    """The torch allocator's peaks of one pass (`Backend.memory_stats()`), None where it has none."""
    memory = memory or {}
    return {
        "allocator_source": memory.get("source") if memory.get("peak_allocated_bytes") is not None else None,
        "allocator_peak_allocated_bytes": memory.get("peak_allocated_bytes"),
        "allocator_peak_reserved_bytes": memory.get("peak_reserved_bytes"),
    }


def pass_rates(records: list[RequestRecord]) -> dict[int, str | float]:
    """The offered rate of each timed pass of the records ("inf" offline), by pass index, in order."""
    return {(p[0].pass_index or 0): rate_text(p[0].request_rate) for p in passes_of(records)}


def pass_memory(
    result: BackendResult, records: list[RequestRecord], kv_samples: list[KvSample], timeline: list[dict]
) -> list[dict]:
    """One entry per timed pass of the records, in order: `pass_index`, `request_rate` ("inf" offline),
    `seconds` (its phase), and the kv_*, collector and allocator figures of the module docstring.
    `timeline`: the collector's samples of this backend/mode, restricted to the GPUs it used."""
    rates = pass_rates(records)
    last = max(rates, default=0)
    samples = samples_by_pass(kv_samples, last)
    windows = [(p["start"], p["end"]) for p in timed_phases(result.phases)]
    memory = {p.get("index"): p.get("memory") for p in result.passes or []}
    block_bytes = kv_block_bytes(result.engine)
    out = []
    for index, rate in rates.items():
        window = windows[index] if index < len(windows) else None
        allocator = memory.get(index) or (result.memory if index == last else None)
        entry = {"pass_index": index, "request_rate": rate, "seconds": window[1] - window[0] if window else None}
        entry.update(kv_peaks(samples.get(index, []), block_bytes))
        entry.update(process_peaks(timeline, window))
        entry.update(allocator_peaks(allocator))
        out.append(entry)
    return out


def rate_memory(passes: list[dict]) -> list[dict]:
    """One entry per offered rate of `pass_memory`'s entries, ascending, inf last: `request_rate`,
    `passes`, the largest of each peak over the rate's passes, the sum of each sample count and of their
    `seconds`; the sources of the passes (`collector_source`, `allocator_source`) joined."""
    groups: dict[float, list[dict]] = {}
    for entry in passes:
        groups.setdefault(rate_value(entry["request_rate"]), []).append(entry)
    out = []
    for rate, entries in sorted(groups.items()):
        row = {"request_rate": rate_text(rate), "passes": len(entries)}
        row.update({key: _peak(e[key] for e in entries) for key in PEAKS})
        row.update({key: sum(e[key] for e in entries) for key in COUNTS})
        row["seconds"] = sum(e["seconds"] for e in entries) if all(e["seconds"] is not None for e in entries) else None
        for key in ("collector_source", "allocator_source"):
            row[key] = ",".join(sorted({e[key] for e in entries if e[key]})) or None
        out.append(row)
    return out
