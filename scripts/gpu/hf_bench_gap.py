"""Why the lab's hf/batched is faster than `vllm bench throughput --backend hf` on the same prompts.

One process, one model, one batch of N random 128-token prompts and 128 new tokens, timed as
`vllm bench`'s `_run_hf_requests` times it (tokenize with padding, `generate`, `batch_decode`),
then with one of its differences from the lab's hf/batched removed at a time:

  bench-cold      exactly bench's loop, the first `generate` of that shape in the process
  bench-warm      the same again (bench 0.26 has no warm-up)
  greedy          do_sample=False instead of sampling (temperature 1, top_p 1)
  greedy-no-text  greedy, token ids in and out: no tokenizer or batch_decode inside the timing
  lab-like        the lab's call: left-padded ids, greedy, min_new_tokens (EOS suppressed), a logits
                  processor reading a synchronised clock at every step

Prints one JSON line per variant and writes them to --out.
Usage: python3 scripts/gpu/hf_bench_gap.py MODEL_DIR [--prompts 256] [--repeats 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

NEW_TOKENS = 128
PROMPT_TOKENS = 128
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only to check this script


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


class SyncClock:
    """The lab's per-step clock: torch.cuda.synchronize() then perf_counter, as a logits processor."""

    def __init__(self) -> None:
        self.steps: list[float] = []

    def __call__(self, input_ids, scores):
        sync()
        self.steps.append(time.perf_counter())
        return scores


def random_prompts(tokenizer, n: int, seed: int = 0) -> list[str]:
    """Text that encodes to PROMPT_TOKENS tokens, from random token ids, as bench's random dataset makes it.

    Decoding random ids and encoding the text again gives more tokens than were drawn (about 172 for 128
    with the synthetic models' tokenizer), so, like bench's random dataset, re-encode and cut or pad the
    ids until the text's own encoding has the target length.
    """
    rng = random.Random(seed)
    vocab = [i for i in range(tokenizer.vocab_size) if i not in tokenizer.all_special_ids]
    prompts = []
    for _ in range(n):
        ids = [rng.choice(vocab) for _ in range(PROMPT_TOKENS)]
        for _ in range(10):
            text = tokenizer.decode(ids)
            ids = tokenizer(text, add_special_tokens=False).input_ids
            if len(ids) == PROMPT_TOKENS:
                break
            ids = ids[:PROMPT_TOKENS] + [rng.choice(vocab) for _ in range(PROMPT_TOKENS - len(ids))]
        prompts.append(text)
    return prompts


def bench_loop(model, tokenizer, prompts: list[str], *, sample: bool, text: bool) -> tuple[float, int]:
    """Seconds for one batch, timed like vllm bench's _run_hf_requests, and the new tokens per sequence
    (bench does not suppress EOS: a batch stops early once every sequence has ended)."""
    ids = None if text else tokenizer(prompts, return_tensors="pt", padding=True).input_ids.to(DEVICE)
    sync()
    start = time.perf_counter()
    if text:
        ids = tokenizer(prompts, return_tensors="pt", padding=True).input_ids.to(DEVICE)
    sampling = {"do_sample": True, "temperature": 1.0, "top_p": 1.0} if sample else {"do_sample": False}
    out = model.generate(input_ids=ids, use_cache=True, max_new_tokens=NEW_TOKENS, **sampling)
    if text:
        tokenizer.batch_decode(out, skip_special_tokens=True)
    sync()
    return time.perf_counter() - start, out.shape[1] - ids.shape[1]


def lab_like(model, tokenizer, prompts: list[str]) -> tuple[float, int]:
    """Seconds for one batch, called as lab/backends/hf.py calls generate."""
    encoded = [tokenizer(p).input_ids for p in prompts]
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=DEVICE)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=DEVICE)
    clock = SyncClock()
    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=pad,
            logits_processor=LogitsProcessorList([clock]),
            return_dict_in_generate=True,
        )
    sync()
    return time.perf_counter() - start, out.sequences.shape[1] - ids.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto").to(DEVICE).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.eos_token  # as bench does for llama
    prompts = random_prompts(tokenizer, args.prompts)
    lengths = [len(tokenizer(p).input_ids) for p in prompts]  # with the special tokens bench's call adds
    print(
        json.dumps(
            {
                "prompt_tokens_min": min(lengths),
                "prompt_tokens_mean": sum(lengths) / len(lengths),
                "prompt_tokens_max": max(lengths),
                "padding_side": tokenizer.padding_side,
            }
        ),
        flush=True,
    )
    variants = [
        ("bench-cold", lambda: bench_loop(model, tokenizer, prompts, sample=True, text=True)),
        ("bench-warm", lambda: bench_loop(model, tokenizer, prompts, sample=True, text=True)),
        ("greedy", lambda: bench_loop(model, tokenizer, prompts, sample=False, text=True)),
        ("greedy-no-text", lambda: bench_loop(model, tokenizer, prompts, sample=False, text=False)),
        ("lab-like", lambda: lab_like(model, tokenizer, prompts)),
    ]
    rows = []
    for name, run in variants:
        for repeat in range(1 if name == "bench-cold" else args.repeats):
            seconds, new_tokens = run()
            row = {
                "variant": name,
                "repeat": repeat,
                "prompts": args.prompts,
                "seconds": seconds,
                "new_tokens_per_sequence": new_tokens,
                "output_tokens_per_s": args.prompts * NEW_TOKENS / seconds,
                "dtype": str(model.dtype),
                "torch": torch.__version__,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
