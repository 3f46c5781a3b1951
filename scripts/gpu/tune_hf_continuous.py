"""Tune hf/continuous (transformers' continuous batching over its paged cache) on the GPU.

The workload of issue 15: synthetic:llama-1b, 256 prompts of 128 random tokens, 128 new tokens each.
Each configuration runs as `lab experiment --backends hf/continuous` in its own process (the lab's
clock, warm-up on the same manager, exact output lengths, the collector beside it) with `--repeats`
timed passes and no per-step KV samples (as `generate_batch` has none), and writes one JSON record
to OUT_DIR/records/NAME.json as soon as it finishes, so a call stopped by a timeout keeps what ran.

`generate_batch-default` is the reference of the issue (2,150 output tokens/s on an H100 with
transformers 5.17): `model.generate_batch` with transformers' defaults, three calls in a fresh
process on the same token ids, timed around each call. Its pool is transformers' own (about 90% of
free memory), not vLLM's.

The other configurations change one thing at a time from `pool-4g` (sdpa, block 16, a 4 GiB pool,
max_batch_tokens auto); `lab-default` is the same with vLLM's pool rule (0.5 x the card - in use); see
CONFIGS and BASE_POOL. Every record carries the
settings transformers resolved (its `continuous_batching_config`), the pool, throughput per pass and
the memory peaks.

Usage (repository root, GPU machine):
    PYTHONPATH=. python3 scripts/gpu/tune_hf_continuous.py OUT_DIR --group baseline
    PYTHONPATH=. python3 scripts/gpu/tune_hf_continuous.py OUT_DIR --configs graphs,graphs-m2048
    PYTHONPATH=. python3 scripts/gpu/tune_hf_continuous.py --list
A check of the script on the CPU before device time is spent on it (synthetic:tiny, 16 prompts;
generate_batch then gets a small pool instead of transformers' 90% of RAM, and the lab a 64 MiB one:
the GPU configurations' pools would ask the CPU for a mask of tens of GiB):
    PYTHONPATH=. python3 scripts/gpu/tune_hf_continuous.py /tmp/tune-dry --device cpu --model synthetic:tiny \
        --prompts 16 --configs generate_batch-default
    PYTHONPATH=. python3 scripts/gpu/tune_hf_continuous.py /tmp/tune-dry --device cpu --model synthetic:tiny \
        --prompts 16 --custom small --settings max_batch_tokens=256 --lab-args "--kv-cache-memory 64MiB"
The lab's model cache is LAB_CACHE_DIR (as for `lab`), default ~/.cache/paged-attention-lab.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from lab.config import EngineSettings, RunSpec
from lab.runner import resolve_inputs

PROMPT_TOKENS, OUTPUT_TOKENS = 128, 128
REFERENCE_DEFAULT_TOK_S = 2150  # issue 15: generate_batch, default settings, later calls (H100, transformers 5.17)


@dataclass(frozen=True)
class Config:
    group: str
    settings: str = ""  # --hf-continuous
    lab_args: tuple[str, ...] = ()  # further `lab experiment` options (the pool, the block size)
    needs: str | None = None  # a module that must be importable (a kernel's package)
    note: str = ""


# The pool of every configuration unless it names its own: 4 GiB holds 190,000 tokens of llama-1b, about
# three times what 256 requests of 255 stored tokens need. vLLM's rule (0.5 x the card) gives ~37 GiB,
# and with sdpa transformers' mask grows with the pool (max_batch_tokens x pool tokens): the pool group
# measures what that costs. Give vLLM the same --kv-cache-memory when comparing with a tuned result.
BASE_POOL = ("--kv-cache-memory", "4GiB")
POOL_OPTIONS = ("--kv-cache-memory", "--gpu-memory-utilization")

CONFIGS: dict[str, Config] = {
    "generate_batch-default": Config("baseline", note="model.generate_batch, transformers' defaults and pool"),
    "lab-default": Config(
        "baseline",
        "",
        ("--gpu-memory-utilization", "0.5"),
        note="sdpa, block 16, vLLM's pool rule, max_batch_tokens auto",
    ),
    "pool-4g": Config("baseline", note="the lab's defaults with the base pool"),
    "graphs": Config("baseline", "cuda_graphs=on"),
    "block-64": Config("block", "block_size=64"),
    "block-256": Config("block", "block_size=256", note="transformers' default page size"),
    "graphs-block-64": Config("block", "cuda_graphs=on,block_size=64"),
    "graphs-block-256": Config("block", "cuda_graphs=on,block_size=256"),
    "graphs-m1024": Config("tokens", "cuda_graphs=on,max_batch_tokens=1024"),
    "graphs-m2048": Config("tokens", "cuda_graphs=on,max_batch_tokens=2048"),
    "graphs-m4096": Config("tokens", "cuda_graphs=on,max_batch_tokens=4096"),
    "graphs-m16384": Config("tokens", "cuda_graphs=on,max_batch_tokens=16384"),
    "compile1": Config("compile", "compile_level=1"),
    "graphs-compile1": Config("compile", "cuda_graphs=on,compile_level=1"),
    "eager": Config("compile", "attn=eager"),
    "graphs-async": Config("compile", "cuda_graphs=on,async_batching=on", note="did not finish in 2026-11-26's trial"),
    "graphs-rule": Config(
        "pool",
        "cuda_graphs=on",
        ("--gpu-memory-utilization", "0.5"),
        note="vLLM's default pool: 5.17 warms its graphs up reading the whole pool",
    ),
    "graphs-pool-16g": Config("pool", "cuda_graphs=on", ("--kv-cache-memory", "16GiB")),
    "flash2-graphs": Config(
        "flash",
        "attn=flash_attention_2,cuda_graphs=on",
        needs="flash_attn",
        note="a paged kernel: the decode fast path reads blocks in place",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, nargs="?", help="Folder for records/, runs/ and the workload.")
    parser.add_argument("--group", help="Run every configuration of a group: " + ", ".join(sorted(groups())))
    parser.add_argument("--configs", help="Comma-separated configuration names (see --list).")
    parser.add_argument("--list", action="store_true", help="List the configurations and exit.")
    parser.add_argument("--custom", help="Name of one more configuration, made of --settings and --lab-args.")
    parser.add_argument("--settings", default="", help="With --custom: its --hf-continuous value.")
    parser.add_argument(
        "--lab-args", default="", help="With --custom: further `lab experiment` options, e.g. '--kv-cache-memory 4GiB'."
    )
    parser.add_argument("--model", default="synthetic:llama-1b")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a dry check of this script.")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="Timed passes per configuration.")
    parser.add_argument("--timeout", type=int, default=420, help="Seconds one configuration may take.")
    parser.add_argument("--raw-generate-batch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.list:
        for name, c in CONFIGS.items():
            print(f"{c.group:9} {name:24} {c.settings or '-':45} {' '.join(c.lab_args) or '-':22} {c.note}")
        return
    if args.out is None:
        parser.error("give OUT_DIR")
    if args.raw_generate_batch:
        write_record(args.out, "generate_batch-default", measure_generate_batch(args))
        return
    if args.custom:
        CONFIGS[args.custom] = Config("custom", args.settings, tuple(args.lab_args.split()))
    names = selected(args.group, args.configs or args.custom)
    workload = write_workload(args.out, args.prompts)
    for name in names:
        started = time.time()
        record = run_config(name, CONFIGS[name], args, workload)
        record["wall_s"] = time.time() - started
        write_record(args.out, name, record)
        print(
            f"{name}: {record.get('status')} {fmt_rate(record.get('output_tokens_per_s_median'))} tok/s "
            f"({record['wall_s']:.0f} s)",
            flush=True,
        )
    print_table(args.out)


def groups() -> set[str]:
    return {c.group for c in CONFIGS.values()}


def selected(group: str | None, configs: str | None) -> list[str]:
    if configs:
        names = [n.strip() for n in configs.split(",") if n.strip()]
        unknown = [n for n in names if n not in CONFIGS]
        if unknown:
            sys.exit(f"unknown configurations {unknown}: see --list")
        return names
    if group:
        if group not in groups():
            sys.exit(f"unknown group {group!r}: choose from {', '.join(sorted(groups()))}")
        return [n for n, c in CONFIGS.items() if c.group == group]
    sys.exit("give --group or --configs (see --list)")


def write_workload(out: Path, prompts: int) -> Path:
    """N lines of {"prompt_tokens": 128, "output_tokens": 128}: the lab draws the ids, seeded (seed 0)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"random-{prompts}x{PROMPT_TOKENS}-{OUTPUT_TOKENS}.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt_tokens": PROMPT_TOKENS, "output_tokens": OUTPUT_TOKENS}) + "\n" for _ in range(prompts)
        )
    )
    return path


