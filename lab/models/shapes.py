"""The synthetic models' shapes: the catalog `lab models list` shows, and a Llama's parameter count.

There is no model hub on the machines this lab is tested on, so the models it measures are built
locally (`lab.models.build`) in the shape of a real model. Throughput and KV-cache memory depend on
the shapes (layers, KV heads, head_dim, vocabulary), not on what the weights have learned, so a
random model of TinyLlama's shape costs what TinyLlama costs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lab.errors import LabInputError

SYNTHETIC_PREFIX = "synthetic:"


@dataclass(frozen=True)
class ModelShape:
    """The shape of a decoder-only Llama model: everything that sets its memory and compute cost."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int  # query heads
    num_kv_heads: int  # key-value heads (fewer than num_heads: grouped-query attention)
    head_dim: int
    intermediate_size: int  # MLP width
    vocab_size: int  # rows of the embedding and of the lm_head (may exceed the tokenizer's size)
    max_position_embeddings: int  # context length in tokens
    dtype: str  # dtype the weights are saved in
    rope_theta: float
    save_weights: bool  # default of build_model(weights=None)

    def to_dict(self) -> dict:
        return asdict(self)

    def num_parameters(self) -> int:
        """Parameters of this shape (`llama_num_parameters`: untied embeddings, no biases)."""
        return llama_num_parameters(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
        )


SYNTHETIC: dict[str, ModelShape] = {
    shape.name: shape
    for shape in (
        # head_dim 64: vLLM's CPU attention kernels reject head_dim 16, so the tiny model cannot be tinier.
        ModelShape(
            "synthetic:tiny",
            num_layers=2,
            hidden_size=128,
            num_heads=2,
            num_kv_heads=1,
            head_dim=64,
            intermediate_size=256,
            vocab_size=2048,
            max_position_embeddings=2048,
            dtype="float32",
            rope_theta=10000.0,
            save_weights=True,
        ),
        # synthetic:tiny with 4 query and 4 KV heads, so that 1, 2 or 4 tensor-parallel ranks each hold
        # whole KV heads (transformers splits KV heads over ranks and cannot replicate them): the
        # tensor-parallel tests.
        ModelShape(
            "synthetic:tiny-tp",
            num_layers=2,
            hidden_size=256,
            num_heads=4,
            num_kv_heads=4,
            head_dim=64,
            intermediate_size=512,
            vocab_size=2048,
            max_position_embeddings=2048,
            dtype="float32",
            rope_theta=10000.0,
            save_weights=True,
        ),
        # TinyLlama-1.1B.
        ModelShape(
            "synthetic:llama-1b",
            num_layers=22,
            hidden_size=2048,
            num_heads=32,
            num_kv_heads=4,
            head_dim=64,
            intermediate_size=5632,
            vocab_size=32000,
            max_position_embeddings=2048,
            dtype="bfloat16",
            rope_theta=10000.0,
            save_weights=True,
        ),
        # Llama-3-8B. Its weights are 16 GB in bf16: writing and reading them back costs minutes and
        # disk for numbers that random init gives as well, so by default only config + tokenizer are
        # saved and backends initialise randomly (HF from_config, vLLM load_format="dummy").
        ModelShape(
            "synthetic:llama-8b",
            num_layers=32,
            hidden_size=4096,
            num_heads=32,
            num_kv_heads=8,
            head_dim=128,
            intermediate_size=14336,
            vocab_size=128256,
            max_position_embeddings=8192,
            dtype="bfloat16",
            rope_theta=500000.0,
            save_weights=False,
        ),
        # Llama-3-70B: 141 GB of weights in bf16, more than one 80 GB GPU holds, so it runs with
        # --tensor-parallel-size 2 or more; never saved (vLLM load_format="dummy"; transformers
        # initialises each rank's shard on its own GPU, lab.backends.hf_parallel).
        ModelShape(
            "synthetic:llama-70b",
            num_layers=80,
            hidden_size=8192,
            num_heads=64,
            num_kv_heads=8,
            head_dim=128,
            intermediate_size=28672,
            vocab_size=128256,
            max_position_embeddings=8192,
            dtype="bfloat16",
            rope_theta=500000.0,
            save_weights=False,
        ),
    )
}


def synthetic_names() -> str:
    return ", ".join(SYNTHETIC)


def synthetic_shape(name: str) -> ModelShape:
    """The shape of `synthetic:NAME`; LabInputError naming the known ones otherwise."""
    if name not in SYNTHETIC:
        raise LabInputError(f"unknown synthetic model {name!r}: choose from {synthetic_names()}")
    return SYNTHETIC[name]


def llama_num_parameters(
    *,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    intermediate_size: int,
    vocab_size: int,
    tie_word_embeddings: bool = False,
    attention_bias: bool = False,
    mlp_bias: bool = False,
) -> int:
    """Parameters of a Llama decoder, from its shapes.

    per layer: q (H x nh*d) + k, v (H x kv*d each) + o (nh*d x H) + gate, up, down (H x I each)
               + 2 RMSNorm weights (H each)
    total: embedding (V x H) + layers x per layer + final norm (H) + lm_head (V x H, unless tied).
    TinyLlama-1.1B: 1,100,048,384; Llama-3-8B: 8,030,261,248; Llama-3-70B: 70,553,706,496.
    """
    q_dim, kv_dim = num_heads * head_dim, num_kv_heads * head_dim
    attention = hidden_size * q_dim + 2 * hidden_size * kv_dim + q_dim * hidden_size
    if attention_bias:
        attention += q_dim + 2 * kv_dim + hidden_size
    mlp = 3 * hidden_size * intermediate_size
    if mlp_bias:
        mlp += 2 * intermediate_size + hidden_size
    per_layer = attention + mlp + 2 * hidden_size
    embeddings = vocab_size * hidden_size * (1 if tie_word_embeddings else 2)
    return embeddings + num_layers * per_layer + hidden_size
