"""hf/continuous settings: parsed from one option, validated with errors that name the fix, kept in the manifest."""

import pytest

from lab.config import EngineSettings, RunSpec
from lab.continuous_settings import ContinuousSettings, parse_continuous_settings
from lab.errors import LabInputError
from lab.report.continuous import describe


def test_no_option_means_transformers_defaults_and_the_lab_pool():
    assert parse_continuous_settings(None) == ContinuousSettings()
    assert parse_continuous_settings("  ") == ContinuousSettings(
        attn="sdpa", block_size=None, max_batch_tokens=None, cuda_graphs=None, compile_level=0, async_batching=None
    )


def test_every_key_is_read():
    settings = parse_continuous_settings(
        "attn=eager, block_size=256, max_batch_tokens=2048, cuda_graphs=on, compile_level=2, async_batching=off"
    )
    assert settings == ContinuousSettings("eager", 256, 2048, True, 2, False)
    assert parse_continuous_settings("cuda_graphs=auto,max_batch_tokens=auto,block_size=auto") == ContinuousSettings()


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("graphs=on", "KEY one of"),
        ("cuda_graphs", "KEY=VALUE"),
        ("cuda_graphs=maybe", "on, off or auto"),
        ("max_batch_tokens=lots", "whole number"),
        ("max_batch_tokens=8", "at least 16"),
        ("block_size=48", "choose from"),
        ("attn=flex", "choose from sdpa"),
        ("compile_level=4", "0 \\(off\\) to 3"),
        ("compile_level=auto", "whole number"),
    ],
)
def test_bad_settings_name_the_fix(text, fragment):
    with pytest.raises(LabInputError, match=fragment):
        parse_continuous_settings(text)


def test_settings_round_trip_through_the_manifest():
    engine = EngineSettings(
        model="synthetic:tiny",
        workload="seed",
        hf_continuous=parse_continuous_settings("cuda_graphs=on,max_batch_tokens=1024"),
    )
    spec = RunSpec("hf", "continuous", engine)
    data = spec.to_dict()
    assert data["engine"]["hf_continuous"]["max_batch_tokens"] == 1024
    assert RunSpec.from_dict(data) == spec


def test_an_older_manifest_without_the_settings_still_reads():
    data = RunSpec("hf", "batched", EngineSettings(model="m", workload="seed")).to_dict()
    del data["engine"]["hf_continuous"]
    assert RunSpec.from_dict(data).engine.hf_continuous == ContinuousSettings()


def test_unknown_keys_in_a_manifest_are_refused():
    with pytest.raises(LabInputError, match="unknown keys graphs"):
        ContinuousSettings.coerce({"graphs": True})


def test_describe_gives_the_resolved_values():
    engine = {
        "attn_implementation": "sdpa",
        "block_size": 16,
        "num_blocks": 1000,
        "kv_pool_bytes": 3 * 2**30,
        "kv_pool_rule": "--kv-cache-memory",
        "max_batch_tokens_rule": "given",
        "continuous_batching_config": {
            "max_batch_tokens": 2048,
            "use_cuda_graph": [True, False],
            "default_compile_level": 1,
            "use_async_batching": False,
            "allow_block_sharing": False,
        },
    }
    line = describe(engine)
    assert "pool 1000 blocks (3.00 GiB, --kv-cache-memory)" in line
    assert "max_batch_tokens 2048 (given)" in line
    assert "CUDA graphs (varlen/decode) on/off, compile level 1, async batching off, block sharing off" in line