def write_record(out: Path, name: str, record: dict) -> None:
    folder = out / "records"
    folder.mkdir(parents=True, exist_ok=True)
    record = dict(
        record,
        config=name,
        **(
            {
                "group": CONFIGS[name].group,
                "settings": CONFIGS[name].settings,
                "lab_args": list(CONFIGS[name].lab_args),
                "note": CONFIGS[name].note,
            }
        ),
    )
    (folder / f"{name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------- one lab configuration


def run_config(name: str, config: Config, args, workload: Path) -> dict:
    if config.needs and importlib.util.find_spec(config.needs) is None:
        return {"status": "skipped", "error": f"the {config.needs} package is not installed"}
    if name == "generate_batch-default":
        return run_raw(args)
    command = lab_command(name, config, args, workload)
    proc, error = run(command, args.timeout)
    if error:
        return {"status": "error", "error": error, "command": command}
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    return dict(lab_record(run_dir), command=command)


def lab_command(name: str, config: Config, args, workload: Path) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "lab",
        "experiment",
        "--backends",
        "hf/continuous",
        "--model",
        args.model,
        "--device",
        args.device,
        "--workload",
        f"file:{workload}",
        "--repeats",
        str(args.repeats),
        "--no-kv-samples",
        "--results",
        str(args.out / "runs"),
        "--label",
        f"tune-{name}",
    ]
    if config.settings:
        command += ["--hf-continuous", config.settings]
    pool = () if any(o in config.lab_args for o in POOL_OPTIONS) else BASE_POOL
    return command + list(pool) + list(config.lab_args)


