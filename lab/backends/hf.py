"""The traditional path: transformers `generate()`.

Modes:
- sequential: one request at a time (batch 1), as the tutorial did.
- batched: static batches of `batch_size` requests in workload order, left-padded to the longest
  prompt of the batch; the batch runs until its longest output is done (the way
  `vllm bench throughput --backend hf` measures transformers).
- static-cache: as batched, with transformers' `StaticCache`, allocated up front. Its shapes are kept
  fixed so that its compiled decode step compiles once: the last batch is filled up to the first
  batch's size (`batch_size`, or fewer where the workload has fewer requests) with copies of its last
  request (their tokens discarded), and one cache, sized once for the whole
  workload's longest batch (`batching.cache_len`), serves every call (reset in between: the same
  tensors, so CUDA graphs are not recorded again either). transformers compiles that decode step
  itself (`generate`'s auto-compile: CUDA only, `torch.compile` with its default `CompileConfig`).
- static-cache-eager: the same with compilation disabled (`disable_compile=True`), so that static
  against dynamic cache is not silently compiled against eager.

Times. Offline, every request arrives at t=0 (`Request.arrival_s`) and is first scheduled when its
batch's `generate()` call starts. Online (requests arriving over time), batches are formed from the
queue as a traditional server forms them (`lab.backends.hf_online`). Per-token times come from a
logits processor that reads the runner's clock
(synchronised with the device) once per decoding step: its k-th call marks the k-th token of every
sequence in the batch.
"""

from __future__ import annotations

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CompileConfig, StaticCache

from lab.backends import batching, compile_watch, hf_sharing
from lab.backends.base import Backend, Clock
from lab.backends.hf_online import serve_arrivals
from lab.backends.hf_parallel import close_tensor_parallel, load_tensor_parallel
from lab.models.resolve import has_tokenizer, has_weights
from lab.records import HfBatch, RequestRecord
from lab.workloads import Request

