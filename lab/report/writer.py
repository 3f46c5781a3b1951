"""Regenerate everything derived from a run folder's records, computing each analysis once:
kv_breakdown.json, the plots, report.md and report.html.

Imports neither torch nor vllm: a report can be regenerated anywhere with `lab report RUN_DIR`.
"""

from __future__ import annotations

from pathlib import Path

from lab import paper
from lab import run_folder as rf
from lab.report.analyses import analyse
from lab.report.html import render_html
from lab.report.markdown import render_markdown
from lab.report.plots import write_plots
from lab.report.run_view import RunView


def write_report(run_dir: Path) -> str:
    """Write kv_breakdown.json, the plots (plots.json, *.png), report.md and report.html into the run
    folder; return report.md's text."""
    view = RunView(run_dir)
    analyses = analyse(view)
    rf.write_json(
        view.folder.kv_breakdown,
        {
            "runs": [e.to_dict() for e in analyses.breakdown],
            "paper_fig2_token_states_pct": dict(paper.FIG2_TOKEN_STATES_PCT),
        },
    )
    plots = write_plots(view, analyses.breakdown)  # before report.md: it links the plots drawn
    markdown = render_markdown(view, analyses, plots)
    rf.atomic_write(view.folder.report, markdown)
    rf.atomic_write(view.folder.html_report, render_html(view, markdown))
    return markdown
