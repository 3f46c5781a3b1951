"""transformers' parallel sampling and beam search, as `generate()` options of the hf modes.

transformers expands the KV cache per sequence: `num_return_sequences=N` repeats every row of the
batch N times before the prefill (`_expand_inputs_for_generation`), and `num_beams=W` keeps W rows
per request, reordering the cache rows each step (`_reorder_cache`/`reorder_cache`). Nothing is
shared: each sequence holds its own copy of its prompt's keys and values, so the cache of a batch of
B requests has B x N (or B x W) rows. The runs measure that, beside vLLM's shared blocks.

Exact lengths: `min_new_tokens` = `max_new_tokens` suppresses EOS, so no beam finishes early and
every returned sequence has the requested length. Sampling is seeded per batch.
"""

from __future__ import annotations

from lab.config import EngineSettings


def generate_options(engine: EngineSettings) -> dict:
    """The `generate()` keywords of one point: greedy with one sequence (the lab's default), sampling
    with N return sequences, or beam search returning all W beams."""
    if engine.n > 1:
        return {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "num_return_sequences": engine.n}
    if engine.beam_width > 1:
        return {
            "do_sample": False,
            "num_beams": engine.beam_width,
            "num_return_sequences": engine.beam_width,
            "length_penalty": 0.0,  # scores are summed log-probabilities, as vLLM's beam search ranks them
        }
    return {"do_sample": False}


def batch_seed(engine: EngineSettings, batch_index: int) -> int:
    """The torch seed set before batch `batch_index`'s call: the same samples on every pass."""
    return engine.seed * 1_000_003 + batch_index
