"""scripts/gpu/lanes.sh's own logic, with a fake measure.sh (FAKE_MEASURE below) in a copy of the script's
folder: a plan line's CPUS= pins its step (taskset), and a line without it keeps every CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Stands in for measure.sh: writes the CPUs it may run on (its affinity) where the lane keeps its output
FAKE_MEASURE = f"""#!/usr/bin/env bash
{sys.executable} -c 'import os; print(",".join(map(str, sorted(os.sched_getaffinity(0)))))' > "$OUT/$1.cpus"
"""


def run_plan(tmp_path: Path, plan: str) -> Path:
    """Run `plan` through a copy of lanes.sh with the fake measure.sh; the lanes' state folder."""
    scripts = tmp_path / "scripts" / "gpu"
    scripts.mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "gpu" / "lanes.sh", scripts / "lanes.sh")
    (scripts / "measure.sh").write_text(FAKE_MEASURE)
    (scripts / "measure.sh").chmod(0o755)
    (tmp_path / "plan.txt").write_text(plan)
    state = tmp_path / "state"
    env = os.environ | {"LANES_STATE": str(state)}
    subprocess.run(["bash", "scripts/gpu/lanes.sh", "start", "plan.txt"], cwd=tmp_path, env=env, check=True)
    status = state / "lane-0" / "status"
    deadline = time.monotonic() + 60
    while "lane done" not in (status.read_text() if status.exists() else ""):
        assert time.monotonic() < deadline, f"the lane did not finish in 60 s: {status.read_text()}"
        time.sleep(0.2)
    return state


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is not installed")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell a pinned step apart")
def test_cpus_pins_the_step_and_a_line_without_it_keeps_every_cpu(tmp_path):
    every = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    first = min(os.sched_getaffinity(0))
    state = run_plan(
        tmp_path,
        f"0 pinned BACKENDS=hf/batched CPUS={first}\n0 free BACKENDS=hf/batched\n",  # transformers-only: no bundle
    )
    assert (state / "lane-0" / "out" / "pinned.cpus").read_text().strip() == str(first)
    assert (state / "lane-0" / "out" / "free.cpus").read_text().strip() == every
    status = (state / "lane-0" / "status").read_text()
    assert "pinned BACKENDS=hf/batched CPUS=" in status and status.count(": exit 0 after") == 2, status
