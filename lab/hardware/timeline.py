"""The collector's timeline file: reading it back, and its peaks and means (pure).

The file is JSON lines, one record per line, with a `kind` field:

    {"kind": "header",  ...}   first line, written and flushed at once (source, fallback_reason, GPUs, t)
    {"kind": "sample",  ...}   one per tick (keys: `lab.hardware.collector.sample`)
    {"kind": "summary", ...}   last line, on any clean stop (keys: `lab.hardware.collector.run_collector`)

A file whose last line is not a summary was cut short (the collector was killed); `read_timeline`
reads what is there.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lab.hardware.sources import combine_gpus
from lab.run_folder import JsonLines


class TimelineStats:
    """Peaks and means of a timeline, folded one sample at a time (the collector keeps no list)."""

    def __init__(self) -> None:
        self.n = 0
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.max_gap_s = 0.0
        self.sources: set[str] = set()
        self.peak: dict[str, float | None] = {
            k: None for k in ("tree_rss_mib", "tree_gpu_mib", "device_used_mib", "device_total_mib", "power_w")
        }
        self.t_peak_tree_gpu: float | None = None
        self.peak_proc_gpu_mib: dict[str, float] = {}
        self.max_pids = 0
        self._util_sum = 0.0
        self._util_n = 0
        self._energy_j = 0.0
        self._power_prev: tuple[float, float] | None = None

    def add(self, s: dict) -> None:
        t = s["t"]
        if self.t_last is not None:
            self.max_gap_s = max(self.max_gap_s, t - self.t_last)
        self.t_first = t if self.t_first is None else self.t_first
        self.t_last = t
        self.n += 1
        self.sources.add(s["source"])
        self.max_pids = max(self.max_pids, len(s.get("pids") or ()))
        for key in self.peak:
            v = s.get(key)
            if v is not None and (self.peak[key] is None or v > self.peak[key]):
                self.peak[key] = v
                if key == "tree_gpu_mib":
                    self.t_peak_tree_gpu = t
        for pid, mib in (s.get("proc_gpu_mib") or {}).items():
            if mib is not None and mib > self.peak_proc_gpu_mib.get(pid, -1.0):
                self.peak_proc_gpu_mib[pid] = mib
        if s.get("gpu_util_pct") is not None:
            self._util_sum += s["gpu_util_pct"]
            self._util_n += 1
        power = s.get("power_w")
        if power is not None:
            if self._power_prev is not None:  # trapezoid between consecutive samples with power
                t0, p0 = self._power_prev
                self._energy_j += (t - t0) * (p0 + power) / 2
            self._power_prev = (t, power)

    def result(self) -> dict:
        """Keys: samples, t_first, t_last, duration_s, mean_interval_ms, max_gap_ms, sources,
        peak_tree_rss_mib, peak_tree_gpu_mib, t_peak_tree_gpu, peak_proc_gpu_mib ({str(pid): MiB}),
        peak_device_used_mib, device_total_mib, peak_power_w, mean_gpu_util_pct, energy_j, max_pids.

        mean_interval_ms = (t_last - t_first) / (samples - 1) * 1000, the achieved sampling period.
        energy_j = trapezoid integral of power_w over t (joules), None without power figures.
        """
        duration = (self.t_last - self.t_first) if self.n else None
        return {
            "samples": self.n,
            "t_first": self.t_first,
            "t_last": self.t_last,
            "duration_s": round(duration, 4) if duration is not None else None,
            "mean_interval_ms": round(duration / (self.n - 1) * 1000, 3) if self.n > 1 else None,
            "max_gap_ms": round(self.max_gap_s * 1000, 3) if self.n > 1 else None,
            "sources": sorted(self.sources),
            "peak_tree_rss_mib": self.peak["tree_rss_mib"],
            "peak_tree_gpu_mib": self.peak["tree_gpu_mib"],
            "t_peak_tree_gpu": self.t_peak_tree_gpu,
            "peak_proc_gpu_mib": dict(sorted(self.peak_proc_gpu_mib.items())),
            "peak_device_used_mib": self.peak["device_used_mib"],
            "device_total_mib": self.peak["device_total_mib"],
            "peak_power_w": self.peak["power_w"],
            "mean_gpu_util_pct": round(self._util_sum / self._util_n, 1) if self._util_n else None,
            "energy_j": round(self._energy_j, 3) if self._power_prev is not None else None,
            "max_pids": self.max_pids,
        }


def in_window(samples: list[dict], window: tuple[float, float] | None) -> list[dict]:
    """The samples taken within `window` (epoch seconds, ends included); all of them without one."""
    return samples if window is None else [s for s in samples if window[0] <= s["t"] <= window[1]]


def summarize_timeline(samples: Iterable[dict]) -> dict:
    """Peaks and means of a list of samples (see `TimelineStats.result` for the keys).

    Records other than samples (header, summary) are skipped, so a whole file's records may be passed.
    """
    stats = TimelineStats()
    for s in samples:
        if s.get("kind", "sample") == "sample":
            stats.add(s)
    return stats.result()


def read_timeline(path: Path) -> dict:
    """{"header", "samples", "summary", "complete", "torn_line"} from a file (or its .gz twin).

    A torn last line (the collector was killed mid-write) is skipped and its number is `torn_line`;
    any other line that is not JSON raises `run_folder.MalformedJsonLine`. `complete` is False when
    a line was torn or the summary line is missing.
    """
    out: dict[str, Any] = {"header": None, "samples": [], "summary": None, "complete": False, "torn_line": None}
    lines = JsonLines(Path(path))
    for rec in lines:
        kind = rec.get("kind")
        if kind == "sample":
            out["samples"].append(rec)
        elif kind in ("header", "summary"):
            out[kind] = rec
    out["torn_line"] = lines.torn_line
    out["complete"] = out["summary"] is not None and lines.torn_line is None
    return out


# --- several GPUs ----------------------------------------------------------------------------------


def gpus_holding_tree(samples: Iterable[dict]) -> list[int]:
    """NVML indices of the GPUs on which some sample saw the backend's tree hold memory."""
    return sorted({g["gpu"] for s in samples for g in s.get("gpus") or () if g.get("tree_gpu_mib")})


