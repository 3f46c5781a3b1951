"""On an NVIDIA host: SIGTERM while vLLM runs on the GPU leaves no process of the run holding GPU
memory, and a vLLM backend killed with SIGKILL mid-run leaves no engine core on the GPU (NVML's own
list of the processes on each GPU, read before and after). The hang and the kill are the CLI's
test-only fault injection (LAB_TEST_FAULT), at the start of the timed pass."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lab import run_folder as rf
from lab.hardware import nvml as nvml_lib
from lab.hardware.sources import gpu_process_bytes

pytestmark = pytest.mark.gpu


def gpu_pids() -> set[int]:
    """Every pid NVML says holds memory on any GPU, or a skip when NVML sees no GPU."""
    count, reason = nvml_lib.gpu_count()
    if not count:
        pytest.skip(f"no NVIDIA GPU visible to NVML: {reason}")
    with nvml_lib.session() as nvml:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        return {pid for handle in handles for pid in gpu_process_bytes(nvml, handle)}


def experiment(tiny_model: Path, results: Path, fault: str, **popen_kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lab", "experiment", "--model", str(tiny_model), "--device", "cuda"]
    cmd += ["--backends", "vllm,hf/batched", "--output-tokens", "8", "--kv-cache-memory", "1GiB"]
    cmd += ["--results", str(results)]
    return subprocess.Popen(cmd, env={**os.environ, "LAB_TEST_FAULT": fault}, text=True, **popen_kwargs)


def running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def gone_from_gpu(pids: set[int], timeout_s: float = 30.0) -> set[int]:
    """Those of `pids` still on a GPU after up to `timeout_s` (the driver frees memory as processes end)."""
    deadline = time.monotonic() + timeout_s
    while (left := pids & gpu_pids()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_sigterm_during_vllm_on_the_gpu_frees_every_byte_the_run_held(tiny_model, tmp_path):
    gpu_pids()  # skips without a GPU
    results = tmp_path / "results"
    proc = experiment(tiny_model, results, "vllm/offline:hang", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = []
    for line in proc.stderr:  # until vLLM is loaded, warmed up and hanging in its timed pass
        seen.append(line)
        if "LAB_TEST_FAULT: hang" in line:
            break
    tree = psutil.Process(proc.pid).children(recursive=True)
    on_gpu = {p.pid for p in tree} & gpu_pids()
    assert on_gpu, "no process of the run held GPU memory while vLLM ran: nothing would be tested"
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(120) == 128 + signal.SIGTERM, "".join(seen) + rest
    assert gone_from_gpu(on_gpu) == set()
    assert not [p.pid for p in tree if running(p)]
    assert not results.exists() or list(results.iterdir()) == []


def test_a_vllm_backend_killed_on_the_gpu_leaves_no_engine_core_behind(tiny_model, tmp_path):
    before = gpu_pids()
    proc = experiment(tiny_model, tmp_path / "results", "vllm/offline:sigkill", stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)  # fmt: skip
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 1, stderr[-4000:]
    run_dir = Path(stdout.strip().splitlines()[-1])
    result = rf.read_json(rf.RunFolder(run_dir).part("vllm-offline").result)
    assert result["exit_signal"] == "SIGKILL"
    runs = {f"{r['backend']}/{r['mode']}": r for r in rf.read_json(run_dir / rf.SUMMARY)["runs"]}
    assert runs["hf/batched"]["status"] == "ok" and runs["hf/batched"]["metrics"]["output_tokens"] == 4 * 8
    assert gone_from_gpu(gpu_pids() - before) == set()  # nothing new holds GPU memory after the run
