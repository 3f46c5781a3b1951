"""The energy meter: NVML's total-energy counter of every GPU, read by the runner at each phase's
start and end, so that the energy of a timed pass is exact, not sampled.

Why the runner and not the collector: the runner knows the pass's boundaries to the microsecond (the
counter is read right before the clock starts and right after its last, synchronised reading); the
collector samples every 15 ms and would cut the pass at its nearest samples. The collector reads the
same counter in every sample too (`energy_mj` of each GPU in timeline.jsonl), for the timeline and
for how often the driver updates the counter.

The counter (`nvmlDeviceGetTotalEnergyConsumption`) counts millijoules since the driver loaded, per
GPU (Volta and later). The meter reads every GPU NVML sees; which of them a run used is read at each
phase's end: the GPUs on which a process of the backend's tree (the root named by the pid file: the
backend process, or torchrun's agent) has a context. `lab.accounting.energy` turns the readings into
joules per pass and per output token.

NVML in the backend process creates no CUDA context (it talks to the driver only).
"""

from __future__ import annotations

import psutil

from lab.hardware.sources import NvmlSource, open_source

COUNTER = "nvmlDeviceGetTotalEnergyConsumption"


class EnergyMeter:
    """Reads the counters of every GPU NVML sees and which of them hold the tree rooted at `root_pid`."""

    def __init__(self, source: NvmlSource, root_pid: int) -> None:
        self.source = source
        self.root_pid = root_pid

    def read_mj(self) -> dict[str, int | None]:
        """{str(NVML index): counter in mJ, None where the GPU has none}."""
        return self.source.energy_mj()

    def tree_gpus(self) -> list[int]:
        """NVML indices of the GPUs on which a process of the tree has a context."""
        try:
            root = psutil.Process(self.root_pid)
            pids = {self.root_pid} | {p.pid for p in root.children(recursive=True)}
        except psutil.Error:
            pids = {self.root_pid}
        return self.source.gpus_holding(pids)

    def describe(self) -> dict:
        """What result.json's `energy_meter` records: the counter and the GPUs it read."""
        return {"source": "nvml", "counter": COUNTER, "gpus": self.source.devices()}

    def close(self) -> None:
        self.source.close()


def open_meter(root_pid: int, nvml=None) -> tuple[EnergyMeter | None, dict]:
    """(meter, its description) where NVML starts and sees a GPU, else (None, {"source": None, "reason"}).

    `nvml`: the pynvml module by default; tests pass a fake.
    """
    source = open_source(None, nvml=nvml)
    if not isinstance(source, NvmlSource):
        return None, {"source": None, "reason": source.fallback_reason}
    if not source.devices():
        source.close()
        return None, {"source": None, "reason": "NVML sees no GPU"}
    meter = EnergyMeter(source, root_pid)
    return meter, meter.describe()
