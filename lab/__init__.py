"""PagedAttention Lab: measured KV-cache memory and throughput, vLLM against transformers."""

__version__ = "0.1.0"
