"""Energy per timed pass and per output token, from NVML's energy counters: pure arithmetic.

Inputs: the runner's phases (`lab.phases.Phases`: every GPU's total-energy counter in mJ read just
before each phase starts and just after it ends, and the GPUs the backend's processes held) and the
collector's samples (each GPU's power, utilisation and counter, epoch-timed). Definitions, per timed
pass (a phase "repeat" or "generate") and per GPU the backend used:

- energy_j = (counter at the end - counter at the start) / 1000: exact to the counter's own update
  period (`counter_update_ms`, seen in the collector's samples) at each end. Where a GPU has no
  counter (before Volta), the trapezoid integral of its sampled power over the pass instead, and
  `method` says so. The same integral where the pass is shorter than two of the counter's updates or
  the counter did not move in it (an H100 updates it about every 105 ms: a pass of 50 ms reads 0 J
  or one whole update), since then the counter cannot tell the pass's energy.
- mean_power_w = energy_j / pass seconds (the pass's epoch start to end).
- peak_power_w, mean_util_pct: the largest power and the mean utilisation of the collector's
  samples inside the pass (NVML's power reading is itself averaged by the driver over a short
  window, so its peaks are smoothed).
- j_per_output_token = sum of energy_j over the GPUs used / output tokens of the pass (every pass
  generates the workload's fixed output tokens).

The GPUs used are those the runner saw the backend's process tree hold at the pass's end, else
those on which the collector saw the tree's memory during it. Idle GPUs of the host are not counted.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from lab.metrics import counter_delta, ratio

TIMED_PHASES = ("repeat", "generate")
COUNTER = "nvml energy counter"
POWER_INTEGRAL = "sampled power, integrated (no energy counter)"
SHORT_PASS_INTEGRAL = "sampled power, integrated (the pass is shorter than two energy-counter updates)"


def timed_phases(phases: list[dict]) -> list[dict]:
    """The phases of the timed passes that ended, in order: the k-th is timed pass k (`lab.runner`
    starts one phase per pass, "repeat" and the last "generate")."""
    return [p for p in phases if p.get("phase") in TIMED_PHASES and p.get("end")]


def counter_delta_j(start_mj: int | None, end_mj: int | None) -> float | None:
    """(end - start) / 1000 J; None where either reading is missing or the counter went back (a
    driver reload resets it)."""
    return counter_delta(start_mj, end_mj, 1000)


def trapezoid_j(points: Iterable[tuple[float, float]]) -> float | None:
    """Integral of power (W) over time (s) by the trapezoid rule over (t, W) points in time order;
    None with fewer than two."""
    pts = list(points)
    if len(pts) < 2:
        return None
    return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(pts, pts[1:]))


def gpu_series(samples: list[dict], gpu: int, key: str, window: tuple[float, float]) -> list[tuple[float, float]]:
    """(t, value) of one GPU's `key` in the samples inside `window` (epoch s), where known."""
    start, end = window
    out = []
    for s in samples:
        if start <= s["t"] <= end:
            for g in s.get("gpus") or ():
                if g.get("gpu") == gpu and g.get(key) is not None:
                    out.append((s["t"], g[key]))
    return out


def gpus_used(phase: dict, samples: list[dict]) -> list[int]:
    """The runner's `gpus_used` of the phase, else the GPUs where the collector saw the tree's memory in it."""
    if phase.get("gpus_used"):
        return sorted(phase["gpus_used"])
    window = (phase["start"], phase["end"])
    seen = {
        g["gpu"]
        for s in samples
        if window[0] <= s["t"] <= window[1]
        for g in s.get("gpus") or ()
        if g.get("tree_gpu_mib")
    }
    return sorted(seen)


def counter_cannot_tell(energy_j: float | None, seconds: float, update_ms: float | None) -> bool:
    """True where a counter reading exists but cannot resolve the pass: it did not move, or the pass
    is shorter than two of its updates."""
    if energy_j is None:
        return False
    return energy_j == 0 or (update_ms is not None and seconds * 1000 < 2 * update_ms)


