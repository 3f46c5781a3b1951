"""The config tree's validation: every error names the fix."""

import pytest

from lab.config import EngineSettings, RunSpec, parse_backends
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
    ],
)
def test_bad_engine_settings(kw, fragment):
    with pytest.raises(LabInputError, match=fragment):
        EngineSettings(model="m", workload="seed", **kw)


def test_run_spec_round_trips():
    spec = RunSpec("hf", "batched", EngineSettings(model="synthetic:tiny", workload="seed", batch_size=4))
    assert RunSpec.from_dict(spec.to_dict()) == spec
    assert spec.name == "hf-batched"