def run(command: list[str], timeout: int) -> tuple[subprocess.CompletedProcess | None, str | None]:
    """The finished process, or None and why it did not finish well (its output's tail)."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-1500:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return None, f"timed out after {timeout} s: {tail}"
    if proc.returncode != 0:
        return None, f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-2500:]}"
    return proc, None


def lab_record(run_dir: Path) -> dict:
    """What one lab run measured: throughput per timed pass, the resolved settings, the pool and the peaks."""
    run = json.loads((run_dir / "summary.json").read_text())["runs"][0]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    engine, metrics = run.get("engine") or {}, run.get("metrics") or {}
    tokens = metrics.get("output_tokens") or 0
    rates = [tokens / s for s in run.get("passes_s") or [] if s]
    gpus = ((manifest.get("host") or {}).get("nvml") or {}).get("gpus") or [{}]
    allocator, whole = run["memory"].get("allocator") or {}, run["memory"]["whole_process"]
    return {
        "status": run["status"],
        "error": run.get("error"),
        "run_dir": str(run_dir),
        "gpu": gpus[0].get("name"),
        "transformers": engine.get("transformers_version"),
        "torch": engine.get("torch_version"),
        "output_tokens": tokens,
        "passes_s": run.get("passes_s"),
        "output_tokens_per_s_passes": rates,
        "output_tokens_per_s_median": statistics.median(rates) if rates else None,
        "output_tokens_per_s_best": max(rates, default=None),
        "load_s": run.get("load_s"),
        "warmup_s": (run.get("warmup") or {}).get("s"),
        "ttft_s_p50": metrics.get("ttft_s_p50"),
        "tpot_s_p50": metrics.get("tpot_s_p50"),
        "attn_implementation": engine.get("attn_implementation"),
        "block_size": engine.get("block_size"),
        "num_blocks": engine.get("num_blocks"),
        "kv_pool_bytes": engine.get("kv_pool_bytes"),
        "kv_pool_rule": engine.get("kv_pool_rule"),
        "max_batch_tokens_rule": engine.get("max_batch_tokens_rule"),
        "attention_mask_bytes": engine.get("attention_mask_bytes"),
        "continuous_batching_config": engine.get("continuous_batching_config"),
        "steps_last_pass": engine.get("steps_last_pass"),
        "peak_allocated_bytes": allocator.get("peak_allocated_bytes"),
        "peak_reserved_bytes": allocator.get("peak_reserved_bytes"),
        "nvml_tree_peak_mib": whole.get("nvml_tree_peak_mib"),
    }


# ----------------------------------------------------------------------------- transformers' defaults


def run_raw(args) -> dict:
    """`generate_batch` in a process of its own (this script again); it writes its own record."""
    proc, error = run(
        [
            sys.executable,
            __file__,
            str(args.out),
            "--raw-generate-batch",
            "--model",
            args.model,
            "--device",
            args.device,
            "--prompts",
            str(args.prompts),
        ],
        args.timeout,
    )
    path = args.out / "records" / "generate_batch-default.json"
    if error:
        return {"status": "error", "error": error}
    return json.loads(path.read_text())


def measure_generate_batch(args, calls: int = 3) -> dict:
    """Three `generate_batch` calls with transformers' defaults on the lab's token ids, each timed on its own."""

    cuda = args.device == "cuda"
    workload = write_workload(args.out, args.prompts)
    engine = EngineSettings(model=args.model, workload=f"file:{workload}", device=args.device)
    cache_dir = Path(os.environ["LAB_CACHE_DIR"]) if os.environ.get("LAB_CACHE_DIR") else None
    found = resolve_inputs(RunSpec("hf", "continuous", engine), cache_dir)
    dtype = getattr(torch, found.dtype)
    model = AutoModelForCausalLM.from_pretrained(str(found.model_path), dtype=dtype).to(args.device).eval()
    inputs = [list(r.prompt_token_ids) for r in found.requests]
    config = GenerationConfig(max_new_tokens=OUTPUT_TOKENS, do_sample=False, eos_token_id=None)
    extra = {} if cuda else {"continuous_batching_config": dry_run_config()}
    passes, tokens = [], []
    for _ in range(calls):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        results = model.generate_batch(inputs=inputs, generation_config=config, **extra)
        if cuda:
            torch.cuda.synchronize()
        passes.append(time.perf_counter() - start)
        tokens.append(sum(len(r.generated_tokens) for r in results.values()))
    rates = [t / s for t, s in zip(tokens, passes)]
    exact = all(t == args.prompts * OUTPUT_TOKENS for t in tokens)
    return {
        "status": "ok" if exact else "error",
        "error": None if exact else f"output tokens per call {tokens}",
        "gpu": torch.cuda.get_device_name() if cuda else "cpu (dry check)",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "passes_s": passes,
        "output_tokens": tokens,
        "output_tokens_per_s_passes": rates,
        "output_tokens_per_s_first": rates[0],
        "output_tokens_per_s_median": statistics.median(rates[1:]),
        "output_tokens_per_s_best": max(rates[1:]),
        "peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "attn_implementation": model.config._attn_implementation,
        "timing": "around each generate_batch call (it builds and warms a manager each time, as by default)",
    }


def dry_run_config():
    """On the CPU transformers' default pool is 90% of free RAM: a small one instead (dry check only)."""
    return ContinuousBatchingConfig(num_blocks=256, max_batch_tokens=256)


