"""Decode-phase memory bandwidth of each backend/mode, as a share of the GPU's peak.

Decoding is memory-bound: each step reads every weight once, and its attention reads the K/V of
every slot each sequence attends to. So a decode step moves at least

    total bytes = weight bytes read + attended slots x kv_bytes_per_token

and the decode phase achieves sum(bytes) / sum(step seconds) over its steps. Two figures, counted
alike for every backend:
- useful: the weights plus each request's own tokens (its prompt and what it generated so far, for
  the requests still generating): what any engine must read for the same tokens;
- total: the weights plus every slot the attention reads: padding and, with the static cache, empty
  slots, and the sequences of a batch that finished but keep generating.
The share of peak divides each by the GPU's theoretical peak, which NVML gives
(`lab.hardware.env.memory_bandwidth_facts`). Both are lower bounds of the traffic (activations,
logits and any second read of the same bytes are not counted), so a share says how close a backend
comes to the physical limit, not how busy the memory was.
Split over G GPUs (tensor parallelism), each reads its share of the weights and of the K/V, so
the bytes are the same and the peak is G x one GPU's.

- Weight bytes read per step: all parameters, less the input embedding table when it is not tied to
  the output layer (a step looks up one row per sequence, not the table).
- hf: steps 2..N of each batch (step 1 is the prefill), each timed by the batch's `step_s` clock
  readings. Every row of the cache attends: (requests + padded_rows) x sequences_per_request (--n
  samples or --beam-width beams each hold a row of their own). Attended slots per row at step k:
  dynamic cache, W + k - 1 (W the padded prompt: the padding is masked, not skipped); static cache,
  every slot of the cache (transformers attends over the whole static tensor, masked). Useful:
  P_i + k - 1 for each sequence with O_i >= k (each of a request's samples or beams alike).
- hf/continuous: as vLLM, from its own samples' count of prompt work per step (`lab.accounting.continuous`).
- vLLM: the engine steps in which no request got its first token (prefill-free as far as this
  process sees; a chunk of a longer prompt still being prefilled is invisible), timed
  `t_s[i] - t_s[i-1]`. Attended slots: the previous sample's `tokens_stored` (prompt + generated - 1
  per running request) plus one per running request (the token the step feeds in); steps after a
  sample without an exact count are left out. Where fewer than MIN_EXACT_SHARE of the prefill-free
  steps are exact (with --n > 1 always: this process counts one prompt per request, the engine runs n
  sequences; beam search: no count), the row is left out and `vllm_omission` says why: the exact few
  are not the decode phase. A paged kernel reads each request's own tokens only: useful = total
  (hf/continuous's sdpa gathers them into a copy first: counted once, a lower bound).

From one backend/mode's typed records and the run's manifest (no torch, no vllm).
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.accounting.continuous import decode_steps as continuous_decode_steps
from lab.records import BackendResult, HfBatch, KvSample, RequestRecord

MIN_EXACT_SHARE = 0.5  # vLLM: below it the steps with an exact token count are not the decode phase


@dataclass(frozen=True)
class DecodeBandwidth:
    """One backend/mode's decode traffic: bytes a decode step must read, and how fast it read them."""

    run: str  # label, 'hf/batched'
    device: str | None
    decode_steps: int
    decode_s: float
    steps_per_s: float | None
    weight_bytes_per_step: int
    kv_bytes_per_step_mean: float | None  # every attended slot
    achieved_gb_s: float | None  # 10^9 bytes per second, total
    peak_gb_s: float | None  # the GPUs' theoretical peak (one GPU's x tensor_parallel_size); None off CUDA
    share_of_peak: float | None
    useful_kv_bytes_per_step_mean: float | None = None  # the requests' own tokens only
    useful_gb_s: float | None = None
    useful_share_of_peak: float | None = None


def weight_bytes_read_per_step(model: dict) -> int | None:
    """Parameter bytes, less the input embedding table unless it is tied to the output layer."""
    if model.get("weights_bytes") is None:
        return None
    if model.get("tie_word_embeddings"):
        return model["weights_bytes"]
    return model["weights_bytes"] - model["vocab_size"] * model["hidden_size"] * model["dtype_bytes"]


def hf_decode_steps(batch: HfBatch, static: bool) -> list[tuple[float, int, int | None]]:
    """(seconds, attended slots, useful slots) of each decode step (2..N) of one hf batch; [] without `step_s`.

    Every row of the cache is read: (requests + padded_rows) x sequences_per_request (n samples or beams,
    each its own row). Useful: each sequence still generating its own tokens (O_i >= k) reads its
    P_i + k - 1; None where the batch record lacks the lengths (older runs)."""
    times = batch.step_s or []
    if len(times) < 2:
        return []
    rows, width = batch.rows, batch.padded_prompt_tokens
    per_sequence = batch.cache_slots_per_sequence if static else None
    lengths = list(zip(*batch.sequence_lengths()))
    steps = []
    for k in range(2, len(times) + 1):
        slots = per_sequence if per_sequence else width + k - 1
        useful = sum(p + k - 1 for p, o in lengths if o >= k) if lengths else None
        steps.append((times[k - 1] - times[k - 2], rows * slots, useful))
    return steps