STATIC_MODES = ("static-cache", "static-cache-eager")

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
        self._static_cache: StaticCache | None = None
        self._static_rows: int | None = None
        self._graphs_at_load = compile_watch.snapshot()["graphs"]

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

    @property
    def pad_to(self) -> int | None:
        """The rows static batches are filled up to (the workload's first, largest batch: never more
        than it has requests); None where batches keep their own size."""
        return self._static_rows if self.spec.mode in STATIC_MODES else None

    def batches(self, requests: list[Request]) -> list[list[Request]]:
        return batching.cut(requests, 1 if self.spec.mode == "sequential" else self.spec.engine.batch_size)

    @property
    def online_batch_size(self) -> int:
        """Online serving: the most rows of a batch formed from the queue (`--max-concurrency` caps it)."""
        cap = self.spec.engine.online.max_concurrency
        size = 1 if self.spec.mode == "sequential" else self.spec.engine.batch_size
        return min(size, cap) if cap else size

    def prepare(self, requests: list[Request]) -> None:
        """Static modes: one batch size and one cache, long enough for every batch of the workload (online,
        where any requests may share a batch: the widest prompt and the longest output)."""
        if self.spec.mode in STATIC_MODES:
            batches = self.batches(requests)
            self._static_rows = len(batches[0])
            longest = [requests] if self.spec.engine.online.is_sweep else batches
            self._static_cache = StaticCache(config=self.model.config, max_cache_len=batching.cache_len(longest))

    def warmup_plan(self, requests: list[Request]) -> list[list[Request]]:
        """Every shape of the offline batches; online, also every batch size up to the batch size (static
        modes: one, filled), each at the widest prompts (`batching.sizes_plan`)."""
        plan = batching.shapes_plan(self.batches(requests), self.pad_to)
        if self.spec.engine.online.is_sweep and self.pad_to is None:
            plan += batching.sizes_plan(requests, list(range(1, self.online_batch_size + 1)))
        return plan

    def warmup_requests(self, requests: list[Request]) -> list[Request]:
        return self.batches(requests)[0]

    def compile_snapshot(self) -> dict:
        return compile_watch.snapshot()

    def generate(self, requests: list[Request], clock: Clock) -> list[RequestRecord]:
        batches = self.batches(requests)
        if self.spec.mode in STATIC_MODES and (
            self._static_cache is None or batching.cache_len(batches) > self._static_cache.max_cache_len
        ):
            self.prepare(requests)  # generate() without prepare(), or longer requests than prepared for
        records: list[RequestRecord] = []
        self.batch_stats: list[HfBatch] = []
        if any(r.arrival_s > 0 for r in requests) or self.spec.engine.online.max_concurrency:
            return serve_arrivals(self, requests, clock, self.online_batch_size)  # online serving
        for index, batch in enumerate(batches):
            records.extend(self.generate_batch(index, batch, clock))
        return records

    def _generate_options(self) -> dict:
        if self.spec.mode not in STATIC_MODES:
            return {}
        with torch.inference_mode():  # its tensors were made in inference mode, by the first call
            self._static_cache.reset()
        options = {"past_key_values": self._static_cache}
        if self.spec.mode == "static-cache-eager":
            options["disable_compile"] = True
        return options

    def generate_batch(self, index: int, batch: list[Request], clock: Clock) -> list[RequestRecord]:
        padding = batching.padding_rows(batch, self.pad_to)
        input_ids, attention_mask = self._left_pad(batch + padding)
        new_tokens = batching.new_tokens(batch)
        timer = StepTimer(clock)
        options = self._generate_options()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if self.spec.engine.n > 1:
            torch.manual_seed(hf_sharing.batch_seed(self.spec.engine, index))
        start_s = clock.now()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,  # EOS is suppressed: every sequence runs its full length
                pad_token_id=self.pad_id,
                logits_processor=[timer],
                return_dict_in_generate=True,
                **hf_sharing.generate_options(self.spec.engine),  # greedy; or n samples, or beams
                **options,
            )
        end_s = clock.now()
        generated = out.sequences.shape[1] - input_ids.shape[1]
        stat = self._batch_stat(index, batch, input_ids, generated, out, start_s, end_s)
        stat.step_s = list(timer.step_s)  # the clock at each decoding step (accounting: breakdown, bandwidth)
        stat.padded_rows = len(padding)
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
        """The request's own tokens are done at step output_tokens; the batch runs on for longer ones."""
        done = min(generated, r.output_tokens, len(step_s))
        ok = done == r.output_tokens
        times = list(step_s[:done])
        sequences = self.spec.engine.sequences  # n samples or beams of `done` tokens each
        return RequestRecord(
            request_id=r.request_id,
            prompt_tokens=r.prompt_tokens,
            output_tokens=done * sequences,
            first_token_s=times[0] if times else None,
            end_s=times[-1] if times else start_s,
            arrival_s=r.arrival_s,
            scheduled_s=start_s,  # its batch's generate() call began
            token_times_s=times,
            batch=index,
            status="ok" if ok else "error",
            error=None if ok else f"generated {generated} tokens a sequence, {r.output_tokens} requested",
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
            sequences_per_request=self.spec.engine.sequences,  # n samples or beams: rows each request expands to
            **cache_tensor_stats(out.past_key_values, self.ranks),
        )
        if self.device == "cuda":
            stat.peak_allocated_bytes = torch.cuda.max_memory_allocated()
            stat.peak_reserved_bytes = torch.cuda.max_memory_reserved()
        return stat

    def engine_info(self) -> dict:
        static = self.spec.mode in STATIC_MODES
        return {
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "weights_allocated_bytes": self.weights_allocated_bytes,
            "cache_implementation": "static" if static else "dynamic",
            "static_cache_len": self._static_cache.max_cache_len if self._static_cache is not None else None,
            "batch_size": 1 if self.spec.mode == "sequential" else self.spec.engine.batch_size,
            "last_batch_padded": static,
            "torch_compile": self._compile_info(),
            "tensor_parallel_size": self.ranks,  # torchrun ranks; the allocator figures are rank 0's GPU's
            "batches": [b.to_dict() for b in getattr(self, "batch_stats", [])],
        }

    def _compile_info(self) -> dict:
        """Whether generate() compiled the model in this process, and under which policy."""
        if self.spec.mode == "static-cache":
            policy = "transformers' auto-compile of the static-cache decode step (CUDA only)"
        elif self.spec.mode == "static-cache-eager":
            policy = "disabled (generate(disable_compile=True))"
        else:
            policy = "none: a dynamic cache is never auto-compiled"
        config = getattr(self.model.generation_config, "compile_config", None) or CompileConfig()
        return {
            "policy": policy,
            "compiled": compile_watch.snapshot()["graphs"] > self._graphs_at_load,
            "compile_config": {k: repr(v) for k, v in config.to_dict().items()},
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
        self._static_cache = None
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
