"""`lab compare`'s scaling table: the same workload on 1, 2, 4 ... GPUs per backend/mode
(`--tensor-parallel-size`), each run against the one with the fewest GPUs (TP=1 where there is one).

    speedup    = output tokens/s / the base run's
    efficiency = speedup / (GPUs / the base run's GPUs): 1.0 where throughput grows with the GPUs
    J per output token, and vLLM's KV pool in tokens (it grows with the GPUs as the weights per GPU shrink)
"""

from __future__ import annotations

from tabulate import tabulate

from lab.metrics import ratio
from lab.report.format import fmt
from lab.report.run_view import RunView


def gpus_of(run: RunView) -> int:
    return run.engine.tensor_parallel_size


def scaling_section(runs: list[RunView], letters: list[str]) -> list[str]:
    """The section's lines where the runs differ in GPUs per backend/mode; [] otherwise."""
    gpus = [gpus_of(r) for r in runs]
    if len(set(gpus)) < 2:
        return []
    base = gpus.index(min(gpus))
    by_label = [{e.label: e for e in r.runs if e.ok} for r in runs]
    labels = list(dict.fromkeys(label for entries in by_label for label in entries))
    rows = []
    for label in labels:
        base_entry = by_label[base].get(label)
        base_rate = base_entry.metric("output_tokens_per_s") if base_entry else None
        for letter, run, entries in zip(letters, runs, by_label):
            entry = entries.get(label)
            if entry is None:
                continue
            rate = entry.metric("output_tokens_per_s")
            speedup = ratio(rate, base_rate)
            energy = entry.energy or {}
            rows.append(
                [
                    label,
                    letter,
                    gpus_of(run),
                    fmt(rate, 1),
                    "-" if speedup is None else f"{speedup:.2f}x",
                    fmt(ratio(speedup, gpus_of(run) / gpus[base]), 2),
                    fmt(energy.get("j_per_output_token"), 4),
                    fmt((entry.engine or {}).get("kv_tokens_capacity")),
                ]
            )
    return [
        "## Scaling with tensor parallelism",
        "",
        f"Each run against {letters[base]} ({gpus[base]} GPU(s) per backend/mode). Speedup: output tokens/s / "
        f"{letters[base]}'s; efficiency: speedup / (GPUs / {letters[base]}'s GPUs).",
        "",
        tabulate(
            rows,
            headers=[
                "backend/mode",
                "run",
                "GPUs",
                "output tokens/s",
                "speedup",
                "efficiency",
                "J per output token",
                "vLLM KV pool tokens",
            ],
            tablefmt="github",
            disable_numparse=True,
        ),
    ]
