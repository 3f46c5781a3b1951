"""Plots and report.html from the recorded run folder tests/fixtures/run-cpu-tiny: no engine involved."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import pytest
from matplotlib.image import imread

from lab import paper
from lab import run_folder as rf
from lab.records import BackendResult, RunSummary
from lab.report import memory_plot, plots
from lab.report.analyses import analyse
from lab.report.html import table_to_html
from lab.report.markdown import plots_section
from lab.report.run_view import RunView
from lab.report.writer import write_report

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run-cpu-tiny"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A copy of the fixture: plots and reports are written into the run folder."""
    return Path(shutil.copytree(FIXTURE, tmp_path / FIXTURE.name))


def fail_vllm(run_dir: Path) -> None:
    """Make the copy look like a run whose vLLM process failed after loading began (as experiment.py records it)."""
    summary = rf.read_json(run_dir / rf.SUMMARY)
    for run in summary["runs"]:
        if run["backend"] == "vllm":
            run.update(status="error", error="RuntimeError: engine core died\nmore lines", metrics=None)
    rf.write_json(run_dir / rf.SUMMARY, summary)
    part = rf.RunFolder(run_dir).part("vllm-offline")
    for path in (run_dir / rf.KV_SAMPLES, part.kv_samples):
        path.write_text("", encoding="utf-8")
    data = rf.read_json(part.result)
    data["phases"] = [p for p in data["phases"] if p["phase"] == "load"]
    rf.write_json(part.result, data)


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200


def write_plots(run_dir: Path) -> list[dict]:
    view = RunView(run_dir)
    return plots.write_plots(view, analyse(view).breakdown)


def test_write_plots_draws_valid_pngs_and_says_what_it_skipped(run_dir: Path):
    entries = {e["name"]: e for e in write_plots(run_dir)}
    for name in ("memory", "performance", "kv_breakdown"):
        assert entries[name]["file"] == f"{name}.png"
        assert_png(run_dir / f"{name}.png")
    assert rf.read_json(run_dir / rf.PLOTS_INDEX)["plots"] == list(entries.values())
    skipped = {e["name"]: e for e in plots.write_plots(RunView(run_dir), breakdown=[])}
    assert skipped["kv_breakdown"]["skipped"] == "the KV breakdown found no data in this run"
    assert not (run_dir / "kv_breakdown.png").exists()  # a regenerated report shows no stale plot


def test_memory_figure_has_one_series_per_source(run_dir: Path):
    parts = memory_plot.plot_parts(RunView(run_dir))
    fig = memory_plot.memory_figure(parts)
    axes = fig.axes
    # 4 backend/modes x (whole process, timed pass) + vLLM's right-hand KV axis
    assert len(axes) == 4 * 2 + 1
    by_title = {ax.get_title(loc="left"): ax for ax in axes[::1] if ax.get_title(loc="left")}
    for label in ("hf/sequential", "hf/batched", "hf/static-cache", "vllm/offline"):
        labels = [line.get_label() for line in by_title[label].get_lines()]
        assert labels == ["psutil: process tree RSS (host)"]  # CPU run: no NVML, no torch allocator
    kv_axis = [ax for ax in axes if ax.get_ylabel() == "KV blocks in use, MiB"]
    assert len(kv_axis) == 1 and len(kv_axis[0].get_lines()) == 1
    kv_line = kv_axis[0].get_lines()[0]
    blocks = [r["blocks_used"] for r in rf.read_jsonl(run_dir / rf.KV_SAMPLES)]
    block_mib = 1073741824 / 32768 / 2**20  # the fixture's pool bytes / blocks
    assert list(kv_line.get_ydata()) == pytest.approx([b * block_mib for b in blocks])


def test_memory_series_reads_nvml_and_the_allocator_where_recorded():
    samples = [
        {"t": 10.0 + i, "source": "nvml", "tree_gpu_mib": 100.0 + i, "device_used_mib": 500.0 + i} for i in range(3)
    ]
    result = {
        "backend": "hf",
        "mode": "batched",
        "clock_wall_t0": 11.0,
        "phases": [{"phase": "load", "start": 10.0, "end": 10.5}, {"phase": "generate", "start": 11.0, "end": 12.0}],
        "memory": {"weights_allocated_bytes": 64 * 2**20},
        "engine": {
            "batches": [
                {
                    "batch_size": 2,
                    "padded_prompt_tokens": 8,
                    "start_s": 0.0,
                    "end_s": 0.5,
                    "peak_allocated_bytes": 80 * 2**20,
                },
                {
                    "batch_size": 2,
                    "padded_prompt_tokens": 8,
                    "start_s": 0.5,
                    "end_s": 1.0,
                    "peak_allocated_bytes": 96 * 2**20,
                },
            ]
        },
    }
    part = memory_plot.PlotPart(RunSummary("hf", "batched"), BackendResult.from_dict(result), samples)
    series = memory_plot.memory_series(part)
    assert [s.label for s in series] == [
        "NVML: process tree GPU memory",
        "NVML: whole GPU used",
        "torch allocator: weights",
        "torch allocator: peak allocated per batch",
    ]
    assert series[3].t == [11.0, 11.5, 11.5, 12.0] and series[3].mib == [80, 80, 96, 96]
    assert series[2].mib == [64, 64]


