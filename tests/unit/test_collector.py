"""The collector: the psutil fallback against a real process tree, and the NVML attribution logic
against a fake NVML (this machine has no GPU)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from lab.errors import LabInputError
from lab.hardware.collector import ProcessTree, run_collector, sample
from lab.hardware.sources import NvmlSource, PsutilSource, attribute_to_tree, gpu_process_bytes, open_source
from lab.hardware.timeline import read_timeline, summarize_timeline
from lab.run_folder import MalformedJsonLine

MIB = 1024 * 1024

# The "backend": writes its pid to the pid file (as a backend does at start), starts a grandchild that
# allocates 200 MB after 0.5 s and holds it for 1 s, then exits once the grandchild has.
BACKEND = textwrap.dedent(
    """
    import os, subprocess, sys, time
    pid_file, grandchild_file = sys.argv[1], sys.argv[2]
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(pid_file + ".tmp", pid_file)
    gc = subprocess.Popen([sys.executable, "-c",
        "import time; time.sleep(0.5); b = bytearray(200 * 1024 * 1024); time.sleep(1.0)"])
    with open(grandchild_file, "w") as f:
        f.write(str(gc.pid))
    gc.wait()
    time.sleep(0.2)
    """
)


def nvml_starts() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


def collector_process(out: Path, **kwargs) -> multiprocessing.Process:
    """run_collector in a process of its own, as in production (spawned: a clean interpreter)."""
    proc = multiprocessing.get_context("spawn").Process(target=run_collector, args=(out,), kwargs=kwargs)
    proc.start()
    return proc


def wait_for_header(out: Path, timeout_s: float = 30) -> None:
    """The header is written and flushed once the source is open, before any waiting or sampling."""
    deadline = time.monotonic() + timeout_s
    while not (out.exists() and out.read_text().endswith("\n")):
        assert time.monotonic() < deadline, "the collector wrote no header"
        time.sleep(0.05)


def test_fallback_samples_the_whole_tree_until_the_root_exits(tmp_path):
    out, pid_file, gc_file = tmp_path / "timeline.jsonl", tmp_path / "backend.pid", tmp_path / "gc.pid"
    collector = collector_process(out, pid_file=pid_file, interval_ms=15, run_name="hf-batched", max_seconds=30)
    wait_for_header(out)  # the collector starts first and waits for the pid file, as in a real run
    backend = subprocess.Popen([sys.executable, "-c", BACKEND, str(pid_file), str(gc_file)])
    backend.wait(timeout=30)
    collector.join(timeout=10)
    assert collector.exitcode == 0

    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is complete JSON
    header, samples, summary = records[0], records[1:-1], records[-1]
    assert header["kind"] == "header" and summary["kind"] == "summary"
    assert all(s["kind"] == "sample" and s["run"] == "hf-batched" for s in samples)

    if nvml_starts():
        assert summary["source"] == "nvml"
    else:
        assert header["source"] == summary["source"] == "psutil"
        assert "NVML" in header["fallback_reason"] and header["fallback_reason"] == summary["fallback_reason"]
        assert all(s["source"] == "psutil" and s["tree_gpu_mib"] is None and s["power_w"] is None for s in samples)

    grandchild = int(gc_file.read_text())
    assert summary["root_pid"] == backend.pid
    assert any({backend.pid, grandchild} <= set(s["pids"]) for s in samples)

    rss = [s["tree_rss_mib"] for s in samples]
    assert max(rss) - rss[0] > 150  # the grandchild's 200 MB bytearray shows up in the tree's RSS
    assert summary["peak_tree_rss_mib"] == max(rss)

    assert summary["stop_reason"] == "root_exited"
    assert summary["samples"] == len(samples)
    # 15 ms for ~1.9 s is ~125 samples; the bound is generous for a loaded 2-core CI machine.
    assert summary["duration_s"] > 1.0 and len(samples) / summary["duration_s"] >= 20
    assert summary["mean_interval_ms"] < 40
    stats = summarize_timeline(records)  # the file's summary is the fold of its own samples
    assert {key: summary[key] for key in stats} == stats


def test_sigterm_stops_the_collector_with_a_complete_file(tmp_path):
    out = tmp_path / "timeline.jsonl"
    backend = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        collector = collector_process(out, pid=backend.pid, interval_ms=15)
        wait_for_header(out)
        time.sleep(1.2)
        os.kill(collector.pid, signal.SIGTERM)
        collector.join(timeout=10)
        assert collector.exitcode == 0
    finally:
        backend.kill()
        backend.wait()
    timeline = read_timeline(out)
    assert timeline["complete"]
    assert timeline["summary"]["stop_reason"] == "signal:SIGTERM"
    assert timeline["summary"]["samples"] == len(timeline["samples"]) > 20


def test_an_exited_but_unreaped_root_counts_as_exited(tmp_path):
    root = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 20
    while psutil.Process(root.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)  # exited; we do not wait() for it yet, so it lingers as a zombie
    try:
        summary = run_collector(tmp_path / "t.jsonl", pid=root.pid, max_seconds=10)
    finally:
        root.wait()
    assert summary["stop_reason"] == "root_exited"
    assert summary["samples"] == 0


def test_stop_file_max_seconds_and_missing_root(tmp_path):
    stop_file = tmp_path / "stop"
    stop_file.touch()
    assert run_collector(tmp_path / "a.jsonl", pid=os.getpid(), stop_file=stop_file)["stop_reason"] == "stop_file"

    summary = run_collector(tmp_path / "b.jsonl", pid=os.getpid(), max_seconds=0.3)
    assert summary["stop_reason"] == "max_seconds" and summary["samples"] > 5

    # the pid file never appears: the collector gives up at max_seconds and still writes a complete file
    summary = run_collector(tmp_path / "c.jsonl", pid_file=tmp_path / "never.pid", max_seconds=0.3)
    assert summary["stop_reason"] == "max_seconds" and summary["root_pid"] is None
    assert read_timeline(tmp_path / "c.jsonl")["complete"]

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert run_collector(tmp_path / "d.jsonl", pid=gone.pid)["stop_reason"] == "root_not_found"


def test_the_collector_needs_exactly_one_pid_source(tmp_path):
    with pytest.raises(LabInputError):
        run_collector(tmp_path / "x.jsonl")
    with pytest.raises(LabInputError):
        run_collector(tmp_path / "x.jsonl", pid=1, pid_file=tmp_path / "p")
    with pytest.raises(LabInputError):
        run_collector(tmp_path / "x.jsonl", pid=1, interval_ms=0)


def test_read_timeline_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"kind":"header","source":"psutil"}\n{"kind":"sample","t":1.0,"source":"psutil"}\n{"kind":"sam')
    timeline = read_timeline(path)
    assert len(timeline["samples"]) == 1 and timeline["summary"] is None and not timeline["complete"]


def test_read_timeline_names_the_torn_line_and_refuses_a_damaged_one(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"kind":"header","source":"psutil"}\n{"kind":"sample","t":1.0,"source":"psutil"}\n{"kind":"sam')
    assert read_timeline(path)["torn_line"] == 3
    path.write_text('{"kind":"header","source":"psutil"}\n{"kind":"sam\n{"kind":"sample","t":1.0,"source":"psutil"}\n')
    with pytest.raises(MalformedJsonLine, match="t.jsonl, line 2"):
        read_timeline(path)


# --- NVML attribution, against a fake --------------------------------------------------------------


class FakeNvml:
    """A fake of the pynvml module's few functions the collector calls: NOT NVML, only a stand-in
    with the same names and return shapes, to unit-test per-process attribution on a machine
    without a GPU. `gpus` is a list of dicts: used/total bytes, util %, power mW (None: the
    query raises, as on boards that do not support it), energy_mj (the total-energy counter; None:
    unsupported), compute/graphics: {pid: bytes or None}."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpus: list[dict], init_error: str | None = None):
        self.gpus = gpus
        self.init_error = init_error
        self.shutdowns = 0

    def nvmlInit(self):
        if self.init_error:
            raise self.NVMLError(self.init_error)

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.gpus[i]

    def nvmlDeviceGetName(self, h):
        return b"Fake GPU"  # old pynvml returned bytes

    def nvmlDeviceGetUUID(self, h):
        return "GPU-fake"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=h["used"], total=h["total"], free=h["total"] - h["used"])

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=h["util"], memory=0)

    def nvmlDeviceGetPowerUsage(self, h):
        if h.get("power_mw") is None:
            raise self.NVMLError("Not Supported")
        return h["power_mw"]

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if h.get("energy_mj") is None:
            raise self.NVMLError("Not Supported")
        return h["energy_mj"]

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=p, usedGpuMemory=b) for p, b in h.get("compute", {}).items()]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return [SimpleNamespace(pid=p, usedGpuMemory=b) for p, b in h.get("graphics", {}).items()]


