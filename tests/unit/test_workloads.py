"""Workloads: pure logic, with a stand-in tokenizer (FakeTokenizer: one id per character)."""

import json

import pytest

from lab.errors import LabInputError
from lab.workloads import (
    SEED_OUTPUT_TOKENS,
    SEED_PROMPTS,
    SHAREGPT_INPUT_MEAN,
    SHAREGPT_OUTPUT_MEAN,
    build_workload,
    check_workload_name,
)


class FakeTokenizer:
    """A fake tokenizer for pure workload logic: one token per character."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 200 + 3 for c in text]


VOCAB = list(range(3, 203))


def build(name, **kw):
    kw.setdefault("max_model_len", 2048)
    return build_workload(name, FakeTokenizer(), VOCAB, **kw)


def test_seed_prompts_match_the_tutorial():
    assert [len(p) for p in SEED_PROMPTS] == [6, 57, 680, 7]
    requests = build("seed")
    assert [r.output_tokens for r in requests] == [SEED_OUTPUT_TOKENS] * 4
    assert [r.prompt_tokens for r in requests] == [6, 57, 680, 7]


def test_sharegpt_like_is_seeded_and_has_the_shape():
    a = build("sharegpt-like", num_requests=2000, max_model_len=100_000, seed=1)
    b = build("sharegpt-like", num_requests=2000, max_model_len=100_000, seed=1)
    assert [r.prompt_token_ids for r in a] == [r.prompt_token_ids for r in b]
    mean_in = sum(r.prompt_tokens for r in a) / len(a)
    mean_out = sum(r.output_tokens for r in a) / len(a)
    assert abs(mean_in - SHAREGPT_INPUT_MEAN) / SHAREGPT_INPUT_MEAN < 0.1
    assert abs(mean_out - SHAREGPT_OUTPUT_MEAN) / SHAREGPT_OUTPUT_MEAN < 0.1
    # a long tail: the longest prompt is many times the mean
    assert max(r.prompt_tokens for r in a) > 4 * mean_in


def test_sharegpt_like_is_clipped_to_the_context():
    requests = build("sharegpt-like", num_requests=500, max_model_len=256)
    assert all(r.prompt_tokens + r.output_tokens <= 256 for r in requests)


def test_num_requests_cycles_and_output_tokens_overrides():
    requests = build("seed", num_requests=6, output_tokens=7)
    assert [r.request_id for r in requests] == list(range(6))
    assert requests[4].prompt_token_ids == requests[0].prompt_token_ids
    assert {r.output_tokens for r in requests} == {7}


def test_file_workload_text_and_token_counts(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text('{"prompt": "abc", "output_tokens": 4}\n\n{"prompt_tokens": 10, "output_tokens": 2}\n')
    requests = build(f"file:{path}")
    assert [(r.prompt_tokens, r.output_tokens) for r in requests] == [(3, 4), (10, 2)]


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("not json", "line 2: not valid JSON"),
        ('{"prompt": "x"}', "line 2: needs a positive integer output_tokens"),
        ('{"output_tokens": 3}', "line 2: needs a non-empty prompt or a positive prompt_tokens"),
        ('{"prompt_tokens": -1, "output_tokens": 3}', "line 2"),
    ],
)
def test_malformed_line_is_named(tmp_path, line, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "output_tokens": 1}\n' + line + "\n")
    with pytest.raises(LabInputError, match=fragment):
        check_workload_name(f"file:{path}")


def test_unknown_workload_and_missing_file():
    with pytest.raises(LabInputError, match="choose seed, sharegpt-like or file:PATH.jsonl"):
        check_workload_name("sharegpt")
    with pytest.raises(LabInputError, match="workload file not found"):
        check_workload_name("file:/no/such.jsonl")


def test_output_beyond_context_is_refused(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"prompt_tokens": 10, "output_tokens": 100}) + "\n")
    with pytest.raises(LabInputError, match="exceed the model's context of 64 tokens"):
        build(f"file:{path}", max_model_len=64)
