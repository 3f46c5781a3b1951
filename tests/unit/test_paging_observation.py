"""The paging observation's verdict on which factor (memory or kernels) explains hf/continuous against hf/batched."""

from lab.report.paging_observation import dominant


def test_the_observation_names_the_factor_further_from_one():
    assert dominant(2.5, 0.6, "sdpa").startswith("memory")
    assert dominant(1.05, 0.5, "sdpa").startswith("kernels") and "block-diagonal mask" in dominant(1.05, 0.5, "sdpa")
    assert "in place" in dominant(1.0, 0.5, "flash_attention_2")