def fake_gpu(**kw):
    return {"used": 10_000 * MIB, "total": 80_000 * MIB, "util": 50, "power_mw": 300_000, **kw}


def test_only_tree_processes_count_and_unknown_figures_are_none():
    proc_gpu, tree, other = attribute_to_tree({100: 1024 * MIB, 101: None, 200: 512 * MIB}, {100, 101, 5})
    assert proc_gpu == {"100": 1024.0, "101": None}
    assert tree == 1024.0  # 101's figure is unknown: not counted as zero, listed as None
    assert other == 512.0


def test_tree_memory_is_none_when_nvml_knows_no_figure_and_zero_when_off_the_gpu():
    assert attribute_to_tree({100: None}, {100})[1] is None
    assert attribute_to_tree({200: MIB}, {100}) == ({}, 0.0, 1.0)


def test_a_process_in_both_compute_and_graphics_lists_is_counted_once():
    nvml = FakeNvml([fake_gpu(compute={7: 300 * MIB, 8: None}, graphics={7: 300 * MIB, 9: 5 * MIB})])
    assert gpu_process_bytes(nvml, nvml.gpus[0]) == {7: 300 * MIB, 8: None, 9: 5 * MIB}


def test_nvml_sample_attributes_memory_to_the_tree():
    me = os.getpid()
    nvml = FakeNvml(
        [
            fake_gpu(compute={me: 3000 * MIB, 4242424: 700 * MIB}),
            fake_gpu(used=2000 * MIB, util=30, power_mw=None, compute={me: 1000 * MIB}),
        ]
    )
    source = open_source(None, nvml=nvml)
    assert isinstance(source, NvmlSource) and source.fallback_reason is None
    assert source.devices()[0] == {"gpu": 0, "name": "Fake GPU", "uuid": "GPU-fake"}
    s = sample(source, ProcessTree(me), run_name="vllm-offline")
    assert s["source"] == "nvml" and s["run"] == "vllm-offline" and s["pids"] == [me]
    assert s["gpus"][0]["tree_gpu_mib"] == 3000.0 and s["gpus"][1]["tree_gpu_mib"] == 1000.0
    assert s["tree_gpu_mib"] == 4000.0
    assert s["proc_gpu_mib"] == {str(me): 4000.0}
    assert s["other_gpu_mib"] == 700.0
    assert s["device_used_mib"] == 12000.0 and s["device_total_mib"] == 160000.0
    assert s["gpu_util_pct"] == 40.0
    assert s["gpus"][1]["power_w"] is None and s["power_w"] == 300.0  # unsupported power is unknown, not 0
    assert s["tree_rss_mib"] > 0
    source.close()
    assert nvml.shutdowns == 1


