"""`lab compare`'s online sections (issue 16): the sweeps of several run folders read as one experiment.

On a GPU the backends of one model often run as separate `lab experiment --request-rate ...` calls (one
run folder per backend group), so the rate vLLM sustains and the rate each transformers path sustains
are in different folders. Here they meet:
- the normalized latency of every backend/mode of every run at each offered rate ('median (min-max)'
  over the passes that count where a rate ran several);
- one sustained-rate table over all of them: the highest rate each keeps up with at any latency, then
  under ONE normalized-latency bound for every run: the runs'
  own --norm-latency-bound where they all give the same one, else 4x the lowest normalized latency any
  backend/mode of any run measured at its lowest offered rate (`default_latency_bound_s` over every
  sweep together); under the SLOs where every run has the same ones; vLLM's / each one's ratio, where
  vLLM is the first vllm/* backend/mode of the runs (`sustained.py` for the bounds '<' and '>=');
- the Figure 12 plot of every line (`--plot`), the shared bound dashed, drawn by `online_plot.figure12`.
Sweeps are combined only where they served the same arrivals: the same model, workload, requests,
prompt and output tokens, seed and burstiness (`comparable.schedule_identity`); otherwise the section
says which field differs and combines nothing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tabulate import tabulate

from lab import run_folder as rf
from lab.errors import LabInputError
from lab.online_metrics import default_latency_bound_s
from lab.online_settings import OnlineSettings
from lab.records import RunSummary
from lab.report.comparable import describe, differences, schedule_identity
from lab.report.format import fmt
from lab.report.online_markdown import latency_header, latency_text
from lab.report.online_plot import figure12, finite_points
from lab.report.run_view import RunView
from lab.report.sustained import BOUNDS_NOTE, columns, short_trace_note, sustained_table, vllm_key

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TITLE = "## Online serving: the sustained rate across runs"
PLOT_TITLE = "Normalized latency against request rate, every run (the paper's Figure 12)"


@dataclass(frozen=True)
class SweepRun:
    """One compared run as these sections read it: its letter, backend/modes, online settings and the
    fields that must agree for its sweeps to be combined with another run's."""

    letter: str
    runs: list[RunSummary]
    online: OnlineSettings
    identity: dict
    conditions: dict = field(default_factory=dict)  # what may differ (`compare.conditions`), named beside ratios

    @classmethod
    def of(cls, letter: str, view: RunView, conditions: dict) -> SweepRun:
        return cls(letter, view.runs, view.engine.online, schedule_identity(view), conditions)

    @property
    def swept(self) -> list[RunSummary]:
        return [r for r in self.runs if r.sweep]


def swept_runs(runs: list[SweepRun]) -> list[SweepRun]:
    return [r for r in runs if r.swept]


def refusal(runs: list[SweepRun]) -> dict[str, str]:
    """{field: 'a vs b'} of the identity fields in which the runs with a sweep differ ({}: combine)."""
    swept = swept_runs(runs)
    return differences([r.identity for r in swept]) if len(swept) > 1 else {}


def shared_bound(runs: list[SweepRun]) -> tuple[float | None, str]:
    """(the normalized-latency bound, s/token, for every run; how it was chosen)."""
    given = [r.online.norm_latency_bound_s for r in runs]
    if given and given[0] is not None and all(b == given[0] for b in given):
        return given[0], f"--norm-latency-bound {given[0]:g} s/token, the same in every run"
    sweeps = combined_sweeps(runs)
    bound = default_latency_bound_s(sweeps)
    lowest = next((" ".join(k) for k, points in sweeps.items() if default_latency_bound_s({k: points}) == bound), None)
    source = (
        "4x the lowest normalized latency that any backend/mode of any run measured at its lowest offered rate, "
        f"every run's sweep taken together ({lowest or 'none measured'})"
    )
    if any(b is not None for b in given):
        own = ", ".join(f"{r.letter} {fmt(r.online.norm_latency_bound_s, 4)}" for r in runs)
        source += f"; the runs' own --norm-latency-bound differ ({own}), so none of them is used"
    return bound, source


def shared_slos(runs: list[SweepRun]) -> tuple[bool, str | None]:
    """(whether to add the column under the SLOs, a note where the runs' SLOs differ)."""
    slos = [r.online.slos for r in runs]
    if all(s == slos[0] for s in slos):
        return bool(slos[0]), None
    given = "; ".join(f"{r.letter}: {_slo_text(r.online.slos)}" for r in runs)
    return False, f"No column under the SLOs: the runs' SLOs differ ({given}), so their attainments do not compare."


def _slo_text(slos: dict[str, float]) -> str:
    return ", ".join(f"{key} <= {value:g} s" for key, value in slos.items()) or "none"


def combined_sweeps(runs: list[SweepRun]) -> dict[tuple[str, str], list[dict]]:
    """{(run letter, backend/mode): its sweep's points} of every run, in the order given."""
    return {(r.letter, s.label): s.sweep for r in runs for s in r.swept}


