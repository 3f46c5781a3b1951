"""The report's GPU parts: energy per output token (or n/a with the reason) for every backend/mode, the
per-GPU section of a split run, and `lab compare`'s scaling against the run with the fewest GPUs."""

from __future__ import annotations

import shutil
from pathlib import Path

from lab import run_folder as rf
from lab.records import RunSummary
from lab.report.compare import render_comparison
from lab.report.gpus_markdown import energy_section, per_gpu_section
from lab.report.writer import write_report

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run-cpu-tiny"

ENERGY = {
    "available": True,
    "gpus": [0, 1],
    "method": "nvml energy counter",
    "energy_j": 1300.0,
    "seconds": 2.0,
    "mean_power_w": 650.0,
    "j_per_output_token": 1.3,
    "per_gpu": [
        {"gpu": 0, "mean_power_w": 300.0, "peak_power_w": 310.0, "mean_util_pct": 95.0},
        {"gpu": 1, "mean_power_w": 350.0, "peak_power_w": 360.0, "mean_util_pct": 90.0},
    ],
    "counter_update_ms": 100.0,
}


def split_vllm() -> RunSummary:
    return RunSummary(
        "vllm",
        "offline",
        status="ok",
        device="cuda",
        energy=ENERGY,
        memory={
            "gpus_used": [0, 1],
            "per_gpu": {
                "whole_process": {"0": {"nvml_tree_peak_mib": 40000.0}, "1": {"nvml_tree_peak_mib": 39000.0}},
                "generate_phase": {"0": {"nvml_tree_peak_mib": 39500.0, "mean_gpu_util_pct": 97.0}},
            },
        },
        engine={
            "tensor_parallel_size": 2,
            "kv_pool_bytes": 2**30,
            "kv_pool_bytes_total": 2**31,
            "kv_tokens_capacity": 16368,
            "kv_heads_per_gpu": 4,
        },
    )


def test_energy_per_token_is_in_the_table_and_a_cpu_run_says_why_not():
    cpu = RunSummary("hf", "batched", status="ok", energy={"available": False, "reason": "the run held no GPU"})
    old = RunSummary("hf", "sequential", status="ok")
    text = "\n".join(energy_section([split_vllm(), cpu, old]))
    row = next(line for line in text.splitlines() if line.startswith("| vllm/offline"))
    assert "| 0, 1 " in row and "| 1.3000 " in row and "| 300 / 350 " in row and "| 310 / 360 " in row
    assert "- hf/batched: n/a: the run held no GPU" in text
    assert "- hf/sequential: n/a: not recorded" in text
    assert "The counter changed every 100-100 ms" in text


def test_a_split_run_gets_a_row_per_gpu_and_its_pool_per_gpu_and_in_total():
    text = "\n".join(per_gpu_section([split_vllm(), RunSummary("hf", "batched", status="ok")]))
    rows = [line for line in text.splitlines() if line.startswith("| vllm/offline")]
    assert len(rows) == 2 and "| 40,000 " in rows[0] and "| 39,000 " in rows[1]
    assert "KV pool 1,024 MiB on each of 2 GPUs = 2,048 MiB in total, 16,368 tokens, 4 KV heads per GPU" in text
    assert "hf/batched" not in text
    assert per_gpu_section([RunSummary("hf", "batched", status="ok")]) == []


def copy_run(tmp_path: Path, name: str, gpus: int, speed: float) -> Path:
    run_dir = Path(shutil.copytree(FIXTURE, tmp_path / name))
    manifest, summary = rf.read_json(run_dir / rf.MANIFEST), rf.read_json(run_dir / rf.SUMMARY)
    manifest["config"]["engine"]["tensor_parallel_size"] = gpus
    manifest["run_id"] = name
    for run in summary["runs"]:
        run["metrics"]["output_tokens_per_s"] *= speed
    rf.write_json(run_dir / rf.MANIFEST, manifest)
    rf.write_json(run_dir / rf.SUMMARY, summary)
    return run_dir


def test_compare_scales_each_run_against_the_one_with_fewest_gpus(tmp_path):
    two = copy_run(tmp_path, "tp2", 2, 1.5)
    one = copy_run(tmp_path, "tp1", 1, 1.0)
    four = copy_run(tmp_path, "tp4", 4, 2.0)
    text = render_comparison([two, one, four])
    assert "GPUs per backend/mode: 2 vs 1 vs 4" in text
    section = text.split("## Scaling with tensor parallelism")[1]
    assert "Each run against B (1 GPU(s) per backend/mode)" in section
    rows = [line for line in section.splitlines() if line.startswith("| vllm/offline")]
    assert [r.split("|")[5].strip() for r in rows] == ["1.50x", "1.00x", "2.00x"]  # speedup
    assert [r.split("|")[6].strip() for r in rows] == ["0.75", "1.00", "0.50"]  # efficiency


def test_runs_on_one_gpu_each_have_no_scaling_section(tmp_path):
    assert "Scaling" not in render_comparison([copy_run(tmp_path, "a", 1, 1.0), copy_run(tmp_path, "b", 1, 1.2)])


def test_an_older_run_still_renders_with_energy_marked_not_recorded(tmp_path):
    run_dir = shutil.copytree(FIXTURE, tmp_path / "old")
    report = write_report(run_dir)
    assert "## Energy" in report and "n/a: not recorded" in report
    assert "- GPUs per backend/mode: 1" in report and "## Memory per GPU" not in report
