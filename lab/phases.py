"""The phases of one backend process (load, warm-up, each timed pass), on the epoch clock, and their
progress in the backend's log.

The collector's samples carry epoch times, so each phase keeps its epoch start and end to line up with
them. Each start and end is also printed to the backend's log (its stdout, `log.txt`), outside the
timed interval: a run cut by a signal or a timeout shows the phase it was in (`lab.cut`), and a long
warm-up or pass shows it is moving. Under torchrun, rank k > 0 prefixes its lines 'rank k: ' (`say`), so
the log tells the ranks apart and the terminal shows rank 0's.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from lab.hardware.energy import EnergyMeter
from lab.hardware.host_cpu import HostCpuMeter
from lab.launchers.torchrun import log_prefix

PhaseHook = Callable[[str], None]


def say(text: str) -> None:
    """'lab: <text>' (rank k > 0 of torchrun: 'rank k: lab: <text>') on stdout, the backend's log, at once:
    one write of the whole line, so two ranks' lines on one pipe do not run into each other."""
    sys.stdout.write(f"{log_prefix()}lab: {text}\n")
    sys.stdout.flush()


class Phases:
    """Epoch start/end of each phase.

    With an energy meter (NVML), each phase also holds every GPU's energy counter read just before
    its start and just after its end (`energy_start_mj`, `energy_end_mj`: {str(NVML index): mJ}), and
    the GPUs the backend's process tree held at its end (`gpus_used`): a timed pass's energy is then
    exact (`lab.hardware.energy`). With a host CPU meter, each phase also holds the host's, the cgroup's
    and the backend tree's CPU counters at the same two moments (`host_cpu_start`, `host_cpu_end`:
    `lab.hardware.host_cpu`), so a pass's CPU load is known too. `on_start` is called with each phase's
    name as it starts (the CLI's test-only fault injection uses it).
    """

    def __init__(
        self, meter: EnergyMeter | None = None, on_start: PhaseHook | None = None, host: HostCpuMeter | None = None
    ) -> None:
        self.items: list[dict] = []
        self.meter = meter
        self.on_start = on_start
        self.host = host

    def start(self, name: str) -> None:
        energy = self.meter.read_mj() if self.meter else None  # before the clock starts
        host_cpu = self.host.read() if self.host else None
        say(f"{name}: started")
        self.items.append({"phase": name, "start": time.time(), "end": None})
        if energy is not None:
            self.items[-1]["energy_start_mj"] = energy
        if host_cpu is not None:
            self.items[-1]["host_cpu_start"] = host_cpu
        self.step(name)

    def step(self, name: str) -> None:
        """The `on_start` hook for `name`: each phase's start, and steps that are no phase of their own (the
        engine's close)."""
        if self.on_start is not None:
            self.on_start(name)

    def end(self) -> None:
        item = self.items[-1]
        item["end"] = time.time()
        if self.meter:  # after the clock's last reading
            item["energy_end_mj"] = self.meter.read_mj()
            item["gpus_used"] = self.meter.tree_gpus()
        if self.host:
            item["host_cpu_end"] = self.host.read()
        say(f"{item['phase']}: done in {item['end'] - item['start']:.1f} s")

    def end_open(self) -> None:
        """End the phase a failure interrupted, if one is open."""
        if self.items and self.items[-1]["end"] is None:
            self.end()