def recorded_differences(runs: list[SweepRun]) -> dict[str, str]:
    """The conditions in which the runs differ where each records one (a run without vLLM records no
    vLLM version), the request rates apart (each run's own grid; the table shows it)."""
    found = {}
    for key in dict.fromkeys(k for r in runs for k in r.conditions):
        values = {r.letter: r.conditions[key] for r in runs if r.conditions.get(key) is not None}
        if key != "request rates" and len({repr(v) for v in values.values()}) > 1:
            found[key] = " vs ".join(f"{letter} {value}" for letter, value in values.items())
    return found


def combined_section(runs: list[SweepRun]) -> list[str]:
    """The sustained-rate table over every run's sweeps (module docstring); [] where no run swept."""
    swept = swept_runs(runs)
    if not swept:
        return []
    if refused := refusal(runs):
        return [
            TITLE,
            "",
            f"**Not combined:** these runs' sweeps differ in {describe(refused)}. A sustained rate compares across "
            "runs only on the same requests (model, workload, tokens) arriving on the same schedule (seed, "
            "burstiness).",
        ]
    bound, source = shared_bound(swept)
    with_slos, slo_note = shared_slos(swept)
    sweeps = combined_sweeps(swept)
    headers, rows = sustained_table(sweeps, columns(bound, with_slos))
    reference = vllm_key(sweeps)
    lines = [TITLE, "", BOUNDS_NOTE, "", f"One normalized-latency bound for every run: {source}."]
    lines += [
        f"vLLM / this: {' '.join(reference)}'s sustained rate over each one's."
        if reference
        else "No vllm/* backend/mode: no ratios."
    ]
    if slo_note:
        lines += [slo_note]
    if others := recorded_differences(swept):
        lines += [f"The runs also differ in {describe(others)}: ratios across runs take those as equal."]
    table = tabulate(rows, headers=["run", "backend/mode", *headers], tablefmt="github", disable_numparse=True)
    return lines + ["", table] + short_trace_note(sweeps)


def sweep_comparison(labelled: list[tuple[str, list[RunSummary]]]) -> list[str]:
    """Normalized latency (s/token) of every backend/mode of every run at each offered rate, '*' where
    saturated, '°' where not judged (`lab.online_judged`); [] where no run swept. `labelled`: (run letter, its runs)."""
    rows = [(letter, run) for letter, runs in labelled for run in runs if run.sweep]
    if not rows:
        return []
    rates = sorted({p["offered_rate_per_s"] for _, run in rows for p in run.sweep if p.get("offered_rate_per_s")})
    table = []
    for letter, run in rows:
        by_rate = {p.get("offered_rate_per_s"): p for p in run.sweep}
        cells = [_latency_cell(by_rate.get(rate)) for rate in rates]
        table.append([letter, run.label, *cells])
    headers = ["run", "backend/mode", *[f"{fmt(rate, 2)} req/s" for rate in rates]]
    return [
        "## Online serving: " + latency_header([run.sweep for _, run in rows]) + " at each offered rate",
        "",
        tabulate(table, headers=headers, tablefmt="github", disable_numparse=True),
        "",
        "'*': saturated at that rate; '°': not judged (every request fit the backend's concurrency limit at once, so "
        "no queue could form: the trace was too short); '-': not run (skipped after saturation, or not in that run's "
        "sweep).",
    ]


def _latency_cell(point: dict | None) -> str:
    if point is None:
        return "-"
    if point.get("saturated"):
        return latency_text(point) + "*"
    return latency_text(point) + ("°" if point.get("judged") is False else "")


def compare_figure(runs: list[SweepRun]) -> Figure | None:
    """Figure 12 with a line per (run, backend/mode), labelled 'A vllm/offline', and the shared bound;
    None without points."""
    lines = {f"{r.letter} {s.label}": finite_points(s) for r in runs for s in r.swept}
    swept = swept_runs(runs)
    return figure12(lines, PLOT_TITLE, shared_bound(swept)[0] if swept else None)


def check_plot_path(path: Path) -> None:
    """LabInputError unless `path` can be a new PNG file (its folder exists; it is not a folder)."""
    if path.is_dir() or not path.parent.is_dir():
        raise LabInputError(f"--plot {path}: give a PNG file in an existing folder (e.g. --plot compare-online.png)")


def write_compare_plot(path: Path, runs: list[SweepRun]) -> str:
    """Write the combined Figure 12 to `path` (atomically); the line report.md-style output gives."""
    if refused := refusal(runs):
        return f"No plot written to {path}: the sweeps are not combined ({describe(refused)})."
    fig = compare_figure(runs)
    if fig is None:
        return f"No plot written to {path}: no run has a point at a finite request rate (--request-rate)."
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    rf.atomic_write(path, png.getvalue())
    return f"Plot: {path} (normalized latency against offered rate, every backend/mode of every run)."
