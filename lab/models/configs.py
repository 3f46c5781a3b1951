"""A transformers config for each synthetic architecture: Llama (tiny, llama-1b, llama-8b) and GPT-2.

Both carry the special-token ids of the lab's trained tokenizer and name their architecture in
`config.architectures`, which is how vLLM picks its model class (a weights-less build saves the config
alone, without the field `save_pretrained` of a model would set).
"""

from __future__ import annotations

from typing import Any

from lab.models.shapes import ModelShape

# Special tokens get the first ids, in Llama's order: <unk>/<pad> 0, <s> 1, </s> 2.
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)


def model_config(shape: ModelShape, tokenizer_ids: dict[str, int] | None = None) -> Any:
    """The transformers config of `shape`'s architecture."""
    build = {"llama": llama_config, "gpt2": gpt2_config}[shape.architecture]
    return build(shape, tokenizer_ids)


def _ids(tokenizer_ids: dict[str, int] | None) -> dict[str, int]:
    return tokenizer_ids or {token: i for i, token in enumerate(SPECIAL_TOKENS)}


def llama_config(shape: ModelShape, tokenizer_ids: dict[str, int] | None = None) -> Any:
    """A LlamaConfig of `shape` (RMSNorm, rotary positions, grouped-query attention, untied embeddings)."""
    from transformers import LlamaConfig  # noqa: PLC0415 - heavy: loaded only where a config is built

    ids = _ids(tokenizer_ids)
    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_position_embeddings,
        rope_theta=shape.rope_theta,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=ids[PAD_TOKEN],
        bos_token_id=ids[BOS_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        dtype=shape.dtype,
    )
    config.architectures = ["LlamaForCausalLM"]
    return config


def gpt2_config(shape: ModelShape, tokenizer_ids: dict[str, int] | None = None) -> Any:
    """A GPT2Config of `shape`: learned absolute positions, LayerNorm, GELU MLP of 4 x hidden, one KV
    head per query head (no grouped-query attention), the lm_head tied to the token embedding."""
    from transformers import GPT2Config  # noqa: PLC0415 - heavy: loaded only where a config is built

    if shape.num_kv_heads != shape.num_heads or shape.head_dim * shape.num_heads != shape.hidden_size:
        raise ValueError(f"{shape.name}: GPT-2 has one KV head per query head and head_dim = hidden / heads")
    ids = _ids(tokenizer_ids)
    config = GPT2Config(
        vocab_size=shape.vocab_size,
        n_positions=shape.max_position_embeddings,
        n_embd=shape.hidden_size,
        n_layer=shape.num_layers,
        n_head=shape.num_heads,
        n_inner=shape.intermediate_size,
        tie_word_embeddings=True,
        pad_token_id=ids[PAD_TOKEN],
        bos_token_id=ids[BOS_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        dtype=shape.dtype,
    )
    config.architectures = ["GPT2LMHeadModel"]
    return config