def test_selected_gpu_indices_are_checked():
    nvml = FakeNvml([fake_gpu()])
    assert [g["gpu"] for g in open_source([0], nvml=nvml).read(set())] == [0]
    with pytest.raises(LabInputError, match="GPU index 3"):
        open_source([3], nvml=nvml)


def test_an_nvml_that_does_not_start_falls_back_to_psutil_with_the_reason():
    source = open_source(None, nvml=FakeNvml([], init_error="Driver Not Loaded"))
    assert isinstance(source, PsutilSource)
    assert "Driver Not Loaded" in source.fallback_reason
    assert source.read({1}) == []


# --- the summary (pure) ------------------------------------------------------------------------------


def test_summary_peaks_means_and_energy_are_hand_computed():
    samples = [
        {"kind": "header"},
        {
            "kind": "sample",
            "t": 10.0,
            "source": "nvml",
            "pids": [1],
            "tree_rss_mib": 100.0,
            "tree_gpu_mib": 0.0,
            "proc_gpu_mib": {},
            "device_used_mib": 500.0,
            "device_total_mib": 80000.0,
            "gpu_util_pct": 0,
            "power_w": 100.0,
        },
        {
            "kind": "sample",
            "t": 11.0,
            "source": "nvml",
            "pids": [1, 2],
            "tree_rss_mib": 300.0,
            "tree_gpu_mib": 4000.0,
            "proc_gpu_mib": {"2": 4000.0},
            "device_used_mib": 4500.0,
            "device_total_mib": 80000.0,
            "gpu_util_pct": 90,
            "power_w": 200.0,
        },
        {
            "kind": "sample",
            "t": 13.0,
            "source": "nvml",
            "pids": [1, 2],
            "tree_rss_mib": 250.0,
            "tree_gpu_mib": 3000.0,
            "proc_gpu_mib": {"2": 3000.0},
            "device_used_mib": 3500.0,
            "device_total_mib": 80000.0,
            "gpu_util_pct": 60,
            "power_w": 200.0,
        },
    ]
    s = summarize_timeline(samples)
    assert s["samples"] == 3
    assert s["duration_s"] == 3.0 and s["mean_interval_ms"] == 1500.0 and s["max_gap_ms"] == 2000.0
    assert s["peak_tree_rss_mib"] == 300.0 and s["peak_tree_gpu_mib"] == 4000.0 and s["t_peak_tree_gpu"] == 11.0
    assert s["peak_proc_gpu_mib"] == {"2": 4000.0}
    assert s["peak_device_used_mib"] == 4500.0 and s["device_total_mib"] == 80000.0
    assert s["mean_gpu_util_pct"] == 50.0
    assert s["energy_j"] == 1 * (100 + 200) / 2 + 2 * 200  # trapezoid: 150 J + 400 J
    assert s["peak_power_w"] == 200.0 and s["max_pids"] == 2 and s["sources"] == ["nvml"]


def test_summary_of_an_empty_or_psutil_timeline_has_no_gpu_figures():
    assert summarize_timeline([])["samples"] == 0
    s = summarize_timeline(
        [
            {
                "kind": "sample",
                "t": 1.0,
                "source": "psutil",
                "pids": [1],
                "tree_rss_mib": 5.0,
                "tree_gpu_mib": None,
                "proc_gpu_mib": None,
                "power_w": None,
                "gpu_util_pct": None,
            }
        ]
    )
    assert s["peak_tree_rss_mib"] == 5.0 and s["peak_tree_gpu_mib"] is None
    assert s["energy_j"] is None and s["mean_gpu_util_pct"] is None and s["mean_interval_ms"] is None
