"""KV accounting of hf/continuous (lab.accounting.continuous), with hand-computed expectations."""

import pytest

from lab.accounting.continuous import (
    auto_max_batch_tokens,
    batched_requests,
    block_check,
    bytes_per_block,
    check_requests_fit,
    decode_steps,
    mask_bytes,
    num_blocks_for_budget,
    pool_budget_bytes,
)
from lab.errors import LabInputError
from lab.records import KvSample

GIB = 2**30
TINY_KV_BYTES_PER_TOKEN = 2 * 2 * 1 * 64 * 4  # synthetic:tiny: 2 x layers x kv_heads x head_dim x fp32


def _no_memory_read():
    raise AssertionError("the device's memory should not be read when the budget is given")


def test_the_budget_given_is_the_budget():
    assert pool_budget_bytes(4 * GIB, 0.9, "cuda", _no_memory_read) == (4 * GIB, "--kv-cache-memory")


def test_the_cpu_default_is_the_vllm_backends_1_gib():
    assert pool_budget_bytes(None, None, "cpu", _no_memory_read)[0] == GIB


def test_vllms_rule_half_the_card_minus_what_is_in_use():
    budget, rule = pool_budget_bytes(None, None, "cuda", lambda: (80 * GIB, 3 * GIB))
    assert budget == 37 * GIB and "0.5 x total - in use" in rule
    assert pool_budget_bytes(None, 0.25, "cuda", lambda: (80 * GIB, 3 * GIB))[0] == 17 * GIB


def test_no_memory_left_by_the_rule_is_a_clear_error():
    with pytest.raises(LabInputError, match="--kv-cache-memory"):
        pool_budget_bytes(None, 0.5, "cuda", lambda: (80 * GIB, 41 * GIB))


def test_blocks_follow_vllms_block_formula_less_two_reserved():
    assert bytes_per_block(TINY_KV_BYTES_PER_TOKEN, 32) == 32_768
    assert bytes_per_block(2 * 22 * 4 * 64 * 2, 16) == 360_448  # synthetic:llama-1b in bf16
    assert num_blocks_for_budget(10 * 32_768, 32_768) == 8
    assert num_blocks_for_budget(10 * 32_768 + 32_767, 32_768) == 8
    with pytest.raises(LabInputError, match="larger --kv-cache-memory"):
        num_blocks_for_budget(2 * 32_768, 32_768)


def test_a_request_that_alone_outgrows_the_pool_is_refused():
    check_requests_fit([(40, 25), (60, 5)], num_blocks=2, block_size=32)  # 64 tokens stored at most: 2 blocks
    with pytest.raises(LabInputError, match="needs 3 blocks of 32 tokens and the KV pool has 2"):
        check_requests_fit([(40, 26)], num_blocks=2, block_size=32)  # 65 tokens


def test_the_mask_is_batch_tokens_by_pool_plus_batch_tokens():
    assert mask_bytes(128, 256, 4) == 128 * 384 * 4


def test_auto_batch_tokens_halve_until_the_mask_fits_in_the_pool():
    # 8 blocks of 32 tiny tokens: 262,144 B. M=256: 256 x 512 x 4 = 524,288 > pool; M=128: 196,608 fits.
    assert auto_max_batch_tokens(256, 262_144, 4, needs_mask=True) == 128
    assert auto_max_batch_tokens(256, 262_144, 4, needs_mask=False) == 8192
    # llama-1b, 16 GiB pool in bf16: 762,600 tokens; M=8192 -> 12.6 GB of mask < 17.2 GB of pool.
    assert auto_max_batch_tokens(16 * GIB // 22_528, 16 * GIB, 2, needs_mask=True) == 8192
    assert auto_max_batch_tokens(10**9, 10, 2, needs_mask=True) == 64  # never below 64


def test_the_block_check_names_blocks_allocated_ahead():
    samples = [KvSample(t_s=0.1, step=0, blocks_used=3, per_request=[[0, 32, 2], [1, 10, 1]])]  # 32 tokens, 2 blocks
    check = block_check(samples, 32)
    assert check["agree"] == 0 and check["max_off"] == pytest.approx(1 / 3)
    assert check["pool_matches_tables"] and "one block ahead" in check["reasons"][0]


def test_decode_steps_skip_prompt_work():
    samples = [
        KvSample(step=0, t_s=0.10, tokens_stored=20, running=2, prefill_requests=2),
        KvSample(step=1, t_s=0.15, tokens_stored=22, running=2, prefill_requests=0),
        KvSample(step=2, t_s=0.30, tokens_stored=40, running=3, prefill_requests=1),
        KvSample(step=3, t_s=0.36, tokens_stored=43, running=3, prefill_requests=0),
    ]
    assert decode_steps(samples) == [(pytest.approx(0.05), 22, 22), (pytest.approx(0.06), 43, 43)]


def test_batched_requests_are_time_weighted():
    samples = [
        KvSample(step=0, t_s=0.1, batch_requests=4, waiting=2),
        KvSample(step=1, t_s=0.4, batch_requests=2, waiting=0),
    ]
    assert batched_requests(samples) == {
        "max_running": 4,
        "mean_running": pytest.approx((0.4 + 0.6) / 0.4),
        "max_waiting": 2,
    }