def test_performance_figure_has_a_bar_per_backend_mode_and_six_latency_series(run_dir: Path):
    runs = RunView(run_dir).runs
    throughput, latency = plots.performance_figure(runs).axes
    assert len(throughput.containers) == 1 and len(throughput.containers[0]) == 4
    assert len(latency.containers) == 6  # TTFT, TPOT, E2E x p50, p99
    heights = [bar.get_height() for bar in throughput.containers[0]]
    assert heights == pytest.approx([r.metrics["output_tokens_per_s"] for r in runs])


def test_a_failed_backend_is_drawn_as_failed_not_dropped(run_dir: Path):
    fail_vllm(run_dir)
    write_plots(run_dir)
    assert_png(run_dir / "memory.png")
    fig = memory_plot.memory_figure(memory_plot.plot_parts(RunView(run_dir)))
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert "vllm/offline: FAILED (RuntimeError: engine core died)" in titles
    assert "no timed pass" in [t.get_text() for ax in fig.axes for t in ax.texts]
    throughput = plots.performance_figure(RunView(run_dir).runs).axes[0]
    assert [t.get_text() for t in throughput.get_xticklabels()][-1] == "vllm/offline\n(failed)"


def test_a_breakdown_entry_maps_onto_the_papers_categories_in_percent():
    shares = {
        "token_states": 0.25,
        "reservation": 0.5,
        "internal_fragmentation": 0.125,
        "external_fragmentation": None,
        "other": 0.125,
    }  # external not measured: left out
    assert plots.paper_categories_pct(shares) == {
        "token states": 25.0,
        "reservation": 50.0,
        "internal fragmentation": 12.5,
        "external fragmentation & other": 12.5,
    }


def test_kv_breakdown_puts_the_papers_bars_beside_ours_and_the_memory_held_apart():
    of_budget = {
        "hf/static-cache": {"token states": 25.0, "reservation": 75.0},
        "vllm/offline": {"token states": 45.0, "internal fragmentation": 5.0, "external fragmentation & other": 50.0},
    }
    of_held = {
        "hf/static-cache": {"token states": 25.0, "reservation": 75.0},
        "vllm/offline": {"token states": 90.0, "internal fragmentation": 10.0},
    }
    fig = plots.kv_breakdown_figure(of_budget, of_held)
    ax, held = fig.axes[0], fig.axes[1]
    names = [t.get_text() for t in ax.get_xticklabels()]
    assert names[:4] == ["paper:\nOrca (Max)", "paper:\nOrca (Pow2)", "paper:\nOrca (Oracle)", "paper:\nvLLM"]
    assert names[4:] == ["this run:\nhf/static-cache", "this run:\nvllm/offline"]
    token_states = next(c for c in ax.containers if c.get_label() == "token states")
    assert [b.get_height() for b in token_states] == pytest.approx([20.4, 26.8, 38.2, 96.3, 25.0, 45.0])
    rest = next(c for c in ax.containers if c.get_label() == "not broken down")
    assert rest[3].get_height() == pytest.approx(3.7)  # the paper gives vLLM's token states only
    held_states = next(c for c in held.containers if c.get_label() == "token states")
    assert [t.get_text() for t in held.get_xticklabels()] == ["hf/static-cache", "vllm/offline"]
    assert [b.get_height() for b in held_states] == pytest.approx([25.0, 90.0])
    assert plots.kv_breakdown_figure({}, {}) is None


def test_the_papers_orca_bars_add_up_to_the_whole():
    for name in ("Orca (Max)", "Orca (Pow2)", "Orca (Oracle)"):
        assert sum(paper.FIG2_SHARES_PCT[name].values()) == pytest.approx(100, abs=0.15)  # rounded in the paper
    assert paper.FIG2_SHARES_PCT["vLLM"] == {"token states": 96.3}
    assert paper.FIG2_TOKEN_STATES_PCT == {"Orca (Max)": 20.4, "Orca (Pow2)": 26.8, "Orca (Oracle)": 38.2, "vLLM": 96.3}


def test_plots_section_links_each_drawn_plot_and_names_each_skipped_one(run_dir: Path):
    entries = plots.write_plots(RunView(run_dir), breakdown=[])
    text = "\n".join(plots_section(entries))
    assert "![Memory over time](memory.png)" in text
    assert "- KV-cache memory breakdown beside the paper's Figure 2: not drawn: the KV breakdown found no data" in text


def test_report_html_is_self_contained(run_dir: Path):
    write_report(run_dir)
    page = (run_dir / rf.HTML_REPORT).read_text(encoding="utf-8")
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3  # memory, performance, kv_breakdown
    assert all(base64.b64decode(data)[:8] == PNG_SIGNATURE for data in images)
    assert not re.search(r'(src|href)="(?!data:)', page), "no external resource"
    assert "<script" not in page
    # throughput, latency, memory, KV breakdown (of D, of the memory held), decode bandwidth: report.md's tables
    assert page.count("<table>") == 6
    assert "<details><summary>manifest.json</summary>" in page
    assert "hf/static-cache" in page and "Conditions" in page


def test_markdown_tables_become_html_tables_through_tabulate():
    html = table_to_html(["| a | b |", "|---|--:|", "| x<y | 1,024 |"])
    assert "<th>a</th>" in html.replace(" ", "") and "x&lt;y" in html and "1,024" in html
