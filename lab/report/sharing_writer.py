"""A sharing sweep's report: sharing.json, the two plots, sharing.md and sharing.html, regenerated
from the points' run folders (`lab report SWEEP_DIR` does it again)."""

from __future__ import annotations

import html
from pathlib import Path

from tabulate import tabulate

from lab import paper
from lab import run_folder as rf
from lab.report.format import fmt, mib, pct
from lab.report.html import CSS, markdown_to_html
from lab.report.sharing import SharingRow, forking_observation, observation, sharing_rows
from lab.report.sharing_plot import SAVING_PNG, THROUGHPUT_PNG, plot_saving, plot_throughput

HEADERS = [
    "point",
    "backend/mode",
    "status",
    "output tokens",
    "output tok/s",
    "mean blocks",
    "peak blocks",
    "mean KV MiB",
    "saving",
    "in-run saving",
    "hit rate",
    "requests / budget",
    "x unshared",
]


def write_sharing_report(sweep_dir: Path) -> str:
    """Write sharing.json, the plots, sharing.md and sharing.html; return sharing.md's text."""
    folder = rf.RunFolder(Path(sweep_dir))
    rows = sharing_rows(folder.path)
    rf.write_json(folder.sharing_json, {"rows": [r.to_dict() for r in rows], "paper": _paper()})
    drawn = {
        SAVING_PNG: plot_saving(rows, folder.path / SAVING_PNG),
        THROUGHPUT_PNG: plot_throughput(rows, folder.path / THROUGHPUT_PNG),
    }
    manifest = rf.read_json(folder.manifest)
    markdown = render_sharing(rows, manifest, drawn)
    rf.atomic_write(folder.sharing_md, markdown)
    rf.atomic_write(folder.sharing_html, _html(markdown, folder.path, manifest))
    return markdown


def _paper() -> dict:
    return {
        "fig15_saving_pct": paper.FIG15_SAVING_PCT,
        "fig15_definition": paper.FIG15_DEFINITION,
        "fig16_throughput_gain": paper.FIG16_THROUGHPUT_GAIN,
    }


def render_sharing(rows: list[SharingRow], manifest: dict, drawn: dict[str, bool]) -> str:
    engine = manifest["config"]["engine"]
    lines = [
        f"# Memory sharing: {manifest['run_id']}",
        "",
        f"Model {engine['model']}, workload {engine['workload']}, device {engine['device']}, "
        f"block size {engine['block_size']}, {engine['repeats']} timed pass(es) per run; each point's run "
        "folder is under `points/`. Conditions and versions: each point's manifest.json.",
        "",
        "- Shares in percent. **saving**: the paper's memory saving, (blocks without sharing - blocks with) / "
        "blocks without, "
        "vllm/shared (prefix cache on) against vllm/offline (off) at the same point, mean blocks in use "
        "over the engine steps. hf/continuous (transformers forks the n samples in its paged cache, block sharing "
        "on): its in-run saving. hf's generate() modes: 0, transformers expands their cache per sequence.",
        "- **in-run saving**: within a paged run (vllm/shared, hf/continuous), 1 - pool blocks / blocks in the "
        "running sequences' tables (a shared block counts once in the pool, once per table in the tables).",
        "- **hit rate**: vLLM's prefix cache, prompt tokens found / looked up over the pass.",
        "- **requests / budget**: requests vLLM's usable pool holds at this run's blocks (hf: bytes) per request.",
        "- **output tokens** count every sequence: requests x n (or beams) x output length.",
        "",
        *_cut_lines(manifest),
        tabulate([_cells(r) for r in rows], headers=HEADERS, tablefmt="github", disable_numparse=True),
        "",
        "## Against the paper",
        "",
        f"Figure 15 (OPT-13B, {paper.FIG15_DEFINITION}): "
        + "; ".join(
            f"{kind} " + ", ".join(f"{w} {lo:g}-{hi:g}%" for w, (lo, hi) in r.items())
            for kind, r in paper.FIG15_SAVING_PCT.items()
        )
        + ". Section 6.4: "
        + ", ".join(f"{k} {v:g}x" for k, v in paper.FIG16_THROUGHPUT_GAIN.items())
        + " throughput over Orca (Oracle) with a shared prefix.",
        "",
    ]
    for point in dict.fromkeys(r.point for r in rows):
        at = [r for r in rows if r.point == point]
        texts = [t for t in (observation(at[0].kind, at), forking_observation(at[0].kind, at)) if t]
        none = f"- {point}: no sharing to measure (no vllm/shared beside vllm/offline, no hf/continuous)."
        lines += [f"- {t}" for t in texts] or [none]
    lines.append("")
    for name, ok in drawn.items():
        lines.append(f"![{name}]({name})" if ok else f"{name}: not drawn (no figures to plot).")
    return "\n".join(lines) + "\n"


def _cut_lines(manifest: dict) -> list[str]:
    """A sweep cut off before its last point: why, and which points did not run."""
    cut = manifest.get("cut")
    if not cut:
        return []
    return [
        f"**Cut off** ({cut['reason']}): the points below finished; not run: {', '.join(cut['points_not_run'])}.",
        "",
    ]


def _cells(row: SharingRow) -> list[str]:
    return [
        row.point,
        row.run,
        row.status,
        fmt(row.output_tokens, 0),
        fmt(row.output_tokens_per_s, 1),
        fmt(row.mean_blocks, 1),
        fmt(row.peak_blocks, 0),
        fmt(mib(row.mean_kv_bytes), 1),
        pct(row.saving),
        pct(row.in_run_saving),
        pct(row.hit_rate),
        fmt(row.requests_per_budget, 1),
        fmt(row.gain_over_unshared, 2),
    ]


def _html(markdown: str, path: Path, manifest: dict) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>PagedAttention Lab sharing sweep {html.escape(manifest['run_id'])}</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n{markdown_to_html(markdown, path)}\n</body>\n</html>\n"
    )
