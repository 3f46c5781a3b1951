"""lab compare: the same metrics of several runs side by side; refuses runs of different workloads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.errors import LabInputError
from lab.report.compare import check_comparable, identity, ratio_text, render_comparison
from lab.report.run_view import RunView

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run-cpu-tiny"


def copy_run(tmp_path: Path, name: str, edit=None) -> Path:
    """A copy of the fixture run; `edit(manifest, summary)` changes it in place."""
    run_dir = Path(shutil.copytree(FIXTURE, tmp_path / name))
    manifest, summary = rf.read_json(run_dir / rf.MANIFEST), rf.read_json(run_dir / rf.SUMMARY)
    if edit:
        edit(manifest, summary)
    manifest["run_id"] = name
    rf.write_json(run_dir / rf.MANIFEST, manifest)
    rf.write_json(run_dir / rf.SUMMARY, summary)
    return run_dir


def scale_records(run_dir: Path, name: str, factor: float, passes: int = 1) -> None:
    """Every time in runs/<name>/records.jsonl times `factor`; `passes` > 1: the pass repeated with
    the factor growing (1, 2, ...) x `factor`, each record tagged with its pass."""
    path = rf.RunFolder(run_dir).part(name).records
    rows = rf.read_jsonl(path)
    out = []
    for index in range(passes):
        scale = factor * (index + 1)
        for row in rows:
            times = {k: row[k] * scale for k in ("start_s", "first_token_s", "end_s")}
            out.append(dict(row, **times, pass_index=index if passes > 1 else None))
    rf.write_jsonl(path, out)


def test_ratios_are_each_run_over_the_first(tmp_path: Path):
    a = copy_run(tmp_path, "run-a")
    b = copy_run(tmp_path, "run-b", lambda manifest, summary: manifest["config"]["engine"].update(batch_size=4))
    scale_records(b, "hf-batched", 0.5)  # every token in half the time
    text = render_comparison([a, b])
    assert "What differs: batch size: 2 vs 4." in text
    rows = [line for line in text.splitlines() if line.startswith("| hf/batched ")]
    assert any("output tokens/s" in r and r.rstrip(" |").endswith("2.00x") for r in rows)
    assert any("TTFT p50 s" in r and r.rstrip(" |").endswith("0.50x") for r in rows)
    assert any("RSS tree peak MiB (psutil)" in r and r.rstrip(" |").endswith("1.00x") for r in rows)


def test_compare_takes_the_median_pass_not_the_last(tmp_path: Path):
    """Three passes at 1x, 2x and 3x the recorded times: the median is the 2x pass, the last the 3x one."""
    a = copy_run(tmp_path, "run-a")
    b = copy_run(tmp_path, "run-b")
    scale_records(b, "hf-batched", 1.0, passes=3)
    rows = [line for line in render_comparison([a, b]).splitlines() if line.startswith("| hf/batched ")]
    assert any("output tokens/s" in r and r.rstrip(" |").endswith("0.50x") for r in rows)
    assert any("E2E p99 s" in r and r.rstrip(" |").endswith("2.00x") for r in rows)
    assert any("timed passes counted" in r and "| 3 " in r for r in rows)


def test_runs_of_different_workloads_are_refused_naming_what_differs(tmp_path: Path):
    def other_workload(manifest, summary):
        manifest["config"]["engine"]["workload"] = "sharegpt-like"
        for run in summary["runs"]:
            run["workload"].update(name="sharegpt-like", requests=256, output_tokens=86528)

    a, b = copy_run(tmp_path, "run-a"), copy_run(tmp_path, "run-b", other_workload)
    with pytest.raises(LabInputError) as error:
        render_comparison([a, b])
    message = str(error.value)
    assert "workload: seed vs sharegpt-like" in message and "requests: 4 vs 256" in message
    assert "output tokens: 32 vs 86528" in message and "--force" in message
    forced = render_comparison([a, b], force=True)
    assert "**Not comparable, compared anyway (--force):** workload: seed vs sharegpt-like" in forced


def test_a_different_model_is_not_comparable(tmp_path: Path):
    def other_model(manifest, summary):
        manifest["config"]["engine"]["model"] = "synthetic:llama-1b"

    runs = [RunView(copy_run(tmp_path, "run-a")), RunView(copy_run(tmp_path, "run-b", other_model))]
    with pytest.raises(LabInputError, match="model: synthetic:tiny vs synthetic:llama-1b"):
        check_comparable(runs)
    assert identity(runs[0])["requests"] == 4


def test_a_failed_backend_shows_no_figures_and_is_listed(tmp_path: Path):
    def vllm_failed(manifest, summary):
        summary["runs"][-1].update(status="error", error="out of memory", metrics=None)

    text = render_comparison([copy_run(tmp_path, "run-a"), copy_run(tmp_path, "run-b", vllm_failed)])
    row = next(line for line in text.splitlines() if line.startswith("| vllm/offline ") and "output tokens/s" in line)
    assert row.rstrip(" |").endswith("| -")
    assert "- B: vllm/offline: out of memory" in text


def test_one_run_or_a_folder_that_is_not_a_run_is_bad_input(tmp_path: Path):
    with pytest.raises(LabInputError, match="two or more"):
        render_comparison([FIXTURE])
    with pytest.raises(LabInputError, match="not a finished run folder"):
        render_comparison([FIXTURE, tmp_path])


def test_ratio_of_missing_or_zero_is_a_dash():
    assert ratio_text(3.0, 1.5) == "2.00x"
    assert ratio_text(None, 1.0) == ratio_text(1.0, 0) == ratio_text(1.0, None) == "-"


def test_the_host_cpu_rows_give_each_runs_worst_pass(tmp_path: Path):
    def loaded(manifest, summary):
        for entry in summary["runs"]:
            entry["host_cpu"] = {"available": True, "max_other_cpus": 9.5, "max_throttled_s": 0.0, "warned_passes": 2}

    text = render_comparison([copy_run(tmp_path, "run-a"), copy_run(tmp_path, "run-b", loaded)])
    rows = {line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("| hf/batched ")}
    other = rows["host CPUs busy with other work, worst pass"].split("|")
    assert other[3].strip() == "-" and other[4].strip() == "9.50"  # run A predates the host CPU figures
    assert rows["passes warned of host CPU load"].split("|")[4].strip() == "2"
