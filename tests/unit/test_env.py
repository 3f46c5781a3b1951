"""The environment record: complete, JSON-serialisable, and never raising when a part is broken."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

import lab
from lab import cli_options
from lab.errors import LabInputError
from lab.hardware import env, nvml
from lab.launchers.native import NativeLauncher

KEYS = {
    "lab_version",
    "git",
    "python",
    "platform",
    "cpu",
    "memory",
    "torch",
    "transformers",
    "accelerate",
    "vllm",
    "nvml",
    "gpu_env",
}


class FakeNvml:
    """A fake of the pynvml functions env.nvml_facts calls (not NVML): one 80 GB GPU, old-style bytes names."""

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlSystemGetDriverVersion(self):
        return b"580.65.06"

    def nvmlSystemGetCudaDriverVersion(self):
        return 13000

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, h):
        return "GPU-0000"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=81559 * 1024 * 1024, used=0, free=81559 * 1024 * 1024)

    NVML_CLOCK_MEM = 2

    def nvmlDeviceGetMemoryBusWidth(self, h):
        return 5120

    def nvmlDeviceGetMaxClockInfo(self, h, clock_type):
        assert clock_type == self.NVML_CLOCK_MEM
        return 2619


def test_environment_has_every_part_and_serialises():
    e = env.collect_environment()
    assert set(e) == KEYS
    assert e["lab_version"] == lab.__version__
    assert e["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert e["cpu"]["logical_cores"] >= 1 and e["memory"]["total_gib"] > 0
    assert "available" in e["nvml"]
    if not e["nvml"]["available"]:
        assert e["nvml"]["reason"]
    if e["vllm"]["installed"]:
        assert e["vllm"]["distribution"] in env.VLLM_DISTRIBUTIONS
    if e["torch"]["installed"]:
        assert "version" in e["torch"] and ("cuda_available" in e["torch"] or "error" in e["torch"])
    json.dumps(e)


def test_a_torch_that_fails_to_import_is_recorded_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    e = env.collect_environment()
    assert set(e) == KEYS
    if e["torch"]["installed"]:
        assert "ImportError" in e["torch"]["error"] or "ModuleNotFoundError" in e["torch"]["error"]


def test_a_crashing_torch_probe_is_recorded_not_raised(monkeypatch):
    monkeypatch.setattr(env, "TORCH_PROBE", "import torch_that_does_not_exist")
    facts = env.probe_torch()
    assert "ModuleNotFoundError" in facts["error"]


def test_every_broken_part_becomes_an_error_entry(monkeypatch):
    def boom():
        raise RuntimeError("broken on purpose")

    for name in (
        "git_facts",
        "python_facts",
        "platform_facts",
        "cpu_facts",
        "memory_facts",
        "torch_part",
        "vllm_facts",
        "nvml_facts",
        "distribution_facts",
        "gpu_env_facts",
    ):
        monkeypatch.setattr(env, name, lambda *a, **k: boom())
    e = env.collect_environment()
    assert set(e) == KEYS
    assert all(e[k] == {"error": "RuntimeError: broken on purpose"} for k in KEYS - {"lab_version"})
    assert "broken on purpose" in env.format_environment(e)


def test_nvml_facts_read_driver_and_gpus():
    facts = env.nvml_facts(FakeNvml())
    assert facts["available"] and facts["driver_version"] == "580.65.06"
    assert facts["cuda_driver_version"] == "13.0"
    gpu = facts["gpus"][0]
    assert {k: gpu[k] for k in ("index", "name", "uuid", "memory_total_mib")} == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-0000",
        "memory_total_mib": 81559,
    }
    # 2 x 2,619 MHz x 5,120 bits / 8: the H100 SXM data sheet's 3.35 TB/s
    assert gpu["memory_bus_width_bits"] == 5120 and gpu["max_memory_clock_mhz"] == 2619
    assert round(gpu["peak_memory_bandwidth_gb_s"]) == 3352


def test_a_gpu_that_does_not_report_its_memory_clock_keeps_its_other_facts():
    class NoClock(FakeNvml):
        def nvmlDeviceGetMaxClockInfo(self, h, clock_type):
            raise RuntimeError("Not Supported")

    gpu = env.nvml_facts(NoClock())["gpus"][0]
    assert gpu["memory_total_mib"] == 81559 and "Not Supported" in gpu["peak_memory_bandwidth_error"]


def test_nvml_that_does_not_start_gives_the_reason():
    class NoDriver(FakeNvml):
        def nvmlInit(self):
            raise OSError("NVML Shared Library Not Found")

    facts = env.nvml_facts(NoDriver())
    assert not facts["available"] and "NVML Shared Library Not Found" in facts["reason"]


def test_format_environment_is_a_two_column_table():
    e = {
        "lab_version": "0.1.0",
        "torch": {"installed": True, "version": "2.13.0+cpu", "gpus": []},
        "nvml": env.nvml_facts(FakeNvml()),
    }
    table = env.format_environment(e)
    lines = table.splitlines()
    assert lines[0].split() == ["item", "value"]
    assert any(line.split()[:2] == ["torch.version", "2.13.0+cpu"] for line in lines)
    assert any(line.startswith("nvml.gpus[0]") and "NVIDIA H100 80GB HBM3" in line for line in lines)
    assert any(line.split() == ["torch.gpus", "(none)"] for line in lines)


def test_gpu_count_says_why_there_is_none():
    class NoDriver(FakeNvml):
        def nvmlInit(self):
            raise OSError("Driver Not Loaded")

    assert nvml.gpu_count(FakeNvml()) == (1, None)
    count, reason = nvml.gpu_count(NoDriver())
    assert count == 0 and "Driver Not Loaded" in reason


def test_vllm_cpu_build_is_told_from_the_distribution_as_vllm_tells_it():
    assert env.vllm_is_cpu_build({"installed": True, "distribution": "vllm-cpu", "version": "0.32.0"})
    assert env.vllm_is_cpu_build({"installed": True, "distribution": "vllm", "version": "0.11.0+cpu"})
    assert not env.vllm_is_cpu_build({"installed": True, "distribution": "vllm", "version": "0.26.0"})
    assert not env.vllm_is_cpu_build({"installed": True, "distribution": "vllm", "version": "0.26.0+cu130"})
    assert env.vllm_is_cpu_build({"installed": False}) is None
    assert env.vllm_is_cpu_build({"installed": True, "distribution": None, "version": None}) is None


def test_device_cpu_with_a_gpu_build_of_vllm_is_refused_before_anything_starts(monkeypatch):
    # Seen on the H100 (2026-11-26): `--device cpu` with vLLM 0.26.0's CUDA build ran vLLM on the GPU
    # beside hf on the CPU. The facts below are a fake of vllm_facts() (no vLLM is imported).
    cuda_build = {"installed": True, "distribution": "vllm", "version": "0.26.0"}
    monkeypatch.setattr(cli_options, "vllm_facts", lambda: cuda_build)
    native = NativeLauncher()
    with pytest.raises(LabInputError, match="vllm 0.26.0, its GPU build.*Fix: --device cuda"):
        cli_options.check_vllm_device(native, "cpu", uses_vllm=True)
    cli_options.check_vllm_device(native, "cpu", uses_vllm=False)  # hf alone on the CPU: fine
    cli_options.check_vllm_device(native, "cuda", uses_vllm=True)
    monkeypatch.setattr(cli_options, "vllm_facts", lambda: {"installed": True, "distribution": "vllm-cpu"})
    cli_options.check_vllm_device(native, "cpu", uses_vllm=True)


def test_gpu_env_records_the_multicast_switches_and_gpu_choice(monkeypatch):
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    monkeypatch.setenv("LAB_GPUS", "0,1")
    monkeypatch.delenv("RANK", raising=False)
    facts = env.gpu_env_facts()
    assert facts["NCCL_NVLS_ENABLE"] == "0" and facts["LAB_GPUS"] == "0,1" and "RANK" not in facts
