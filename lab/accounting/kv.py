"""KV-cache accounting: pure functions, units in their names, the formula in each docstring.

A *slot* is room for one token's keys and values in every layer: `kv_bytes_per_token` bytes
(2 x layers x KV heads x head_dim x dtype bytes). Everything here counts slots; bytes are slots x
bytes per token. Nothing here imports torch or vllm, or reads a file.

Tokens stored. A request with P prompt tokens that has generated g tokens holds the K/V of
`P + g - 1` tokens: the newest token's K/V is written by the forward pass that consumes it, and an
engine stops after sampling the last one. So a finished request of O output tokens needed at most
`P + O - 1` slots (`final_tokens`). hf steps are numbered as `generate` runs them: step k (1-based)
is the forward pass that produces output token k; after it the dynamic cache holds
`padded prompt + k - 1` slots per sequence.

Where the memory goes: the categories of the PagedAttention paper's Figure 2 (Kwon et al., SOSP
2023), per step, over D, the memory each approach sets aside for KV (its KV budget):

- token_states: holds the K/V of one of the request's own tokens (prompt or generated), a prompt
  already scheduled included.
- reservation: empty now, and will hold one of the request's own tokens before it finishes (a
  paged engine's look-ahead slot for the token in flight included).
- internal_fragmentation: inside the request's allocation, and will never hold one of its own
  tokens: left padding to the batch's longest prompt; the tokens a finished sequence keeps
  generating while its batch runs on ("finished-sequence waste"); the tail of a max-length
  reservation beyond the request's final length; the part of a request's last block that its
  final token never reaches.
- external_fragmentation (with `free`, "external fragmentation & others" in the paper): a paged
  pool's free blocks (`free`, held by no request); for the hf caches only allocator memory that can
  be traced to the KV tensors (the CUDA caching allocator's rounding of each cache tensor). Slack of
  the allocator that cannot be traced to them (activations, logits, graph pools) is not KV: the report
  gives it in MiB beside the table, never as a share.
- other: the residual, memory the engine measurably holds beyond what the arithmetic explains (a
  paged pool: used blocks beyond the requests' tables; hf: cache bytes beyond batch x slots x bytes
  per token). A residual above 1% fails the run's own check.

D is a paged engine's pool (its usable blocks; `lab.accounting.paged`), and for the hf caches the
cache tensors themselves (they are allocated per call, with no budget beyond them). Two views: shares
of D (`budget_shares`, free blocks included) and shares of the memory held (`shares`, free left out).

How each approach maps (per step; `lab.accounting.breakdown` integrates over time):

| approach | token_states | reservation | internal_fragmentation | external (& free) | other |
| --- | --- | --- | --- | --- | --- |
| hf dynamic (sequential, batched) | own stored tokens | 0: the cache grows one slot per step | padding + finished-sequence waste | allocator rounding of the cache tensors (CUDA) | cache bytes - arithmetic |
| hf static cache | own stored tokens | own tokens still to come | padding + slots past the request's final length | as dynamic | cache bytes - arithmetic |
| static, max length (capacity's Orca-Max analogue) | as static | as static | as static, with max length slots | - | - |
| paged (vLLM, hf/continuous) | stored tokens, scheduled prompts included | empty slots of its blocks its own tokens will reach, look-ahead included | the rest of its last block | free pool blocks | used blocks - the requests' blocks |
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

from lab.errors import LabInputError

CATEGORIES = ("token_states", "reservation", "internal_fragmentation", "external_fragmentation", "other")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# ----------------------------------------------------------------------------- bytes per token


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of 'float32' (4), 'bfloat16' (2) or 'float16' (2)."""
    if dtype not in DTYPE_BYTES:
        raise LabInputError(f"unknown dtype {dtype!r}: choose from {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes_: int) -> int:
    """KV-cache bytes one token occupies: 2 (key and value) x layers x kv_heads x head_dim x dtype bytes.

    TinyLlama in bf16: 2 x 22 x 4 x 64 x 2 = 22,528 bytes (22 KiB) per token.
    """
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes_


# ----------------------------------------------------------------------------- tokens and blocks


def token_state_bytes(tokens: int, bytes_per_token: int) -> int:
    """Bytes the K/V of `tokens` tokens occupy: tokens x bytes per token."""
    return tokens * bytes_per_token


def stored_tokens(prompt_tokens: int, generated_tokens: int) -> int:
    """Tokens whose K/V a request holds after generating `generated_tokens`: P + g - 1 (P before the first)."""
    return prompt_tokens + max(generated_tokens - 1, 0)


def final_tokens(prompt_tokens: int, output_tokens: int) -> int:
    """The most tokens a request ever stores: P + O - 1 (its last token's K/V is never written)."""
    return stored_tokens(prompt_tokens, output_tokens)


def blocks_needed(tokens: int, block_size: int) -> int:
    """Blocks a paged request of `tokens` stored tokens holds: ceil(tokens / block_size)."""
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    return -(-tokens // block_size)


def paged_slots(tokens: int, block_size: int) -> int:
    """Slots a paged request of `tokens` tokens holds: ceil(tokens / block_size) x block_size."""
    return blocks_needed(tokens, block_size) * block_size


def paged_internal_fragmentation_slots(tokens: int, block_size: int) -> int:
    """Empty slots in a paged request's last block: paged_slots - tokens (0 to block_size - 1)."""
    return paged_slots(tokens, block_size) - tokens


def usable_blocks(num_blocks: int) -> int:
    """Blocks requests can hold: num_blocks - 1. vLLM's block 0 is a reserved null block that
    `BlockPool.get_usage()` leaves out of both the used count and the total."""
    return max(num_blocks - 1, 0)


def blocks_used_from_usage(kv_usage: float, num_blocks: int) -> int:
    """Blocks in use from vLLM's usage fraction: round(kv_usage x (num_blocks - 1))."""
    return round(kv_usage * usable_blocks(num_blocks))


def kv_usage_from_blocks(blocks_used: int, num_blocks: int) -> float:
    """vLLM's `kv_cache_usage`: blocks used / (num_blocks - 1), the null block excluded."""
    usable = usable_blocks(num_blocks)
    return blocks_used / usable if usable else 0.0


# ----------------------------------------------------------------------------- the breakdown


@dataclass(frozen=True)
class SlotBreakdown:
    """Slots (or slot-seconds, once weighted by time) by category; see the module docstring.

    `external_fragmentation` is None where it was not measured (0.0 where it cannot exist, as for
    paged blocks); padding, finished, unused_tail and block_tail split internal fragmentation by cause;
    `free` is a paged pool's slots no request holds: in the budget view only.
    """

    token_states: float = 0.0
    reservation: float = 0.0
    internal_fragmentation: float = 0.0
    external_fragmentation: float | None = None  # None: not measured (0.0 where it cannot exist)
    other: float = 0.0
    padding: float = 0.0  # detail of internal_fragmentation
    finished: float = 0.0  # detail of internal_fragmentation
    unused_tail: float = 0.0  # detail of internal_fragmentation
    block_tail: float = 0.0  # detail of internal_fragmentation
    free: float = 0.0  # a paged pool's free slots: part of D, held by no request

    def total(self) -> float:
        """Slots held: the sum of the five categories (external counted as 0 where unmeasured)."""
        return sum(getattr(self, name) or 0.0 for name in CATEGORIES)

    def budget(self) -> float:
        """Slots of D, the KV budget: the slots held plus the pool's free slots."""
        return self.total() + self.free

    def scaled(self, factor: float) -> SlotBreakdown:
        """Every figure x factor (e.g. a step's duration, to integrate over time)."""
        return SlotBreakdown(
            **{f.name: None if getattr(self, f.name) is None else getattr(self, f.name) * factor for f in fields(self)}
        )

    def __add__(self, other: SlotBreakdown) -> SlotBreakdown:
        """Sum by category; external fragmentation stays None only where both sides lack it."""
        values = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            values[f.name] = None if a is None and b is None else (a or 0.0) + (b or 0.0)
        return SlotBreakdown(**values)

    def shares(self) -> dict[str, float | None]:
        """Shares of the memory held: each category / total, fractions that sum to 1 (external None
        where unmeasured)."""
        total = self.total()
        return {
            name: (None if getattr(self, name) is None else (getattr(self, name) / total if total else 0.0))
            for name in CATEGORIES
        }

    def budget_shares(self) -> dict[str, float | None]:
        """Shares of D: as `shares`, over the budget, with the free slots under external fragmentation."""
        budget = self.budget()
        out = {}
        for name in CATEGORIES:
            value = getattr(self, name)
            if name == "external_fragmentation" and (value is not None or self.free):
                value = (value or 0.0) + self.free
            out[name] = None if value is None else (value / budget if budget else 0.0)
        return out


def integrate(weighted: Iterable[tuple[float, SlotBreakdown]]) -> SlotBreakdown:
    """Sum of breakdown x weight (e.g. step duration in s): slot-seconds by category."""
    total = SlotBreakdown()
    for weight, breakdown in weighted:
        total = total + breakdown.scaled(weight)
    return total


# ----------------------------------------------------------------------------- transformers


def padded_length(prompt_tokens: Sequence[int]) -> int:
    """Width W of a left-padded batch: the longest prompt."""
    return max(prompt_tokens)


def padding_waste_slots(prompt_tokens: Sequence[int]) -> int:
    """Pad slots per step of a left-padded batch: sum of (W - P_i)."""
    width = padded_length(prompt_tokens)
    return sum(width - p for p in prompt_tokens)


def finished_sequence_waste_slots(output_tokens: Sequence[int], step: int) -> int:
    """Slots holding tokens generated after a sequence's own output was done, after step `step`:
    sum of max(0, step - O_i). (Step k stores token k-1; a sequence's own tokens end at O_i - 1.)"""
    return sum(max(0, step - o) for o in output_tokens)


def own_stored_tokens(prompt_tokens: Sequence[int], output_tokens: Sequence[int], step: int) -> int:
    """The batch's own token states after step `step`: sum of P_i + min(step - 1, O_i - 1)."""
    return sum(p + min(step - 1, o - 1) for p, o in zip(prompt_tokens, output_tokens))


def dynamic_cache_slots(batch_size: int, padded_prompt_tokens: int, step: int) -> int:
    """Slots a transformers DynamicCache holds after step `step`: batch x (W + step - 1).

    At the end of `generate` (step = longest output N) that is batch x (W + N - 1), what the cache
    tensors measure: `cache_bytes = batch x (W + N - 1) x kv_bytes_per_token`.
    """
    return batch_size * (padded_prompt_tokens + step - 1)


def static_cache_slots(batch_size: int, max_cache_len: int) -> int:
    """Slots a static cache reserves up front: batch x max cache length, whatever the step."""
    return batch_size * max_cache_len


ALLOCATOR_GRANULE_BYTES = 512  # the CUDA caching allocator rounds every block up to a multiple of 512 B


def allocator_rounding_slots(
    batch_size: int, slots_per_sequence: int, num_layers: int, kv_heads: int, head_dim: int, dtype_bytes_: int
) -> float:
    """Slots' worth of allocator memory the K/V tensors of an hf cache hold beyond their own bytes.

    Each layer keeps a K and a V tensor of batch x kv_heads x slots x head_dim elements; the CUDA
    caching allocator rounds each up to a multiple of ALLOCATOR_GRANULE_BYTES. The extra bytes /
    kv_bytes_per_token: the part of the allocator's slack that can be traced to the KV tensors.
    """
    tensor = batch_size * kv_heads * slots_per_sequence * head_dim * dtype_bytes_
    extra = -(-tensor // ALLOCATOR_GRANULE_BYTES) * ALLOCATOR_GRANULE_BYTES - tensor
    return 2 * num_layers * extra / kv_bytes_per_token(num_layers, kv_heads, head_dim, dtype_bytes_)


def dynamic_batch_step(prompt_tokens: Sequence[int], output_tokens: Sequence[int], step: int) -> SlotBreakdown:
    """An hf batch with a dynamic cache after step `step` (1..N): it grows, so nothing is reserved.

    slots = batch x (W + step - 1) = token states + padding + finished-sequence waste.
    """
    states = own_stored_tokens(prompt_tokens, output_tokens, step)
    padding = padding_waste_slots(prompt_tokens)
    finished = finished_sequence_waste_slots(output_tokens, step)
    return SlotBreakdown(
        token_states=states,
        reservation=0,
        internal_fragmentation=padding + finished,
        padding=padding,
        finished=finished,
    )


def static_batch_step(
    prompt_tokens: Sequence[int], output_tokens: Sequence[int], step: int, max_cache_len: int
) -> SlotBreakdown:
    """An hf batch with a static cache of `max_cache_len` slots per sequence, after step `step`.

    Per sequence: token states P_i + min(step-1, O_i-1); reservation = its own tokens still to come,
    (O_i - 1) - min(step-1, O_i-1); internal fragmentation = the rest, max_cache_len - (P_i + O_i - 1):
    padding (W - P_i), then the slots its finished-sequence tokens fill, then the never-used tail.
    """
    width = padded_length(prompt_tokens)
    if max_cache_len < width + max(output_tokens) - 1:
        raise ValueError(
            f"a static cache of {max_cache_len} slots cannot hold W + N - 1 = {width + max(output_tokens) - 1} tokens"
        )
    states = own_stored_tokens(prompt_tokens, output_tokens, step)
    reservation = sum((o - 1) - min(step - 1, o - 1) for o in output_tokens)
    padding = padding_waste_slots(prompt_tokens)
    finished = finished_sequence_waste_slots(output_tokens, step)
    internal = sum(max_cache_len - final_tokens(p, o) for p, o in zip(prompt_tokens, output_tokens))
    return SlotBreakdown(
        token_states=states,
        reservation=reservation,
        internal_fragmentation=internal,
        padding=padding,
        finished=finished,
        unused_tail=internal - padding - finished,
    )


# ----------------------------------------------------------------------------- vLLM


def paged_request_step(tokens: int, request_final_tokens: int, block_size: int) -> SlotBreakdown:
    """One running paged request storing `tokens` tokens, that will store `request_final_tokens` at most.

    slots = ceil(tokens / block_size) x block_size; its empty slots are reservation up to its final
    length (min(slots, final) - tokens) and internal fragmentation beyond it (slots - max(final, tokens)).
    """
    slots = paged_slots(tokens, block_size)
    reservation = max(min(slots, request_final_tokens) - tokens, 0)
    internal = slots - tokens - reservation
    return SlotBreakdown(
        token_states=tokens, reservation=reservation, internal_fragmentation=internal, block_tail=internal
    )


def paged_step(running: Iterable[tuple[int, int]], block_size: int, blocks_used: int | None = None) -> SlotBreakdown:
    """All running requests `(tokens, final_tokens)` at one step; `blocks_used` as vLLM measured it.

    other = measured slots - arithmetic slots where the engine holds more than the arithmetic explains
    (blocks_used x block_size - sum of paged_slots); never negative (a shortfall is reported by the
    check in lab.accounting.breakdown, not hidden in the shares). External fragmentation is 0: any free block fits.
    """
    total = SlotBreakdown(external_fragmentation=0.0)  # paging: any free block fits any request
    for tokens, request_final in running:
        total = total + paged_request_step(tokens, request_final, block_size)
    if blocks_used is not None:
        total = total + SlotBreakdown(other=max(blocks_used * block_size - total.total(), 0))
    return total
