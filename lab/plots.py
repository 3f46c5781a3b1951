"""The run folder's plots (matplotlib Figure objects, PNG), drawn from its records only; no engine is imported.

- memory.png: memory over time, one panel per backend/mode on one shared time axis (seconds since
  that backend/mode's process started: its first collector sample or its load, whichever came
  first), with the phases (load, warm-up, timed pass) shaded. Each line names its source: NVML
  (process tree, whole GPU) or psutil RSS, the torch allocator (CUDA only), vLLM's KV blocks in use.
- kv_breakdown.png: where the KV memory goes, stacked bars in the form of the PagedAttention paper's
  Figure 2, the paper's own bars beside this run's (from lab.breakdown.kv_breakdown).
- performance.png: output tokens/s, and TTFT / TPOT / E2E p50 and p99, per backend/mode.
- capacity.png: throughput against concurrency, where the folder holds capacity.json.

`write_plots` draws what the data allows and writes plots.json: for each plot, its file or the
reason it was skipped, so the reports can say so. Each `*_figure` function returns the Figure (tests
count its series) or None with nothing to draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# NOTE: Figure objects, never pyplot: no global figure state, no GUI backend, and savefig draws with
# Agg for PNG files whatever backend the process has chosen (headless CI, containers).
from matplotlib.figure import Figure

from lab import records as rec

MIB = 1024**2
INDEX = "plots.json"
CAPACITY = "capacity.json"
PHASE_COLORS = {"load": "#d9d9d9", "warmup": "#fde0a6", "repeat": "#e3f4e8", "generate": "#b7e4c7"}

# The PagedAttention paper (Kwon et al., SOSP 2023, arXiv 2309.06180), Figure 2: average share of KV
# memory per category during its section 6.2 experiment, in percent. NOTE: for vLLM the figure gives
# only token states (96.3%); its remaining 3.7% is drawn as "not broken down".
CATEGORIES = ("token states", "reservation", "internal fragmentation", "external fragmentation & other")
PAPER_FIG2 = {
    "Orca (Max)": {"token states": 20.4, "reservation": 13.3, "internal fragmentation": 57.3,
                   "external fragmentation & other": 8.9},
    "Orca (Pow2)": {"token states": 26.8, "reservation": 17.9, "internal fragmentation": 13.6,
                    "external fragmentation & other": 41.6},
    "Orca (Oracle)": {"token states": 38.2, "reservation": 25.2, "external fragmentation & other": 36.6},
    "vLLM": {"token states": 96.3},
}
CATEGORY_COLORS = {"token states": "#2a9d8f", "reservation": "#e9c46a", "internal fragmentation": "#f4a261",
                   "external fragmentation & other": "#e76f51", "not broken down": "#bdbdbd"}


@dataclass
class Series:
    """One line of the memory plot: epoch times, MiB, a label that names its source, and its panel.

    panel: "both" (whole process and timed pass), "pass" (timed pass only), "kv" (timed pass, right axis).
    """

    label: str
    t: list[float]
    mib: list[float]
    style: str = "-"
    steps: bool = False
    panel: str = "both"


# -- reading the run folder ------------------------------------------------------------------------


def load_parts(run_dir: Path) -> list[dict]:
    """Per backend/mode: its summary entry, result.json, phases, collector samples and KV samples."""
    runs = rec.read_json(run_dir / rec.SUMMARY)["runs"]
    samples = _by_run(r for r in rec.iter_jsonl(run_dir / rec.TIMELINE) if r.get("kind", "sample") == "sample")
    kv = _by_run(rec.iter_jsonl(run_dir / rec.KV_SAMPLES))
    parts = []
    for run in runs:
        name = f"{run['backend']}-{run['mode']}"
        result_path = run_dir / rec.RUNS / name / "result.json"
        result = rec.read_json(result_path) if result_path.exists() else {}
        parts.append({"name": name, "label": f"{run['backend']}/{run['mode']}", "summary": run, "result": result,
                      "phases": result.get("phases") or [], "samples": samples.get(name, []), "kv": kv.get(name, [])})
    return parts


def _by_run(rows) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row.get("run"), []).append(row)
    return grouped


def process_start(part: dict) -> float | None:
    """Epoch seconds of the process start: its first collector sample or its load, whichever is first."""
    times = [s["t"] for s in part["samples"][:1]] + [p["start"] for p in part["phases"][:1]]
    return min(times) if times else None


def memory_series(part: dict) -> list[Series]:
    """The lines of one backend/mode's memory panel, each from one named source."""
    samples, series = part["samples"], []
    nvml = [s for s in samples if s.get("source") == "nvml"]
    if nvml:
        series.append(_sampled(nvml, "tree_gpu_mib", "NVML: process tree GPU memory"))
        series.append(_sampled(nvml, "device_used_mib", "NVML: whole GPU used", style="--"))
    else:
        series.append(_sampled(samples, "tree_rss_mib", "psutil: process tree RSS (host)"))
    series += allocator_series(part["result"])
    series += kv_series(part["result"], part["kv"])
    return [s for s in series if s.t]


