"""The lines a report gives a run cut off part-way (`lab.cut.Cut`): at the top of report.md, sharing.md
and capacity.md, and beside an online sweep's table for a backend/mode whose later rates did not run.
Renders the `cut` entries of the files; computes nothing."""

from __future__ import annotations

from lab.cut import Cut
from lab.online_settings import rate_text
from lab.records import RunSummary


def cut_lines(cut: dict | None, points: str = "backend/modes") -> list[str]:
    """'**Cut off** (...)' and a blank line for a run folder whose `cut` is set; [] otherwise."""
    found = Cut.from_dict(cut)
    if found is None:
        return []
    at = f" at {found.cut_at}" if found.cut_at is not None else ""
    partial = f", and what of {found.cut_at} finished (its own cut is below)" if found.partial else ""
    not_run = [f"{p} (in part)" if found.partial and p == found.cut_at else str(p) for p in found.points_not_run]
    return [
        f"**Cut off** ({found.reason}){at}: only the {points} that finished are here{partial}. "
        f"Not run: {', '.join(not_run)}.",
        "",
    ]


def rates_cut_lines(runs: list[RunSummary]) -> list[str]:
    """'Rates not run: ...' for each backend/mode whose online sweep was cut after some rates finished."""
    cut = [(run.label, Cut.from_dict(run.cut)) for run in runs if run.cut]
    if not cut:
        return []
    texts = [f"{label}: {', '.join(str(rate_text(r)) for r in c.points_not_run)} ({c.reason})" for label, c in cut]
    return ["Rates not run (the sweep was cut; the rates above finished whole): " + "; ".join(texts) + "."]
