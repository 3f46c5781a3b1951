"""scripts/gpu/hf_step_facts.py's pure helpers: the step windows, the runs' shares of the time budget and
the like-for-like comparison over the same steps. The script itself runs on the real model
(CPU: `LAB_GPU_DRY=1 scripts/gpu/measure.sh hf-steps`)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def facts(gpu_script):
    return gpu_script("hf_step_facts")


def test_windows_parse_ranges_and_last(facts):
    assert facts.parse_windows("1-50, 500-550,last50") == [("1-50", 1, 50), ("500-550", 500, 550), ("last50", None, 50)]


@pytest.mark.parametrize("bad", ["0-5", "9-3", "a-b", "7"])
def test_a_bad_window_is_refused_saying_the_form(facts, bad):
    with pytest.raises(ValueError, match="FIRST-LAST"):
        facts.parse_windows(bad)


def test_step_ms_counts_the_prefill_as_step_one(facts):
    assert facts.step_ms([10.5, 10.52, 10.56], start=10.0) == pytest.approx([500.0, 20.0, 40.0])


def test_window_medians_take_steps_from_one_and_say_how_many_ran(facts):
    steps = [100.0] + [float(k) for k in range(2, 61)]  # step k lasts k ms, step 1 (prefill) 100
    windows = facts.parse_windows("1-3,10-20,55-70,80-90,last5")
    medians = facts.window_medians(steps, windows)
    assert medians["1-3"] == {"median_ms": 3.0, "steps": 3}  # 100, 2, 3
    assert medians["10-20"] == {"median_ms": 15.0, "steps": 11}
    assert medians["55-70"] == {"median_ms": 57.5, "steps": 6}  # the run ended at step 60
    assert medians["80-90"] is None
    assert medians["last5"] == {"median_ms": 58.0, "steps": 5}


def test_the_budget_is_shared_by_the_chosen_runs_by_weight(facts):
    weights = {"a": 0.4, "b": 0.1, "c": 0.5}
    assert facts.split_budget(["a", "b", "c"], weights, 100) == {"a": 40.0, "b": 10.0, "c": 50.0}
    assert facts.split_budget(["a", "b"], weights, 100) == {"a": 80.0, "b": 20.0}


def test_same_steps_compares_over_the_shorter_run(facts):
    runs = {
        "steps-b16": {"rows": 16, "steps": 4, "step_ms": [50.0, 10.0, 10.0, 30.0], "wall_s": 0.1},
        "nosync-b16": {"rows": 16, "steps": 2, "wall_s": 0.03},  # no timer: wall time over its steps
        "nvml-b16": {"rows": 16, "steps": 4, "step_ms": [50.0, 20.0, 20.0, 30.0], "wall_s": 0.12},
        "steps-b1": {"rows": 1, "steps": 4, "step_ms": [1.0] * 4, "wall_s": 0.004},
        "broken": {"error": "RuntimeError: x"},
    }
    compared = facts.same_steps(runs)
    assert compared["nosync-b16"] == {"steps": 2, "ms_per_step": 15.0, "steps-b16": 30.0, "ratio": 0.5}
    assert compared["nvml-b16"] == {"steps": 4, "ms_per_step": 30.0, "steps-b16": 25.0, "ratio": 1.2}
    assert set(compared) == {"nosync-b16", "nvml-b16"}


@pytest.mark.parametrize(
    ("name", "waits"),
    [
        ("cudaDeviceSynchronize", True),
        ("cudaStreamSynchronize", True),
        ("cudaMemcpyAsync", True),
        ("cudaLaunchKernel", False),
        ("aten::mm", False),
    ],
)
def test_syncs_and_copies_to_the_host_count_as_waiting(facts, name, waits):
    assert facts.is_wait(name) is waits
