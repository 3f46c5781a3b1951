"""Which GPUs a run may use (exit 2 on a bad request), the environment every process gets, and the CPU
binding of vLLM's workers: pure functions, the host's GPU count passed in."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.errors import LabInputError
from lab.experiments.backend_run import collector_args
from lab.hardware.gpus import (
    MULTICAST_OFF,
    check_gpu_request,
    collector_gpus,
    cpu_rank_binding,
    docker_gpus,
    multicast_env,
    native_gpu_env,
    visible_gpu_count,
)


@pytest.mark.parametrize(
    "tp, lab_gpus, cuda_visible, nvml_count, fragment",
    [
        (4, None, None, 2, "--tensor-parallel-size 4 needs 4 GPUs, but this run may use 2 (NVML sees 2 GPU(s))"),
        (2, "0", None, 8, "this run may use 1 (LAB_GPUS=0)"),
        (2, None, "3", 8, "this run may use 1 (CUDA_VISIBLE_DEVICES='3', NVML sees 8)"),
        (1, None, None, 0, "no GPU is usable here"),
        (1, "0,5", None, 2, "names GPU 5, but NVML sees 2 GPU(s)"),
        (1, "0,0", None, 2, "names GPU 0 twice"),
        (1, "a", None, 2, "'a' is not a GPU index"),
        (1, "", None, 2, "LAB_GPUS is set but empty"),
        (1, "0,1", "2,3", 4, "LAB_GPUS='0,1' and CUDA_VISIBLE_DEVICES='2,3' disagree"),
    ],
)
def test_a_bad_gpu_request_is_refused_with_the_fix(tp, lab_gpus, cuda_visible, nvml_count, fragment):
    with pytest.raises(LabInputError) as error:
        check_gpu_request(tp, "cuda", lab_gpus, cuda_visible, nvml_count)
    assert fragment in str(error.value)


def test_the_refusal_names_the_gpus_to_choose():
    with pytest.raises(LabInputError, match="LAB_GPUS=0,1,2,3"):
        check_gpu_request(4, "cuda", None, None, 2)


@pytest.mark.parametrize(
    "tp, lab_gpus, cuda_visible, nvml_count",
    [(2, None, None, 2), (2, "2,3", None, 4), (2, None, "0,1", 4), (2, "1,0", "1,0", 2), (8, None, None, 8)],
)
def test_a_request_within_the_gpus_passes(tp, lab_gpus, cuda_visible, nvml_count):
    check_gpu_request(tp, "cuda", lab_gpus, cuda_visible, nvml_count)


def test_on_the_cpu_ranks_are_processes_and_need_no_gpu():
    check_gpu_request(4, "cpu", None, None, 0)
    with pytest.raises(LabInputError, match="not a GPU index"):
        check_gpu_request(1, "cpu", "x", None, 0)


def test_cuda_visible_devices_counts_at_most_what_nvml_sees():
    assert visible_gpu_count(None, "0,1,2,3", 2)[0] == 2
    assert visible_gpu_count(None, "-1", 2)[0] == 0
    assert visible_gpu_count(None, "GPU-aaaa,GPU-bbbb", 4)[0] == 2  # CUDA also takes UUIDs


def test_containers_get_lab_gpus_or_the_first_n():
    assert docker_gpus("2, 3", 2) == "2,3"
    assert docker_gpus(None, 4) == "0,1,2,3"


def test_native_children_see_lab_gpus_in_nvml_order():
    assert native_gpu_env("0,1") == {"CUDA_VISIBLE_DEVICES": "0,1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert native_gpu_env(None) == {}


def test_multicast_is_switched_off_where_unset_and_a_set_value_is_kept():
    assert multicast_env({}) == MULTICAST_OFF
    assert multicast_env({"NCCL_NVLS_ENABLE": "1"}) == {
        "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
        "NVSHMEM_DISABLE_NVLS": "1",
    }


def test_cpu_workers_get_even_contiguous_groups():
    assert cpu_rank_binding(2, [0, 1]) == "0|1"
    assert cpu_rank_binding(2, [3, 2, 1, 0, 4, 5, 6, 7]) == "0,1,2,3|4,5,6,7"
    assert cpu_rank_binding(4, [0, 1]) == "0|1|0|1"  # fewer CPUs than workers: they share


@pytest.mark.parametrize(
    ("lab_gpus", "cuda_visible", "expected"),
    [
        ("2", None, "2"),
        (" 1, 3 ", "7", "1,3"),  # LAB_GPUS wins (the CLI refuses a disagreement before this)
        (None, "2,3", "2,3"),
        (None, "GPU-5f1c", None),  # a UUID is no NVML index: read every GPU
        (None, "-1", None),
        (None, None, None),
    ],
)
def test_the_collector_reads_only_the_runs_gpus(lab_gpus, cuda_visible, expected):
    assert collector_gpus(lab_gpus, cuda_visible) == expected


@pytest.mark.parametrize(("gpus", "expected_tail"), [("2", ["--gpus", "2"]), (None, ["--stop-file", "/r/p/stop"])])
def test_lab_collect_is_told_the_runs_gpus(gpus, expected_tail):
    args = collector_args("hf-batched", rf.PartFolder(Path("/r/p")), gpus, 15)
    assert args[0] == "collect"
    assert args[-2:] == expected_tail