def _sampled(samples: list[dict], field: str, label: str, style: str = "-") -> Series:
    points = [(s["t"], s[field]) for s in samples if s.get(field) is not None]
    return Series(label, [t for t, _ in points], [v for _, v in points], style)


def allocator_series(result: dict) -> list[Series]:
    """The torch allocator (CUDA only): weights from load to the end, and each batch's peak while it ran."""
    memory, engine, phases = result.get("memory") or {}, result.get("engine") or {}, result.get("phases") or []
    t0 = result.get("clock_wall_t0")
    out = []
    weights = memory.get("weights_allocated_bytes") or engine.get("weights_allocated_bytes")
    if weights and phases and phases[-1].get("end"):
        out.append(Series("torch allocator: weights", [phases[0]["end"], phases[-1]["end"]],
                          [weights / MIB] * 2, ":"))
    batches = [b for b in engine.get("batches") or [] if b.get("peak_allocated_bytes") is not None]
    if t0 is not None and batches:
        t, mib = [], []
        for b in batches:  # one flat segment per batch: its peak, from its start to its end
            t += [t0 + b["start_s"], t0 + b["end_s"]]
            mib += [b["peak_allocated_bytes"] / MIB] * 2
        out.append(Series("torch allocator: peak allocated per batch", t, mib, "-.", panel="pass"))
    return out


def kv_series(result: dict, kv: list[dict]) -> list[Series]:
    """vLLM's KV blocks in use, in MiB: blocks_used x (pool bytes / blocks), on the backend's clock."""
    engine, t0 = result.get("engine") or {}, result.get("clock_wall_t0")
    pool, blocks = engine.get("kv_pool_bytes"), engine.get("num_blocks")
    if not kv or t0 is None or not pool or not blocks:
        return []
    block_mib = pool / blocks / MIB
    rows = [r for r in kv if r.get("blocks_used") is not None and r.get("t_s") is not None]
    return [Series("vLLM: KV blocks in use (blocks_used x block bytes)", [t0 + r["t_s"] for r in rows],
                   [r["blocks_used"] * block_mib for r in rows], "-", steps=True, panel="kv")]


# -- figures ---------------------------------------------------------------------------------------


def pass_window(part: dict) -> tuple[float, float] | None:
    """Epoch start and end of the timed pass (its t=0 is the runner clock's zero)."""
    phase = next((p for p in part["phases"] if p["phase"] == "generate" and p.get("end")), None)
    if phase is None:
        return None
    return part["result"].get("clock_wall_t0") or phase["start"], phase["end"]


