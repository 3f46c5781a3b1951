"""The config tree's validation: every error names the fix."""

import pytest

from lab.config import CapacitySpec, EngineSettings, ExperimentSpec, RunSpec, parse_backends
from lab.errors import LabInputError


def test_parse_backends_expands_modes_in_order():
    assert parse_backends("hf,vllm") == (
        ("hf", "sequential"),
        ("hf", "batched"),
        ("hf", "static-cache"),
        ("hf", "static-cache-eager"),
        ("hf", "continuous"),
        ("vllm", "offline"),
    )
    assert parse_backends("vllm, hf/batched") == (("vllm", "offline"), ("hf", "batched"))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("tgi", "unknown backend 'tgi'"),
        ("hf/paged", "unknown mode 'paged' for backend 'hf'"),
        (",", "empty"),
    ],
)
def test_bad_backends(text, fragment):
    with pytest.raises(LabInputError, match=fragment):
        parse_backends(text)


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"batch_size": 0}, "--batch-size"),
        ({"gpu_memory_utilization": 1.5}, "--gpu-memory-utilization"),
        ({"block_size": 7}, "--block-size"),
        ({"device": "tpu"}, "unknown device"),
        ({"output_tokens": 0}, "--output-tokens"),
        ({"max_model_len": 0}, "--max-model-len must be 1-"),
        ({"max_model_len": -5}, "--max-model-len must be 1-"),
        ({"num_requests": 0}, "--num-requests must be 1-"),
        ({"seed": -1}, "--seed must be 0-4,294,967,295"),
        ({"seed": 2**32}, "--seed must be 0-4,294,967,295"),
        ({"repeats": 101}, "--repeats must be 1-100"),
        ({"kv_cache_memory_bytes": 0}, "--kv-cache-memory must be 1-"),
        ({"gpu_memory_utilization": 0.0}, "--gpu-memory-utilization must be in"),
    ],
)
def test_bad_engine_settings(kw, fragment):
    with pytest.raises(LabInputError, match=fragment):
        EngineSettings(model="m", workload="seed", **kw)


@pytest.mark.parametrize("timeout_s", [0, -1, 0.0, 8 * 24 * 3600])
def test_a_timeout_must_be_positive_and_at_most_a_week(timeout_s):
    engine = EngineSettings(model="m", workload="seed")
    with pytest.raises(LabInputError, match="--timeout must be more than 0"):
        ExperimentSpec(engine, timeout_s=timeout_s)
    with pytest.raises(LabInputError, match="--timeout must be more than 0"):
        CapacitySpec(engine, kv_budget_bytes=1 << 20, timeout_s=timeout_s)


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"kv_budget_bytes": 0}, "--kv-budget must be 1-"),
        ({"max_len": 0}, "--max-len must be 1-"),
        ({"concurrency": (1, 0)}, "--concurrency takes positive integers"),
        ({"concurrency": ()}, "--concurrency takes positive integers"),
    ],
)
def test_bad_capacity_settings(kw, fragment):
    settings = {"kv_budget_bytes": 1 << 20, **kw}
    with pytest.raises(LabInputError, match=fragment):
        CapacitySpec(EngineSettings(model="m", workload="seed"), **settings)


def test_run_spec_round_trips():
    spec = RunSpec("hf", "batched", EngineSettings(model="synthetic:tiny", workload="seed", batch_size=4))
    assert RunSpec.from_dict(spec.to_dict()) == spec
    assert spec.name == "hf-batched"