def gpu_pass_energy(phase: dict, samples: list[dict], gpu: int, update_ms: float | None = None) -> dict:
    """One GPU over one pass: energy_j, method, mean_power_w, peak_power_w, mean_util_pct.
    `update_ms`: the counter's update period (`counter_update_ms`), to know a pass too short for it."""
    window, seconds = (phase["start"], phase["end"]), phase["end"] - phase["start"]
    start = (phase.get("energy_start_mj") or {}).get(str(gpu))
    end = (phase.get("energy_end_mj") or {}).get(str(gpu))
    energy, method = counter_delta_j(start, end), COUNTER
    power = gpu_series(samples, gpu, "power_w", window)
    if energy is None:
        energy, method = trapezoid_j(power), POWER_INTEGRAL
    elif counter_cannot_tell(energy, seconds, update_ms):
        integral = trapezoid_j(power)
        energy, method = (integral, SHORT_PASS_INTEGRAL) if integral else (None, None)
    util = [u for _, u in gpu_series(samples, gpu, "gpu_util_pct", window)]
    return {
        "gpu": gpu,
        "energy_j": energy,
        "method": method if energy is not None else None,
        "mean_power_w": ratio(energy, seconds),
        "peak_power_w": max((w for _, w in power), default=None),
        "mean_util_pct": statistics.fmean(util) if util else None,
        "samples": len(power),
    }


def pass_energy(phase: dict, samples: list[dict], output_tokens: int | None, update_ms: float | None = None) -> dict:
    """One timed pass over the GPUs used: its seconds, per-GPU figures, energy_j and j_per_output_token
    (None where a used GPU's energy is unknown)."""
    per_gpu = [gpu_pass_energy(phase, samples, g, update_ms) for g in gpus_used(phase, samples)]
    known = [g["energy_j"] for g in per_gpu]
    total = sum(known) if per_gpu and None not in known else None
    seconds = phase["end"] - phase["start"]
    return {
        "phase": phase["phase"],
        "seconds": seconds,
        "gpus": [g["gpu"] for g in per_gpu],
        "energy_j": total,
        "mean_power_w": ratio(total, seconds),
        "j_per_output_token": ratio(total, output_tokens),
        "per_gpu": per_gpu,
    }


def counter_update_ms(samples: list[dict]) -> float | None:
    """Median time between changes of a GPU's energy counter in the collector's samples, over every
    GPU: how often the driver updates it (no finer than the collector's own interval)."""
    intervals: list[float] = []
    last: dict[int, tuple[float | None, int]] = {}  # gpu -> (t of its last change, None before one; value)
    for s in samples:
        for g in s.get("gpus") or ():
            value = g.get("energy_mj")
            if value is None:
                continue
            changed_t, previous = last.get(g["gpu"], (None, None))
            if previous is None or value != previous:
                if changed_t is not None:
                    intervals.append(s["t"] - changed_t)
                last[g["gpu"]] = (s["t"] if previous is not None else None, value)
    return statistics.median(intervals) * 1000 if intervals else None


def energy_summary(phases: list[dict], samples: list[dict], output_tokens: int | None, meter: dict | None) -> dict:
    """summary.json's `energy` of one backend/mode.

    {"available": True, "gpus", "method", "energy_j", "seconds", "mean_power_w", "j_per_output_token",
     "per_gpu" (the last pass's), "passes" (every timed pass), "counter_update_ms"}: the top-level
    figures are the last timed pass's, like the throughput tables. {"available": False, "reason"}
    where no GPU energy could be known (no NVML, the CPU, no GPU held by the run).
    """
    update_ms = counter_update_ms(samples)
    passes = [pass_energy(p, samples, output_tokens, update_ms) for p in timed_phases(phases)]
    last = passes[-1] if passes else None
    if last is None or last["energy_j"] is None:
        return {"available": False, "reason": unavailable_reason(last, meter, update_ms)}
    methods = sorted({g["method"] for g in last["per_gpu"]})
    return {
        "available": True,
        "gpus": last["gpus"],
        "method": " + ".join(methods),
        "energy_j": last["energy_j"],
        "seconds": last["seconds"],
        "mean_power_w": last["mean_power_w"],
        "j_per_output_token": last["j_per_output_token"],
        "per_gpu": last["per_gpu"],
        "passes": [{k: p[k] for k in ("phase", "seconds", "energy_j", "j_per_output_token")} for p in passes],
        "counter_update_ms": update_ms,
    }


def unavailable_reason(last: dict | None, meter: dict | None, update_ms: float | None = None) -> str:
    """Why a run has no energy figure, in words for the report."""
    if meter is not None and meter.get("source") is None and (last is None or not last["gpus"]):
        return f"no NVML energy counter ({meter.get('reason') or 'unknown reason'})"
    if last is None:
        return "no timed pass finished"
    if not last["gpus"]:
        return "the run held no GPU (it ran on the CPU)"
    if update_ms is not None and last["seconds"] * 1000 < 2 * update_ms:
        return (
            f"the timed pass ({last['seconds'] * 1000:.0f} ms) is too short for the energy counter "
            f"(updated every {update_ms:.0f} ms) and no power sample fell inside it: time a longer workload"
        )
    return "a GPU used had neither an energy counter nor sampled power"
