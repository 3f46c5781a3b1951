"""Workloads: a name -> a list of requests with fixed prompt token ids and fixed output lengths.

Every backend receives the same token ids (not text), so tokenisation cannot differ between them,
and generates exactly `output_tokens` tokens per request (EOS ignored), so the work is the same.

- `seed`: the tutorial's four prompts, 50 new tokens each.
- `sharegpt-like`: N requests whose prompt and output lengths follow a log-normal with ShareGPT's
  shape (mean input about 161 tokens, mean output about 338, long tail: PagedAttention paper, Fig. 11),
  seeded, clipped to the model's context. Token ids are drawn uniformly from the ordinary vocabulary.
- A shared prefix (`shared_prefix_tokens` K > 0): the same K token ids, drawn as sharegpt-like's with
  their own seeded generator, start every prompt (the paper's few-shot prefixes, section 6.4: one
  shot, 80 tokens; five shots, 341). The request's own prompt follows, unchanged.
- `file:PATH.jsonl`: one request per line, `{"prompt": "...", "output_tokens": N}` or
  `{"prompt_tokens": N, "output_tokens": N}` (ids then drawn as for sharegpt-like, seeded).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lab.errors import LabInputError

SEED_PROMPTS = (
    "Hello!",
    "Explain in one paragraph what a KV cache stores, and why.",
    "PagedAttention keeps the KV cache in fixed-size blocks of 8 tokens. " * 10,  # 680 characters
    "Thanks!",
)
SEED_OUTPUT_TOKENS = 50

# Log-normal shape of ShareGPT lengths (PagedAttention paper, Fig. 11): means 161 / 338 tokens.
SHAREGPT_INPUT_MEAN = 161.0
SHAREGPT_OUTPUT_MEAN = 338.0
SHAREGPT_SIGMA = 0.9  # a long right tail; the median is mean * exp(-sigma^2 / 2)
SHAREGPT_DEFAULT_REQUESTS = 256
PREFIX_SEED_OFFSET = 1_000_003  # the shared prefix's generator: seed + this, so the prompts' own ids do not move

BUILTIN = ("seed", "sharegpt-like")


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True)
class Request:
    request_id: int
    prompt_token_ids: tuple[int, ...]
    output_tokens: int
    prompt: str | None = None  # the text, where the workload had one (for the record only)
    arrival_s: float = 0.0  # when it becomes available, seconds after the pass starts (offline: all at 0)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)


def check_workload_name(name: str) -> None:
    """Validate a workload name without a tokenizer (so bad input fails before any model loads)."""
    if name in BUILTIN:
        return
    if name.startswith("file:"):
        path = Path(name[len("file:") :])
        if not path.is_file():
            raise LabInputError(f"workload file not found: {path} (give an existing .jsonl file: file:PATH.jsonl)")
        read_jsonl_specs(path)
        return
    raise LabInputError(f"unknown workload {name!r}: choose seed, sharegpt-like or file:PATH.jsonl")


def build_workload(
    name: str,
    tokenizer: Tokenizer,
    vocab_ids: list[int],
    max_model_len: int,
    seed: int = 0,
    num_requests: int | None = None,
    output_tokens: int | None = None,
    shared_prefix_tokens: int = 0,
) -> list[Request]:
    """The requests of workload `name`, with lengths that fit `max_model_len`.

    `vocab_ids`: the ids that synthetic prompts draw from (the ordinary tokens, no special ones).
    `num_requests` cycles or truncates the workload's requests; `output_tokens` overrides every length;
    `shared_prefix_tokens` K puts the same K ids before every prompt.
    """
    rng = random.Random(seed)
    if name == "seed":
        specs = [{"prompt": p, "output_tokens": SEED_OUTPUT_TOKENS} for p in SEED_PROMPTS]
    elif name == "sharegpt-like":
        count = num_requests or SHAREGPT_DEFAULT_REQUESTS
        specs = sharegpt_like_lengths(count, max_model_len, rng)
    elif name.startswith("file:"):
        specs = read_jsonl_specs(Path(name[len("file:") :]))
    else:
        check_workload_name(name)  # raises with the fix
        raise AssertionError("unreachable")
    if num_requests is not None:
        specs = [specs[i % len(specs)] for i in range(num_requests)]
    prefix = shared_prefix(vocab_ids, shared_prefix_tokens, seed)
    requests = []
    for i, spec in enumerate(specs):
        if "prompt" in spec:
            ids = tuple(tokenizer.encode(spec["prompt"], add_special_tokens=False)) or (vocab_ids[0],)
        else:
            ids = tuple(rng.choice(vocab_ids) for _ in range(spec["prompt_tokens"]))
        ids = prefix + ids
        out = output_tokens or spec["output_tokens"]
        if len(ids) + out > max_model_len:
            raise LabInputError(
                f"request {i}: {len(ids)} prompt + {out} output tokens exceed the model's context of "
                f"{max_model_len} tokens; shorten it or lower --output-tokens"
            )
        requests.append(Request(i, ids, out, spec.get("prompt")))
    return requests


def shared_prefix(vocab_ids: list[int], tokens: int, seed: int) -> tuple[int, ...]:
    """The K = `tokens` ids every prompt starts with (empty for 0), from their own seeded generator."""
    rng = random.Random(seed + PREFIX_SEED_OFFSET)
    return tuple(rng.choice(vocab_ids) for _ in range(tokens))


def sharegpt_like_lengths(count: int, max_model_len: int, rng: random.Random) -> list[dict]:
    """`count` (prompt_tokens, output_tokens) pairs with ShareGPT's log-normal shape.

    Each pair is clipped so that prompt + output fits in `max_model_len` (prompt to at most half).
    """
    mu_in = math.log(SHAREGPT_INPUT_MEAN) - SHAREGPT_SIGMA**2 / 2
    mu_out = math.log(SHAREGPT_OUTPUT_MEAN) - SHAREGPT_SIGMA**2 / 2
    specs = []
    for _ in range(count):
        prompt = max(1, min(round(rng.lognormvariate(mu_in, SHAREGPT_SIGMA)), max_model_len // 2))
        output = max(1, min(round(rng.lognormvariate(mu_out, SHAREGPT_SIGMA)), max_model_len - prompt))
        specs.append({"prompt_tokens": prompt, "output_tokens": output})
    return specs


def read_jsonl_specs(path: Path) -> list[dict]:
    """Parse a workload file; every error names the line and what a line must look like."""
    shape = '{"prompt": "...", "output_tokens": N} or {"prompt_tokens": N, "output_tokens": N}'
    specs = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LabInputError(f"cannot read workload file {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LabInputError(f"{path}, line {number}: not valid JSON ({exc.msg}); each line is {shape}") from exc
        if not isinstance(item, dict) or not _is_count(item.get("output_tokens")):
            raise LabInputError(f"{path}, line {number}: needs a positive integer output_tokens; each line is {shape}")
        if isinstance(item.get("prompt"), str) and item["prompt"]:
            specs.append({"prompt": item["prompt"], "output_tokens": item["output_tokens"]})
        elif _is_count(item.get("prompt_tokens")):
            specs.append({"prompt_tokens": item["prompt_tokens"], "output_tokens": item["output_tokens"]})
        else:
            raise LabInputError(
                f"{path}, line {number}: needs a non-empty prompt or a positive prompt_tokens; each line is {shape}"
            )
    if not specs:
        raise LabInputError(f"workload file {path} has no requests; each line is {shape}")
    return specs


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
