"""Energy per timed pass and per output token from recorded NVML counter values (hand-computed), the
fallback to sampled power, and the meter that reads the counters at the runner's phase boundaries."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from lab.accounting.energy import (
    COUNTER,
    POWER_INTEGRAL,
    SHORT_PASS_INTEGRAL,
    counter_delta_j,
    counter_update_ms,
    energy_summary,
    gpus_used,
    pass_energy,
    trapezoid_j,
)
from lab.hardware.energy import open_meter
from lab.phases import Phases


def gpu(index: int, **figures) -> dict:
    return {"gpu": index, **figures}


def sample(t: float, *gpus: dict) -> dict:
    return {"kind": "sample", "t": t, "source": "nvml", "gpus": list(gpus)}


# A timed pass of 2 s on GPUs 0 and 1 of a host with three: GPU 2 stays idle and is not counted.
PASS = {
    "phase": "generate",
    "start": 100.0,
    "end": 102.0,
    "energy_start_mj": {"0": 1_000_000, "1": 2_000_000, "2": 5_000},
    "energy_end_mj": {"0": 1_600_000, "1": 2_700_000, "2": 5_100},
    "gpus_used": [0, 1],
}
SAMPLES = [
    sample(100.5, gpu(0, power_w=310.0, gpu_util_pct=90), gpu(1, power_w=360.0, gpu_util_pct=80), gpu(2, power_w=60.0)),
    sample(
        101.5, gpu(0, power_w=290.0, gpu_util_pct=100), gpu(1, power_w=340.0, gpu_util_pct=100), gpu(2, power_w=61.0)
    ),
    sample(103.0, gpu(0, power_w=900.0, gpu_util_pct=0), gpu(1, power_w=900.0, gpu_util_pct=0)),  # after the pass
]


def test_counter_deltas_are_joules_and_a_reset_counter_is_unknown():
    assert counter_delta_j(1_000_000, 1_600_000) == 600.0
    assert counter_delta_j(None, 5) is None
    assert counter_delta_j(10, 5) is None  # a driver reload restarts the counter


def test_trapezoid_integrates_power_over_time():
    assert trapezoid_j([(0.0, 200.0), (1.0, 300.0), (3.0, 300.0)]) == 250.0 + 600.0
    assert trapezoid_j([(0.0, 200.0)]) is None


def test_a_pass_sums_the_counters_of_the_gpus_used_only():
    found = pass_energy(PASS, SAMPLES, output_tokens=1000)
    assert found["gpus"] == [0, 1]
    assert found["energy_j"] == 600.0 + 700.0
    assert found["j_per_output_token"] == 1.3
    assert found["mean_power_w"] == 650.0
    zero, one = found["per_gpu"]
    assert (zero["energy_j"], zero["mean_power_w"], zero["method"]) == (600.0, 300.0, COUNTER)
    assert (zero["peak_power_w"], zero["mean_util_pct"]) == (310.0, 95.0)  # the sample after the pass is out
    assert (one["energy_j"], one["peak_power_w"], one["mean_util_pct"]) == (700.0, 360.0, 90.0)


def test_without_a_counter_the_sampled_power_is_integrated_and_said_so():
    phase = dict(PASS, energy_start_mj={"0": None}, energy_end_mj={"0": None}, gpus_used=[0])
    samples = [
        sample(100.0, gpu(0, power_w=200.0)),
        sample(101.0, gpu(0, power_w=300.0)),
        sample(102.0, gpu(0, power_w=300.0)),
    ]
    (only,) = pass_energy(phase, samples, output_tokens=100)["per_gpu"]
    assert (only["energy_j"], only["method"]) == (250.0 + 300.0, POWER_INTEGRAL)


def test_a_pass_shorter_than_two_counter_updates_integrates_the_sampled_power_instead():
    # The H100 of 2026-11-26: the counter moves every 105 ms; vLLM's 50 ms pass read 0 J from it.
    short = {"phase": "repeat", "start": 100.0, "end": 100.05, "gpus_used": [0]}
    short |= {"energy_start_mj": {"0": 7_000}, "energy_end_mj": {"0": 7_000}}
    samples = [sample(100.0, gpu(0, power_w=300.0)), sample(100.05, gpu(0, power_w=320.0))]
    (only,) = pass_energy(short, samples, output_tokens=10, update_ms=105.0)["per_gpu"]
    assert (only["energy_j"], only["method"]) == (pytest.approx(0.05 * 310.0), SHORT_PASS_INTEGRAL)
    # A counter that moved in a pass of two updates or more is kept as is.
    long = dict(short, end=100.3, energy_end_mj={"0": 97_000})
    (kept,) = pass_energy(long, samples, output_tokens=10, update_ms=105.0)["per_gpu"]
    assert (kept["energy_j"], kept["method"]) == (90.0, COUNTER)


def test_a_pass_too_short_for_the_counter_and_without_samples_says_so():
    short = {"phase": "repeat", "start": 100.0, "end": 100.05, "gpus_used": [0]}
    short |= {"energy_start_mj": {"0": 7_000}, "energy_end_mj": {"0": 7_000}}
    updates = [sample(90.0 + 0.105 * i, gpu(0, energy_mj=1000 * i)) for i in range(4)]  # a 105 ms counter
    found = energy_summary([short], updates, 10, {"source": "nvml"})
    assert found["available"] is False
    assert "too short for the energy counter (updated every 105 ms)" in found["reason"]


def test_the_gpus_used_come_from_the_collector_where_the_runner_has_none():
    phase = {"phase": "generate", "start": 0.0, "end": 1.0}
    samples = [sample(0.5, gpu(0, tree_gpu_mib=0.0), gpu(1, tree_gpu_mib=900.0)), sample(2.0, gpu(0, tree_gpu_mib=5.0))]
    assert gpus_used(phase, samples) == [1]


def test_the_counter_update_period_is_the_median_time_between_changes():
    values = [0, 0, 0, 0, 0, 0, 0, 40, 40, 40, 40, 40, 40, 80]  # changes at t=0.105 and t=0.195
    samples = [sample(0.015 * i, gpu(0, energy_mj=v)) for i, v in enumerate(values)]
    assert counter_update_ms(samples) == pytest.approx(90.0)


def test_the_summary_is_the_last_pass_and_lists_every_pass():
    repeat = dict(PASS, phase="repeat", start=90.0, end=92.0, energy_end_mj={"0": 1_500_000, "1": 2_500_000})
    load = {"phase": "load", "start": 0.0, "end": 50.0}
    found = energy_summary([load, repeat, PASS], SAMPLES, 1000, {"source": "nvml"})
    assert found["available"] and found["method"] == COUNTER
    assert found["energy_j"] == 1300.0 and found["j_per_output_token"] == 1.3
    assert [p["energy_j"] for p in found["passes"]] == [500.0 + 500.0, 1300.0]


def test_no_energy_says_why():
    cpu = {"phase": "generate", "start": 0.0, "end": 1.0}
    no_nvml = energy_summary([cpu], [], 10, {"source": None, "reason": "NVML did not start: no driver"})
    assert no_nvml == {"available": False, "reason": "no NVML energy counter (NVML did not start: no driver)"}
    assert "held no GPU" in energy_summary([dict(cpu, gpus_used=[])], [], 10, {"source": "nvml"})["reason"]
    assert energy_summary([], [], 10, None)["reason"] == "no timed pass finished"


class FakeNvml:
    """A stand-in for the pynvml functions the meter calls: NOT NVML. Two GPUs; this test process
    holds memory on GPU 1 only; each counter reading advances by 1,000 mJ."""

    class NVMLError(Exception):
        pass

    def __init__(self):
        self.readings = 0
        self.shutdowns = 0

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return "Fake GPU"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-fake-{h}"

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self.readings += 1
        return 1_000 * self.readings

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=os.getpid(), usedGpuMemory=2**30)] if h == 1 else []

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return []


def test_the_runner_reads_every_counter_at_each_phase_boundary():
    nvml = FakeNvml()
    meter, facts = open_meter(os.getpid(), nvml=nvml)
    assert facts["counter"] == "nvmlDeviceGetTotalEnergyConsumption" and len(facts["gpus"]) == 2
    phases = Phases(meter)
    phases.start("generate")
    phases.end()
    (phase,) = phases.items
    assert phase["energy_start_mj"] == {"0": 1_000, "1": 2_000}
    assert phase["energy_end_mj"] == {"0": 3_000, "1": 4_000}
    assert phase["gpus_used"] == [1]
    meter.close()
    assert nvml.shutdowns == 1


def test_without_nvml_the_meter_gives_the_reason():
    class NoDriver(FakeNvml):
        def nvmlInit(self):
            raise self.NVMLError("Driver Not Loaded")

    meter, facts = open_meter(os.getpid(), nvml=NoDriver())
    assert meter is None and facts["source"] is None and "Driver Not Loaded" in facts["reason"]