# ----------------------------------------------------------------------------- the table


def fmt_rate(value) -> str:
    return "-" if value is None else f"{value:,.0f}"


def print_table(out: Path) -> None:
    records = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    records.sort(key=lambda r: -(r.get("output_tokens_per_s_median") or 0))
    print(
        f"\n{'configuration':24} {'status':8} {'median tok/s':>12} {'best tok/s':>10} {'x 2,150':>8} "
        f"{'M':>6} {'block':>5} {'pool GiB':>8} {'peak alloc GiB':>14}"
    )
    for r in records:
        cb = r.get("continuous_batching_config") or {}
        median = r.get("output_tokens_per_s_median")
        print(
            f"{r['config']:24} {r.get('status', '-'):8} {fmt_rate(median):>12} "
            f"{fmt_rate(r.get('output_tokens_per_s_best')):>10} "
            f"{(median / REFERENCE_DEFAULT_TOK_S if median else 0):>8.2f} {str(cb.get('max_batch_tokens', '-')):>6} "
            f"{str(r.get('block_size', '-')):>5} {(r.get('kv_pool_bytes') or 0) / 2**30:>8.1f} "
            f"{(r.get('peak_allocated_bytes') or 0) / 2**30:>14.1f}"
        )


if __name__ == "__main__":
    main()