def vllm_prefill_free_steps(samples: list[KvSample], records: list[RequestRecord]) -> list[tuple[KvSample, KvSample]]:
    """(sample before, sample after) of each engine step in which no request got its first token."""
    first_tokens = {r.first_token_s for r in records if r.first_token_s is not None}
    samples = sorted(samples, key=lambda s: s.step)
    return [(previous, sample) for previous, sample in zip(samples, samples[1:]) if sample.t_s not in first_tokens]


def _exact(sample: KvSample) -> bool:
    """Whether the sample's token count is exact (`tokens_stored_exact` not recorded, older runs: taken as exact)."""
    return sample.tokens_stored is not None and sample.tokens_stored_exact is not False


def vllm_decode_steps(samples: list[KvSample], records: list[RequestRecord]) -> list[tuple[float, int, int]]:
    """(seconds, attended slots, useful slots: the same) of each prefill-free engine step with an exact token count."""
    steps = []
    for previous, sample in vllm_prefill_free_steps(samples, records):
        if _exact(previous):
            # Each request in flight before the step attends its stored tokens and the one it feeds in.
            slots = previous.tokens_stored + previous.running
            steps.append((sample.t_s - previous.t_s, slots, slots))
    return steps


def vllm_omission(samples: list[KvSample], records: list[RequestRecord]) -> str | None:
    """Why vLLM's decode bandwidth is not counted, or None: fewer than MIN_EXACT_SHARE of its prefill-free
    steps follow a sample with an exact token count."""
    candidates = vllm_prefill_free_steps(samples, records)
    exact = sum(_exact(previous) for previous, _ in candidates)
    if not candidates or exact >= MIN_EXACT_SHARE * len(candidates):
        return None
    return (
        f"not counted: this process's token count is exact in {exact:,} of {len(candidates):,} prefill-free "
        "steps (with --n > 1 it counts one prompt per request, the engine runs n sequences; beam search and "
        "preemption leave no count)"
    )


def decode_traffic(steps: list[tuple[float, int, int | None]], weight_bytes: int, kv_bytes_per_token: int) -> dict:
    """Totals over decode steps: count, seconds, bytes per step and achieved bytes per second, total and
    useful (the useful figures None where a step lacks them)."""
    seconds = sum(s for s, _, _ in steps)
    kv_bytes = sum(slots for _, slots, _ in steps) * kv_bytes_per_token
    known = all(useful is not None for _, _, useful in steps)
    useful_kv = sum(useful for _, _, useful in steps) * kv_bytes_per_token if known else None
    weights = len(steps) * weight_bytes
    return {
        "decode_steps": len(steps),
        "decode_s": seconds,
        "steps_per_s": len(steps) / seconds if seconds else None,
        "weight_bytes_per_step": weight_bytes,
        "kv_bytes_per_step_mean": kv_bytes / len(steps) if steps else None,
        "achieved_gb_s": (weights + kv_bytes) / seconds / 1e9 if seconds else None,
        "useful_kv_bytes_per_step_mean": useful_kv / len(steps) if steps and useful_kv is not None else None,
        "useful_gb_s": (weights + useful_kv) / seconds / 1e9 if seconds and useful_kv is not None else None,
    }


def peak_gb_s(manifest: dict) -> tuple[float | None, str]:
    """The first GPU's theoretical peak (GB/s) from the manifest's NVML facts, and its name or why not."""
    nvml = (manifest.get("host") or {}).get("nvml") or {}
    gpus = nvml.get("gpus") or []
    if not gpus:
        return None, "no GPU seen by NVML"
    gpu = gpus[0]
    peak = gpu.get("peak_memory_bandwidth_gb_s")
    return peak, gpu.get("name") if peak else gpu.get("peak_memory_bandwidth_error", "peak not recorded")


def omission(result: BackendResult, samples: list[KvSample], records: list[RequestRecord]) -> str | None:
    """Why a finished backend/mode's decode bandwidth is left out of the report, or None."""
    return vllm_omission(samples, records) if result.backend == "vllm" else None


def run_bandwidth(
    result: BackendResult, samples: list[KvSample], records: list[RequestRecord], peak: float | None
) -> DecodeBandwidth | None:
    """One finished backend/mode's decode traffic and share of `peak`, or None when it has no decode steps."""
    model, engine = result.model or {}, result.engine or {}
    weights, kv_per_token = weight_bytes_read_per_step(model), model.get("kv_bytes_per_token")
    if weights is None or not kv_per_token:
        return None
    if result.backend == "vllm":
        steps = [] if vllm_omission(samples, records) else vllm_decode_steps(samples, records)
    elif result.label == "hf/continuous":
        steps = continuous_decode_steps(samples)
    else:
        static = engine.get("cache_implementation") == "static"
        steps = [s for b in result.hf_batches for s in hf_decode_steps(b, static)]
    if not steps:
        return None
    found = decode_traffic(steps, weights, kv_per_token)
    achieved, useful = found["achieved_gb_s"], found["useful_gb_s"]
    gpus = int(engine.get("tensor_parallel_size") or 1)  # each reads its share: the peaks add up
    peak_here = peak * gpus if result.device == "cuda" and peak else None
    return DecodeBandwidth(
        run=result.label,
        device=result.device,
        **found,
        peak_gb_s=peak_here,
        share_of_peak=achieved / peak_here if achieved and peak_here else None,
        useful_share_of_peak=useful / peak_here if useful and peak_here else None,
    )
