"""A matplotlib Figure for the report's plots, and the one place matplotlib is imported."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(**kwargs) -> Figure:
    """A matplotlib Figure (never pyplot: no global figure state, no GUI backend; savefig draws with
    Agg for PNG whatever backend the process has chosen: headless CI, containers)."""
    # NOTE: every `lab` process imports this package, and the backend and collector processes are
    # measured: matplotlib (about 50 MiB resident) must load only where a plot is drawn.
    from matplotlib.figure import Figure  # noqa: PLC0415 - heavy: loaded only where a plot is drawn

    return Figure(**kwargs)
