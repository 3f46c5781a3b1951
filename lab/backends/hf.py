"""The traditional path: transformers `generate()`.

Modes:
- sequential: one request at a time (batch 1), as the tutorial did.
- batched: static batches of `batch_size` requests in workload order, left-padded to the longest
  prompt of the batch; the batch runs until its longest output is done (the way
  `vllm bench throughput --backend hf` measures transformers).
- static-cache: as batched, with `cache_implementation="static"`: the cache is allocated up front
  for prompt + max_new_tokens of the call (transformers sizes it per call, not to the model's context;
  the report shows which it was from the cache tensors' own sizes).

Per-token times come from a logits processor that reads the runner's clock once per decoding step:
its first call marks the first token of every sequence in the batch, its k-th call the k-th token.
"""

from __future__ import annotations

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lab.backends.base import Backend, Clock
from lab.backends.hf_parallel import close_tensor_parallel, load_tensor_parallel
from lab.models.resolve import has_tokenizer, has_weights
from lab.records import HfBatch, RequestRecord
from lab.workloads import Request

TORCH_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class StepTimer:
    """A logits processor that records the clock at each decoding step and changes nothing."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.step_s: list[float] = []

    def __call__(self, input_ids, scores):  # (batch, seq) ids, (batch, vocab) scores
        self.step_s.append(self.clock.now())
        return scores


class HfBackend(Backend):
    @property
    def ranks(self) -> int:
        """torchrun ranks the model is split over, one GPU each (`lab.backends.hf_parallel`)."""
        return self.spec.engine.tensor_parallel_size

    def load(self) -> None:
        torch.manual_seed(self.spec.engine.seed)
        dtype = getattr(torch, TORCH_DTYPES[self.dtype])
        if self.ranks > 1:
            model = load_tensor_parallel(self.model_path, dtype, self.ranks, self.device)
        elif has_weights(self.model_path):
            model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype).to(self.device)
        else:
            # No saved weights (e.g. synthetic:llama-8b): seeded random init, straight on the device.
            config = AutoConfig.from_pretrained(self.model_path)
            with torch.device(self.device):
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        self.model = model.eval()
        # Prompts arrive as token ids: a folder without a tokenizer runs too (its config's ids pad).
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path) if has_tokenizer(self.model_path) else None
        self.pad_id = self._pad_id()
        self.weights_allocated_bytes = self._allocated()

    def _pad_id(self) -> int:
        tok, config = self.tokenizer, self.model.config
        ids = (tok.pad_token_id, tok.eos_token_id) if tok is not None else (getattr(config, "pad_token_id", None),)
        for candidate in (*ids, config.eos_token_id):
            if isinstance(candidate, list):
                candidate = candidate[0] if candidate else None
            if candidate is not None:
                return candidate
        return 0

    def device_sync(self):
        return torch.cuda.synchronize if self.device == "cuda" else None

    def _allocated(self) -> int | None:
        return torch.cuda.memory_allocated() if self.device == "cuda" else None

    def batches(self, requests: list[Request]) -> list[list[Request]]:
        size = 1 if self.spec.mode == "sequential" else self.spec.engine.batch_size
        return [requests[i : i + size] for i in range(0, len(requests), size)]

    def warmup_requests(self, requests: list[Request]) -> list[Request]:
        # The first batch at full shape and full output length: a shorter warm-up does not cover
        # transformers' first full-size call (about 8 s more on an H100; ../shared/ENVIRONMENT.md).
        return self.batches(requests)[0]

    def generate(self, requests: list[Request], clock: Clock) -> list[RequestRecord]:
        records: list[RequestRecord] = []
        self.batch_stats: list[HfBatch] = []
        for index, batch in enumerate(self.batches(requests)):
            records.extend(self._generate_batch(index, batch, clock))
        return records

    def _generate_batch(self, index: int, batch: list[Request], clock: Clock) -> list[RequestRecord]:
        input_ids, attention_mask = self._left_pad(batch)
        new_tokens = max(r.output_tokens for r in batch)
        timer = StepTimer(clock)
        options = {"cache_implementation": "static"} if self.spec.mode == "static-cache" else {}
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start_s = clock.now()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,  # EOS is suppressed: every sequence runs its full length
                do_sample=False,
                pad_token_id=self.pad_id,
                logits_processor=[timer],
                return_dict_in_generate=True,
                **options,
            )
        end_s = clock.now()
        generated = out.sequences.shape[1] - input_ids.shape[1]
        stat = self._batch_stat(index, batch, input_ids, generated, out, start_s, end_s)
        stat.step_s = list(timer.step_s)  # the clock at each decoding step (accounting: breakdown, bandwidth)
        self.batch_stats.append(stat)
        del out
        return [self._record(index, r, start_s, timer.step_s, generated) for r in batch]

    def _left_pad(self, batch: list[Request]):
        width = max(r.prompt_tokens for r in batch)
        ids = [[self.pad_id] * (width - r.prompt_tokens) + list(r.prompt_token_ids) for r in batch]
        mask = [[0] * (width - r.prompt_tokens) + [1] * r.prompt_tokens for r in batch]
        return (
            torch.tensor(ids, dtype=torch.long, device=self.device),
            torch.tensor(mask, dtype=torch.long, device=self.device),
        )

    def _record(self, index: int, r: Request, start_s: float, step_s: list[float], generated: int) -> RequestRecord:
        ok = generated >= r.output_tokens and len(step_s) >= r.output_tokens
        if not ok:
            return RequestRecord(
                r.request_id,
                r.prompt_tokens,
                min(generated, r.output_tokens),
                start_s,
                None,
                step_s[-1] if step_s else start_s,
                index,
                "error",
                f"generated {generated} tokens, {r.output_tokens} requested",
            )
        # The request's own tokens are done at step output_tokens; the batch runs on for longer ones.
        return RequestRecord(
            r.request_id, r.prompt_tokens, r.output_tokens, start_s, step_s[0], step_s[r.output_tokens - 1], index
        )

    def _batch_stat(self, index, batch, input_ids, generated, out, start_s, end_s) -> HfBatch:
        """What the batch held: shapes, the cache tensors' own bytes and the allocator's peak."""
        stat = HfBatch(
            batch=index,
            batch_size=len(batch),
            padded_prompt_tokens=int(input_ids.shape[1]),
            generated_tokens=int(generated),
            prompt_tokens=[r.prompt_tokens for r in batch],
            output_tokens=[r.output_tokens for r in batch],
            start_s=start_s,
            end_s=end_s,
            **cache_tensor_stats(out.past_key_values, self.ranks),
        )
        if self.device == "cuda":
            stat.peak_allocated_bytes = torch.cuda.max_memory_allocated()
            stat.peak_reserved_bytes = torch.cuda.max_memory_reserved()
        return stat

    def engine_info(self) -> dict:
        return {
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "weights_allocated_bytes": self.weights_allocated_bytes,
            "cache_implementation": "static" if self.spec.mode == "static-cache" else "dynamic",
            "batch_size": 1 if self.spec.mode == "sequential" else self.spec.engine.batch_size,
            "tensor_parallel_size": self.ranks,  # torchrun ranks; the allocator figures are rank 0's GPU's
            "batches": [b.to_dict() for b in getattr(self, "batch_stats", [])],
        }

    def reset_memory_stats(self) -> None:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def memory_stats(self) -> dict:
        """The torch allocator's figures (CUDA only: on the CPU there is no allocator to read)."""
        if self.device != "cuda":
            return {"source": "none", "reason": "the torch allocator's statistics exist only on CUDA"}
        return {
            "source": "torch.cuda",
            "allocated_bytes": torch.cuda.memory_allocated(),
            "reserved_bytes": torch.cuda.memory_reserved(),
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
            "weights_allocated_bytes": self.weights_allocated_bytes,
        }

    def close(self) -> None:
        self.model = None
        if self.ranks > 1:
            close_tensor_parallel()


def cache_tensor_stats(cache, ranks: int = 1) -> dict:
    """Bytes and shape of the key/value tensors a transformers cache object holds.

    Works for DynamicCache and StaticCache (transformers 5: `cache.layers[i].keys/values`, shape
    (batch, kv_heads, slots, head_dim)); returns {} for an unknown cache type. Under tensor
    parallelism each of the `ranks` ranks holds num_kv_heads / ranks heads (hf_parallel):
    cache_bytes = this rank's bytes x ranks, the cache over every GPU; cache_bytes_per_gpu = this rank's.
    """
    layers = getattr(cache, "layers", None)
    if not layers:
        return {}
    total = 0
    slots = None
    for layer in layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if tensor is not None and hasattr(tensor, "nbytes"):
                total += tensor.nbytes
                slots = int(tensor.shape[-2])
    return {
        "cache_class": type(cache).__name__,
        "cache_bytes": total * ranks,
        "cache_bytes_per_gpu": total,
        "cache_slots_per_sequence": slots,
    }


BACKEND = HfBackend
