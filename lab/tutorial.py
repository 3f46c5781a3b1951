"""The tutorial's own figures, in one place: the run this lab grew from, as its log printed them.

The tutorial ran `gpt2` (GPT-2 124M, the hub's trained weights; its log printed max_seq_len=512) on
its four prompts with 50 new tokens each, with vLLM 0.9.2 on one NVIDIA GeForce RTX 4090.
`lab experiment --preset tutorial` runs the same shape of model on the same prompts and lengths;
the report sets these figures beside its own, labelled as another machine's and another vLLM's:
a reference, not a measurement of this lab.
"""

from __future__ import annotations

MODEL = "gpt2 (GPT-2 124M, the hub's weights)"
MACHINE = "NVIDIA GeForce RTX 4090"
VLLM_VERSION = "0.9.2"
MAX_SEQ_LEN = 512  # the max_seq_len its vLLM log printed; GPT-2's own context is 1,024
PROMPTS = 4
NEW_TOKENS = 50

# vLLM's progress bar at the end of `LLM.generate` over the 4 prompts: its estimate of output tokens
# per second (output tokens / the bar's elapsed time), not a timed measurement.
VLLM_OUTPUT_TOKENS_PER_S = 2354.91
# What it printed as vLLM's memory. vLLM's engine runs in a child process (the v1 engine core), so
# the calling process's own torch allocator holds none of it; the lab reads NVML for the whole
# process tree instead.
VLLM_MEMORY_PRINTED = "0.00 GB"