def restricted_to_gpus(samples: Iterable[dict], gpus: list[int]) -> list[dict]:
    """The samples with only `gpus` kept in each and its top-level figures summed again over them.

    The collector reads every GPU of the host where a run chose none (and did in older runs); a run's
    own figures (whole-GPU memory, power) must not include the GPUs it left idle, or another user's.
    """
    keep = set(gpus)
    out = []
    for s in samples:
        chosen = [g for g in s.get("gpus") or () if g.get("gpu") in keep]
        if s.get("gpus"):
            s = {**s, **combine_gpus(chosen), "gpus": chosen}
        out.append(s)
    return out


def per_gpu_peaks(samples: Iterable[dict]) -> dict[str, dict]:
    """{str(gpu): {samples, nvml_tree_peak_mib, nvml_device_peak_mib, device_total_mib, peak_power_w,
    mean_gpu_util_pct}} over the samples: each GPU's own peaks (the sum over GPUs is the summary's)."""
    out: dict[str, dict] = {}
    utils: dict[str, list[float]] = {}
    for s in samples:
        for g in s.get("gpus") or ():
            row = out.setdefault(
                str(g["gpu"]),
                {
                    "samples": 0,
                    "nvml_tree_peak_mib": None,
                    "nvml_device_peak_mib": None,
                    "device_total_mib": None,
                    "peak_power_w": None,
                },
            )
            row["samples"] += 1
            for name, key in (
                ("nvml_tree_peak_mib", "tree_gpu_mib"),
                ("nvml_device_peak_mib", "device_used_mib"),
                ("device_total_mib", "device_total_mib"),
                ("peak_power_w", "power_w"),
            ):
                value = g.get(key)
                if value is not None and (row[name] is None or value > row[name]):
                    row[name] = value
            if g.get("gpu_util_pct") is not None:
                utils.setdefault(str(g["gpu"]), []).append(g["gpu_util_pct"])
    for gpu, row in out.items():
        values = utils.get(gpu)
        row["mean_gpu_util_pct"] = round(sum(values) / len(values), 1) if values else None
    return dict(sorted(out.items(), key=lambda item: int(item[0])))
