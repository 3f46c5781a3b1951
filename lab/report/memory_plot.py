"""memory.png: memory over time, one row per backend/mode, every line labelled with its source.

Each row shares one time axis (seconds since that backend/mode's process started: its first
collector sample or its load, whichever came first), with the phases (load, warm-up, timed pass)
shaded. The lines: NVML (process tree, whole GPU; summed over the GPUs the run used) or psutil RSS,
the torch allocator (CUDA only), the paged pools' KV blocks in use (vLLM, hf/continuous). Each GPU's
own lines: gpu_plot.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lab.accounting.pass_memory import kv_block_bytes
from lab.records import BackendResult, KvSample, RunSummary
from lab.report.figure import new_figure
from lab.report.format import MIB
from lab.report.run_view import RunView

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PHASE_COLORS = {"load": "#d9d9d9", "warmup": "#fde0a6", "repeat": "#e3f4e8", "generate": "#b7e4c7"}


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


@dataclass(frozen=True)
class PlotPart:
    """What the memory plot draws of one backend/mode: its summary, result, collector and KV samples."""

    summary: RunSummary
    result: BackendResult | None
    samples: list[dict] = field(default_factory=list)  # the collector's
    kv: list[KvSample] = field(default_factory=list)

    @property
    def phases(self) -> list[dict]:
        return self.result.phases if self.result else []


def plot_parts(view: RunView) -> list[PlotPart]:
    """Every backend/mode of the run, failed ones included (they are drawn as failed)."""
    parts = ((run, view.part(run)) for run in view.runs)
    return [PlotPart(run, part.result, view.own_timeline(run), part.kv_samples) for run, part in parts]


def process_start(part: PlotPart) -> float | None:
    """Epoch seconds of the process start: its first collector sample or its load, whichever is first."""
    times = [s["t"] for s in part.samples[:1]] + [p["start"] for p in part.phases[:1]]
    return min(times) if times else None


def memory_series(part: PlotPart) -> list[Series]:
    """The lines of one backend/mode's memory panel, each from one named source."""
    samples, series = part.samples, []
    nvml = [s for s in samples if s.get("source") == "nvml"]
    if nvml:
        series.append(_sampled(nvml, "tree_gpu_mib", "NVML: process tree GPU memory"))
        series.append(_sampled(nvml, "device_used_mib", "NVML: whole GPU used", style="--"))
    else:
        series.append(_sampled(samples, "tree_rss_mib", "psutil: process tree RSS (host)"))
    if part.result is not None:
        series += allocator_series(part.result)
        series += kv_series(part.result, part.kv)
    return [s for s in series if s.t]


def _sampled(samples: list[dict], field_name: str, label: str, style: str = "-") -> Series:
    points = [(s["t"], s[field_name]) for s in samples if s.get(field_name) is not None]
    return Series(label, [t for t, _ in points], [v for _, v in points], style)


def allocator_series(result: BackendResult) -> list[Series]:
    """The torch allocator (CUDA only): weights from load to the end, and each batch's peak while it ran."""
    memory, engine, phases, t0 = result.memory or {}, result.engine or {}, result.phases, result.clock_wall_t0
    out = []
    weights = memory.get("weights_allocated_bytes") or engine.get("weights_allocated_bytes")
    if weights and phases and phases[-1].get("end"):
        out.append(Series("torch allocator: weights", [phases[0]["end"], phases[-1]["end"]], [weights / MIB] * 2, ":"))
    batches = [b for b in result.hf_batches if b.peak_allocated_bytes is not None]
    if t0 is not None and batches:
        t, mib = [], []
        for b in batches:  # one flat segment per batch: its peak, from its start to its end
            t += [t0 + b.start_s, t0 + b.end_s]
            mib += [b.peak_allocated_bytes / MIB] * 2
        out.append(Series("torch allocator: peak allocated per batch", t, mib, "-.", panel="pass"))
    return out


