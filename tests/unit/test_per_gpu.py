"""Several GPUs: the per-GPU figures of the collector's samples, summed per backend over the GPUs its
processes used (idle GPUs of the host left out), and the KV arithmetic of a model split over GPUs."""

from __future__ import annotations

import pytest

from lab.accounting.parallel import kv_bytes_per_token_per_gpu, kv_heads_per_gpu, tensor_parallel_problem
from lab.experiments.merge import summarize_run
from lab.hardware.sources import combine_gpus
from lab.hardware.timeline import gpus_holding_tree, per_gpu_peaks, restricted_to_gpus
from lab.records import BackendResult


def gpu(index, tree, used, power, util, procs):
    return {
        "gpu": index,
        "tree_gpu_mib": tree,
        "proc_gpu_mib": procs,
        "other_gpu_mib": 0.0,
        "device_used_mib": used,
        "device_total_mib": 80000.0,
        "gpu_util_pct": util,
        "power_w": power,
    }


def nvml_sample(t, gpus):
    return {"kind": "sample", "run": "vllm-offline", "t": t, "source": "nvml", "pids": [1, 2, 3, 4],
            "tree_rss_mib": 100.0, **combine_gpus(gpus), "gpus": gpus}  # fmt: skip


# vLLM with TP=2 on GPUs 0 and 1 of a host with three; GPU 2 holds another user's 5,000 MiB.
SAMPLES = [
    nvml_sample(
        10.0, [gpu(0, 0.0, 500.0, 70.0, 0, {}), gpu(1, 0.0, 500.0, 70.0, 0, {}), gpu(2, 0.0, 5000.0, 90.0, 50, {})]
    ),
    nvml_sample(
        11.0,
        [
            gpu(0, 1000.0, 1500.0, 300.0, 90, {"3": 1000.0}),
            gpu(1, 1200.0, 1700.0, 320.0, 80, {"4": 1200.0}),
            gpu(2, 0.0, 5000.0, 90.0, 50, {}),
        ],
    ),  # fmt: skip
    nvml_sample(
        12.0,
        [
            gpu(0, 1100.0, 1600.0, 310.0, 100, {"3": 1100.0}),
            gpu(1, 900.0, 1400.0, 330.0, 100, {"4": 900.0}),
            gpu(2, 0.0, 5000.0, 90.0, 50, {}),
        ],
    ),  # fmt: skip
]


def test_the_gpus_used_are_those_holding_the_tree():
    assert gpus_holding_tree(SAMPLES) == [0, 1]


def test_restricting_to_the_gpus_used_sums_them_again_without_the_idle_one():
    first, second, third = restricted_to_gpus(SAMPLES, [0, 1])
    assert [g["gpu"] for g in second["gpus"]] == [0, 1]
    assert second["tree_gpu_mib"] == 2200.0 and third["tree_gpu_mib"] == 2000.0
    assert second["device_used_mib"] == 1500.0 + 1700.0  # not GPU 2's 5,000
    assert second["power_w"] == 620.0 and second["gpu_util_pct"] == 85.0
    assert second["proc_gpu_mib"] == {"3": 1000.0, "4": 1200.0}


def test_each_gpu_keeps_its_own_peaks():
    peaks = per_gpu_peaks(restricted_to_gpus(SAMPLES, [0, 1]))
    assert list(peaks) == ["0", "1"]
    assert peaks["0"]["nvml_tree_peak_mib"] == 1100.0 and peaks["1"]["nvml_tree_peak_mib"] == 1200.0
    assert peaks["0"]["nvml_device_peak_mib"] == 1600.0 and peaks["1"]["peak_power_w"] == 330.0
    assert peaks["0"]["mean_gpu_util_pct"] == pytest.approx((0 + 90 + 100) / 3, abs=0.05)


def test_the_summary_sums_the_backend_over_its_gpus_and_lists_each():
    result = BackendResult("vllm", "offline", status="ok", phases=[{"phase": "generate", "start": 10.5, "end": 12.5}])
    summary = summarize_run(result, [], SAMPLES)
    memory = summary.memory
    assert memory["gpus_used"] == [0, 1]
    # the peak of the per-sample sum (2,200 at t=11), not the sum of the per-GPU peaks (2,300)
    assert memory["whole_process"]["nvml_tree_peak_mib"] == 2200.0
    assert memory["whole_process"]["nvml_device_peak_mib"] == 3200.0
    assert memory["generate_phase"]["samples"] == 2
    assert memory["per_gpu"]["generate_phase"]["1"]["nvml_tree_peak_mib"] == 1200.0
    assert summary.energy["available"] and summary.energy["gpus"] == [0, 1]  # sampled power, integrated
    assert summary.energy["energy_j"] == pytest.approx((300 + 310) / 2 + (320 + 330) / 2)


def test_kv_heads_split_or_replicate_over_gpus():
    assert kv_heads_per_gpu(8, 2) == 4 and kv_heads_per_gpu(8, 16) == 1
    eight_b = {"num_layers": 32, "num_kv_heads": 8, "head_dim": 128, "dtype_bytes": 2}
    assert kv_bytes_per_token_per_gpu(eight_b, 1) == 131072  # 128 KiB per token on one GPU
    assert kv_bytes_per_token_per_gpu(eight_b, 2) == 65536
    assert kv_bytes_per_token_per_gpu({"num_layers": 2}, 2) is None


@pytest.mark.parametrize(
    "label, heads, kv_heads, gpus, fragment",
    [
        ("hf/batched", 2, 1, 2, "transformers splits the 1 KV heads over the 2 ranks"),
        ("vllm/offline", 2, 1, 2, None),  # vLLM replicates the one KV head
        ("vllm/offline", 6, 3, 2, "vLLM needs the 3 KV heads to divide by 2 GPUs"),
        ("hf/static-cache", 3, 3, 2, "its 3 attention heads do not split evenly over 2 GPUs"),
        ("hf/sequential", 64, 8, 4, None),
        ("hf/continuous", 64, 8, 4, "not wired or measured with several GPUs"),
        ("hf/continuous", 32, 8, 1, None),
    ],
)
def test_which_models_split_over_how_many_gpus(label, heads, kv_heads, gpus, fragment):
    problem = tensor_parallel_problem(*label.split("/"), heads, kv_heads, gpus)
    assert problem is None if fragment is None else fragment in problem