def memory_figure(parts: list[dict]) -> Figure | None:
    """Per backend/mode, two panels on one time axis each, every line labelled with its source.

    Left: the whole process, seconds since it started, phases shaded. Right: the timed pass, seconds
    since its t=0, with the allocator's per-batch peaks and vLLM's KV blocks in use (right-hand axis):
    on the left's scale the timed pass is often a sliver (vLLM's engine start alone takes a minute).
    """
    parts = [p for p in parts if process_start(p) is not None]
    if not parts:
        return None
    fig = Figure(figsize=(12, 2.6 * len(parts) + 0.8), layout="constrained")
    grid = fig.subplots(len(parts), 2, squeeze=False, width_ratios=[3, 2])
    for (left, right), part in zip(grid, parts):
        series, start, window = memory_series(part), process_start(part), pass_window(part)
        shaded: set[str] = set()
        for phase in part["phases"]:
            if phase.get("end"):
                name = phase["phase"]
                left.axvspan(phase["start"] - start, phase["end"] - start, color=PHASE_COLORS.get(name, "#eee"),
                             alpha=0.6, lw=0, label=None if name in shaded else f"phase: {name}")
                shaded.add(name)
        for s in series:
            if s.panel == "both":
                _line(left, s, start)
        status = part["summary"].get("status")
        left.set_title(part["label"] + ("" if status == "ok" else f": FAILED ({_first_line(part['summary'].get('error'))})"),
                       loc="left", fontsize=10)
        left.set_ylabel("MiB")
        left.set_xlabel("seconds since the process started", fontsize=8)
        left.legend(loc="upper left", fontsize=7, ncols=2)
        left.grid(alpha=0.3)
        _pass_panel(right, series, window)
    fig.suptitle("Memory over time: whole process (left, phases shaded) and the timed pass (right)")
    return fig