def kv_series(result: BackendResult, kv: list[KvSample], t0: float | None = None) -> list[Series]:
    """A paged engine's KV blocks in use (vLLM, hf/continuous), in MiB: blocks_used x (pool bytes / blocks)
    (`lab.accounting.pass_memory.kv_block_bytes`), at t0 + each sample's `t_s` (t0: the last pass's
    epoch t=0 where not given; 0 draws seconds since the samples' own pass started)."""
    t0 = result.clock_wall_t0 if t0 is None else t0
    block_bytes = kv_block_bytes(result.engine)
    if not kv or t0 is None or not block_bytes:
        return []
    block_mib = block_bytes / MIB
    rows = [r for r in kv if r.blocks_used is not None and r.t_s is not None]
    return [
        Series(
            f"{'vLLM' if result.backend == 'vllm' else result.label}: KV blocks in use (blocks_used x block bytes)",
            [t0 + r.t_s for r in rows],
            [r.blocks_used * block_mib for r in rows],
            "-",
            steps=True,
            panel="kv",
        )
    ]


def pass_window(part: PlotPart) -> tuple[float, float] | None:
    """Epoch start and end of the timed pass (its t=0 is the runner clock's zero)."""
    window = part.result.phase("generate") if part.result else None
    if window is None:
        return None
    return part.result.clock_wall_t0 or window[0], window[1]


def memory_figure(parts: list[PlotPart]) -> Figure | None:
    """Per backend/mode, two panels on one time axis each, every line labelled with its source.

    Left: the whole process, seconds since it started, phases shaded. Right: the timed pass, seconds
    since its t=0, with the allocator's per-batch peaks and the paged pools' blocks in use (right-hand axis):
    on the left's scale the timed pass is often a sliver (vLLM's engine start alone takes a minute).
    """
    parts = [p for p in parts if process_start(p) is not None]
    if not parts:
        return None
    fig = new_figure(figsize=(12, 2.6 * len(parts) + 0.8), layout="constrained")
    grid = fig.subplots(len(parts), 2, squeeze=False, width_ratios=[3, 2])
    for (left, right), part in zip(grid, parts):
        series, start, window = memory_series(part), process_start(part), pass_window(part)
        shaded: set[str] = set()
        for phase in part.phases:
            if phase.get("end"):
                name = phase["phase"]
                left.axvspan(
                    phase["start"] - start,
                    phase["end"] - start,
                    color=PHASE_COLORS.get(name, "#eee"),
                    alpha=0.6,
                    lw=0,
                    label=None if name in shaded else f"phase: {name}",
                )
                shaded.add(name)
        for s in series:
            if s.panel == "both":
                draw_line(left, s, start)
        run = part.summary
        left.set_title(run.label + ("" if run.ok else f": FAILED ({_first_line(run.error)})"), loc="left", fontsize=10)
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
            draw_line(ax, _clip(s, t0 - margin, end + margin), t0)
    kv = [s for s in series if s.panel == "kv"]
    if kv:
        twin = ax.twinx()
        for s in kv:
            draw_line(twin, s, t0, color="#d62828")
        twin.set_ylabel("KV blocks in use, MiB", fontsize=8, color="#d62828")
        twin.set_ylim(bottom=0)
    ax.axvspan(0, end - t0, color=PHASE_COLORS["generate"], alpha=0.4, lw=0)
    ax.set_xlim(-margin, end - t0 + margin)
    ax.set_title("timed pass", loc="left", fontsize=9)
    ax.set_xlabel("seconds since the timed pass's t=0", fontsize=8)
    ax.set_ylabel("MiB")
    handles = ax.get_lines() + [
        line for other in ax.get_shared_x_axes().get_siblings(ax) if other is not ax for line in other.get_lines()
    ]
    if handles:  # one legend for both y axes
        ax.legend(handles=handles, loc="best", fontsize=7)
    ax.grid(alpha=0.3)


def draw_line(ax, s: Series, origin: float, **kw):
    """One series on `ax`, its times less `origin` (seconds); returns matplotlib's line (its colour)."""
    (line,) = ax.plot(
        [t - origin for t in s.t],
        s.mib,
        s.style,
        label=s.label,
        lw=1.4,
        drawstyle="steps-post" if s.steps else "default",
        **kw,
    )
    return line


def _clip(s: Series, lo: float, hi: float) -> Series:
    keep = [i for i, t in enumerate(s.t) if lo <= t <= hi]
    return Series(s.label, [s.t[i] for i in keep], [s.mib[i] for i in keep], s.style, s.steps, s.panel)


def _first_line(text) -> str:
    return (str(text or "unknown error").strip().splitlines() or ["unknown error"])[0][:80]