def _pass_panel(ax, series: list[Series], window: tuple[float, float] | None) -> None:
    if window is None:
        ax.text(0.5, 0.5, "no timed pass", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    t0, end = window
    margin = max(0.1 * (end - t0), 0.05)
    for s in series:
        if s.panel in ("both", "pass"):
            _line(ax, _clip(s, t0 - margin, end + margin), t0)
    kv = [s for s in series if s.panel == "kv"]
    if kv:
        twin = ax.twinx()
        for s in kv:
            _line(twin, s, t0, color="#d62828")
        twin.set_ylabel("vLLM KV in use, MiB", fontsize=8, color="#d62828")
        twin.set_ylim(bottom=0)
    ax.axvspan(0, end - t0, color=PHASE_COLORS["generate"], alpha=0.4, lw=0)
    ax.set_xlim(-margin, end - t0 + margin)
    ax.set_title("timed pass", loc="left", fontsize=9)
    ax.set_xlabel("seconds since the timed pass's t=0", fontsize=8)
    ax.set_ylabel("MiB")
    handles = ax.get_lines() + [line for other in ax.get_shared_x_axes().get_siblings(ax) if other is not ax
                                for line in other.get_lines()]
    if handles:  # one legend for both y axes
        ax.legend(handles=handles, loc="best", fontsize=7)
    ax.grid(alpha=0.3)


def _line(ax, s: Series, origin: float, **kw) -> None:
    ax.plot([t - origin for t in s.t], s.mib, s.style, label=s.label, lw=1.4,
            drawstyle="steps-post" if s.steps else "default", **kw)


def _clip(s: Series, lo: float, hi: float) -> Series:
    keep = [i for i, t in enumerate(s.t) if lo <= t <= hi]
    return Series(s.label, [s.t[i] for i in keep], [s.mib[i] for i in keep], s.style, s.steps, s.panel)


def performance_figure(runs: list[dict]) -> Figure | None:
    """Left: output tokens/s per backend/mode. Right: TTFT, TPOT, E2E p50 and p99 (log scale)."""
    if not runs:
        return None
    labels = [f"{r['backend']}/{r['mode']}" + ("" if r.get("status") == "ok" else "\n(failed)") for r in runs]
    metrics = [r.get("metrics") or {} for r in runs]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 2])
    x = list(range(len(runs)))
    bars = left.bar(x, [m.get("output_tokens_per_s") or 0 for m in metrics], color="#457b9d")
    left.bar_label(bars, fmt="%.0f", fontsize=8)
    left.set_xticks(x, labels, fontsize=8)
    left.set_ylabel("output tokens/s (timed pass)")
    left.set_title("Throughput", loc="left")
    keys = [f"{name}_s_{p}" for name in ("ttft", "tpot", "e2e") for p in ("p50", "p99")]
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        values = [m.get(key) or 0 for m in metrics]
        right.bar([xi - 0.4 + width * (i + 0.5) for xi in x], values, width,
                  label=key.replace("_s_", " ").upper().replace("P50", "p50").replace("P99", "p99"),
                  color=("#1d3557", "#a8dadc", "#e63946")[i // 2], alpha=1.0 if i % 2 == 0 else 0.55)
    right.set_xticks(x, labels, fontsize=8)
    if any(m.get(k) for m in metrics for k in keys):
        right.set_yscale("log")
    right.set_ylabel("seconds (log scale)")
    right.set_title("Latency: TTFT, TPOT, E2E (p50 solid, p99 light)", loc="left")
    right.legend(fontsize=7, ncols=3)
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    return fig


def kv_breakdown_figure(breakdown: list[dict]) -> Figure | None:
    """Stacked bars, percent of KV memory per category: the paper's Figure 2 bars, then this run's."""
    ours = {_row_label(row): _shares(row) for row in breakdown}
    ours = {k: v for k, v in ours.items() if v}
    if not ours:
        return None
    bars = {f"paper: {k}": v for k, v in PAPER_FIG2.items()} | {f"this run: {k}": v for k, v in ours.items()}
    fig = Figure(figsize=(max(7, 1.1 * len(bars) + 2), 4.8), layout="constrained")
    ax = fig.subplots()
    x = list(range(len(bars)))
    bottom = [0.0] * len(bars)
    for category in CATEGORIES + ("not broken down",):
        values = [v.get(category, 0.0) if category != "not broken down" else max(0.0, 100 - sum(v.values()))
                  for v in bars.values()]
        if category == "not broken down" and max(values) < 0.5:
            continue
        drawn = ax.bar(x, values, 0.7, bottom=bottom, label=category, color=CATEGORY_COLORS[category],
                       hatch="//" if category == "not broken down" else None)
        ax.bar_label(drawn, labels=[f"{v:.1f}" if v >= 4 else "" for v in values], label_type="center", fontsize=7)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.axvline(len(PAPER_FIG2) - 0.5, color="black", lw=0.8)
    ax.set_xticks(x, [k.replace(": ", ":\n") for k in bars], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of KV-cache memory")
    ax.set_title("Where the KV-cache memory goes (paper: Kwon et al. 2023, Figure 2; vLLM's 3.7% rest not broken down there)",
                 loc="left", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _row_label(row: dict) -> str:
    if row.get("label"):
        return str(row["label"])
    if row.get("backend"):
        return f"{row['backend']}/{row.get('mode', '')}".rstrip("/")
    return str(row.get("run", "?"))


def _shares(row: dict) -> dict[str, float]:
    """A kv_breakdown row's shares, mapped onto the paper's categories, in percent (fractions scaled)."""
    raw = row.get("shares") if isinstance(row.get("shares"), dict) else row
    out: dict[str, float] = {}
    for key, value in raw.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        category = _category(key)
        if category:
            out[category] = out.get(category, 0.0) + float(value)
    if out and sum(out.values()) <= 1.5:  # fractions of 1, not percent
        out = {k: v * 100 for k, v in out.items()}
    return out


def _category(key: str) -> str | None:
    key = key.lower()
    if "token" in key and "per" not in key:
        return "token states"
    if "reserv" in key:
        return "reservation"
    if "internal" in key or "pad" in key:
        return "internal fragmentation"
    if "external" in key or "other" in key:
        return "external fragmentation & other"
    return None


def capacity_figure(capacity: dict) -> Figure | None:
    """Throughput against concurrency, one line per approach (capacity.json: {"points": [...]} or a list)."""
    points = capacity.get("points") or capacity.get("curve") or capacity.get("runs") if isinstance(capacity, dict) else capacity
    x_key = _first_key(points, ("concurrency", "concurrent_requests", "batch_size", "max_num_seqs", "requests"))
    y_key = _first_key(points, ("output_tokens_per_s", "tokens_per_s", "requests_per_s"))
    if not points or not x_key or not y_key:
        return None
    lines: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        if p.get(x_key) is not None and p.get(y_key) is not None:
            lines.setdefault(_row_label(p) if (p.get("label") or p.get("backend") or p.get("run")) else
                             str(p.get("approach", "run")), []).append((p[x_key], p[y_key]))
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    for name, xy in lines.items():
        xy.sort()
        ax.plot([a for a, _ in xy], [b for _, b in xy], "o-", label=name)
    ax.set_xlabel(x_key.replace("_", " "))
    ax.set_ylabel(y_key.replace("_per_s", "/s").replace("_", " "))
    ax.set_title("Capacity: throughput against concurrency under one KV budget", loc="left", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _first_key(points, keys: tuple[str, ...]) -> str | None:
    if not isinstance(points, list) or not points or not isinstance(points[0], dict):
        return None
    return next((k for k in keys if k in points[0]), None)


def _first_line(text) -> str:
    return (str(text or "unknown error").strip().splitlines() or ["unknown error"])[0][:80]


# -- writing ---------------------------------------------------------------------------------------


def kv_breakdown_rows(run_dir: Path, runs: list[dict]) -> tuple[list[dict], str | None]:
    """lab.breakdown.kv_breakdown's rows, or none and the reason (no data)."""
    from lab.breakdown import kv_breakdown

    try:
        rows = kv_breakdown(run_dir, runs)
    except Exception as exc:  # noqa: BLE001  NOTE: a plot must never stop the report
        return [], f"the KV breakdown could not be computed: {type(exc).__name__}: {exc}"
    return list(rows or []), None if rows else "the KV breakdown found no data in this run"


def write_plots(run_dir: Path) -> list[dict]:
    """Draw every plot the run folder's data allows; write plots.json; return its entries.

    Entry: {"name", "title", "file"} for a drawn plot, {"name", "title", "skipped": reason} otherwise.
    """
    run_dir = Path(run_dir)
    parts = load_parts(run_dir)
    runs = [p["summary"] for p in parts]
    entries = [
        _save(run_dir, "memory", "Memory over time", memory_figure(parts), "no collector samples in this run"),
        _save(run_dir, "performance", "Throughput and latency", performance_figure(runs), "no backend/mode in this run"),
    ]
    rows, reason = kv_breakdown_rows(run_dir, runs)
    entries.append(_save(run_dir, "kv_breakdown", "KV-cache memory breakdown beside the paper's Figure 2",
                         kv_breakdown_figure(rows) if rows else None, reason or "no shares in the KV breakdown"))
    capacity_path = run_dir / CAPACITY
    capacity = rec.read_json(capacity_path) if capacity_path.exists() else None
    entries.append(_save(run_dir, "capacity", "Capacity curve", capacity_figure(capacity) if capacity else None,
                         "no capacity run in this folder (capacity.json)" if capacity is None
                         else "capacity.json holds no points to draw"))
    rec.write_json(run_dir / INDEX, {"plots": entries})
    return entries


def _save(run_dir: Path, name: str, title: str, fig: Figure | None, reason: str) -> dict:
    if fig is None:
        (run_dir / f"{name}.png").unlink(missing_ok=True)  # a regenerated report must not show a stale plot
        return {"name": name, "title": title, "skipped": reason}
    path = run_dir / f"{name}.png"
    tmp = path.with_name(f"{name}.part.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return {"name": name, "title": title, "file": path.name}


def plots_markdown(run_dir: Path) -> list[str]:
    """report.md's Plots section from plots.json: an image link per plot, a line per skipped one."""
    index = Path(run_dir) / INDEX
    if not index.exists():
        return []
    lines = ["## Plots", ""]
    for entry in rec.read_json(index)["plots"]:
        if entry.get("file"):
            lines += [f"![{entry['title']}]({entry['file']})", ""]
        else:
            lines += [f"- {entry['title']}: not drawn: {entry['skipped']}.", ""]
    return lines
