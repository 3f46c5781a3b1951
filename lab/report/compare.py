"""`lab compare RUN_A RUN_B [...]`: the same metrics of several runs side by side, with ratios to the first.

Made for comparing GPUs, versions or settings on one workload. Runs are comparable when they ran the
same model on the same requests: same model, workload, request count, prompt tokens and output tokens.
Anything else differing (device, GPU, versions, batch size, KV pool) is what is being compared, and
is listed above the table. Ratios are run / first run: above 1 means more of that figure (for a rate,
faster; for a latency or a peak, slower or larger).

The figures are the report's: computed from each run's request records with the same definitions
(latency from arrival, `lab.metrics`), the median over the timed passes that count, never the last
pass alone.
"""

from __future__ import annotations

import string
from pathlib import Path

from tabulate import tabulate

from lab.errors import LabInputError
from lab.metrics import ratio
from lab.records import RunSummary
from lab.report.comparable import check_comparable, describe, differences, identity
from lab.report.format import MIB, fmt
from lab.report.run_view import RunView
from lab.report.scaling import scaling_section
from lab.report.sweep_compare import SweepRun, check_plot_path, combined_section, sweep_comparison, write_compare_plot

# (label, where in a summary entry); units in the labels.
METRICS = (
    ("output tokens/s", ("metrics", "output_tokens_per_s")),
    ("requests/s", ("metrics", "requests_per_s")),
    ("TTFT p50 s", ("metrics", "ttft_s_p50")),
    ("TTFT p99 s", ("metrics", "ttft_s_p99")),
    ("E2E p50 s", ("metrics", "e2e_s_p50")),
    ("E2E p99 s", ("metrics", "e2e_s_p99")),
    ("queueing p50 s", ("metrics", "queue_s_p50")),
    ("queueing p99 s", ("metrics", "queue_s_p99")),
    ("service p50 s", ("metrics", "service_s_p50")),
    ("service p99 s", ("metrics", "service_s_p99")),
    ("TPOT p50 s", ("metrics", "tpot_s_p50")),
    ("TPOT p99 s", ("metrics", "tpot_s_p99")),
    ("ITL p50 s", ("metrics", "itl_s_p50")),
    ("ITL p99 s", ("metrics", "itl_s_p99")),
    ("timed passes counted", ("metrics", "passes_counted")),
    ("load s", ("load_s",)),
    ("NVML process tree peak MiB", ("memory", "whole_process", "nvml_tree_peak_mib")),
    ("RSS tree peak MiB (psutil)", ("memory", "whole_process", "rss_tree_peak_mib")),
    ("allocator peak allocated MiB (torch)", ("memory", "allocator", "peak_allocated_bytes")),
    ("KV pool MiB (paged engines; vLLM: per GPU)", ("engine", "kv_pool_bytes")),
    ("J per output token", ("energy", "j_per_output_token")),
    ("mean power W (GPUs used)", ("energy", "mean_power_w")),
    ("host CPUs busy with other work, worst pass", ("host_cpu", "max_other_cpus")),
    ("cgroup CPU throttling s, worst pass", ("host_cpu", "max_throttled_s")),
    ("passes warned of host CPU load", ("host_cpu", "warned_passes")),
)
MIB_FROM_BYTES = {"allocator peak allocated MiB (torch)", "KV pool MiB (paged engines; vLLM: per GPU)"}


def conditions(run: RunView) -> dict:
    """What may differ, and is then what the comparison is about."""
    manifest, engine = run.manifest, run.manifest["config"]["engine"]
    env = next((e for e in (manifest.get("backend_environments") or {}).values() if e), {}) or {}
    gpus = ((manifest.get("host") or {}).get("nvml") or {}).get("gpus") or []
    first = next((r for r in run.runs if r.device), None)
    return {
        "device": first.device if first else engine.get("device"),
        "GPU": ", ".join(str(g.get("name")) for g in gpus) or "none",
        "dtype": first.dtype if first else engine.get("dtype"),
        "torch": _version(env.get("torch")),
        "transformers": _version(env.get("transformers")),
        "vllm": _version(env.get("vllm")),
        "batch size": engine.get("batch_size"),
        "block size": engine.get("block_size"),
        "KV pool": engine.get("kv_cache_memory_bytes") or engine.get("gpu_memory_utilization"),
        "GPUs per backend/mode": engine.get("tensor_parallel_size", 1),
        "request rates": ",".join(map(str, (engine.get("online") or {}).get("request_rates") or ["inf"])),
        "runtime": manifest.get("runtime"),
        "git commit": ((manifest.get("host") or {}).get("git") or {}).get("commit"),
    }


def _version(value) -> str | None:
    """The version as recorded, None where it is not (compared and printed as such)."""
    return value.get("version") if isinstance(value, dict) else value


def metric_value(entry: RunSummary, label: str, path: tuple[str, ...]):
    value = entry.to_dict()
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    if value is not None and label in MIB_FROM_BYTES:
        value = value / MIB
    return value


def ratio_text(value, base) -> str:
    """value / base as '2.00x'; '-' where either is missing or base is 0."""
    numbers = isinstance(value, (int, float)) and isinstance(base, (int, float))
    found = ratio(value, base) if numbers else None
    return "-" if found is None else f"{found:.2f}x"


def comparison_table(runs: list[RunView], letters: list[str]) -> str:
    """Rows: (backend/mode, metric); columns: each run's value, then each later run / the first."""
    by_label = [{e.label: e for e in r.runs} for r in runs]
    labels = list(dict.fromkeys(label for runs_of in by_label for label in runs_of))
    rows = []
    for label in labels:
        for name, path in METRICS:
            values = [metric_value(r[label], name, path) if label in r and r[label].ok else None for r in by_label]
            if all(v is None for v in values):
                continue
            rows.append(
                [label, name]
                + [fmt(v, 4 if name.endswith(" s") else 2) for v in values]
                + [ratio_text(v, values[0]) for v in values[1:]]
            )
    headers = ["backend/mode", "metric"] + letters + [f"{x}/{letters[0]}" for x in letters[1:]]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def online_sections(runs: list[RunView], letters: list[str], plot: Path | None) -> list[str]:
    """The sweeps side by side, their sustained rates in one table, and with `plot` the combined
    Figure 12 written there (`sweep_compare.py`); [] where no run swept and no plot was asked for."""
    sweep_runs = [SweepRun.of(x, r, conditions(r)) for x, r in zip(letters, runs)]
    lines = []
    for section in (sweep_comparison([(r.letter, r.runs) for r in sweep_runs]), combined_section(sweep_runs)):
        lines += [""] + section if section else []
    if plot is not None:
        lines += ["", write_compare_plot(plot, sweep_runs)]
    return lines


def render_comparison(run_dirs: list[Path], force: bool = False, plot: Path | None = None) -> str:
    """The comparison as markdown: which run is which, what differs, the table, the failures; with
    `plot`, the combined Figure 12 written to that PNG."""
    if plot is not None:
        check_plot_path(plot)
    if len(run_dirs) < 2:
        raise LabInputError("give two or more run folders: lab compare RUN_A RUN_B [...]")
    if len(run_dirs) > len(string.ascii_uppercase):
        raise LabInputError(f"compare at most {len(string.ascii_uppercase)} runs at once")
    runs = [RunView(d) for d in run_dirs]
    forced = check_comparable(runs, force)
    letters = list(string.ascii_uppercase[: len(runs)])
    lines = ["# PagedAttention Lab comparison", ""]
    lines += [f"- {x}: `{r.manifest['run_id']}` ({r.path})" for x, r in zip(letters, runs)]
    ident = identity(runs[0])
    same = ", ".join(f"{k} {v}" for k, v in ident.items() if k not in forced)
    lines += ["", f"Same in every run: {same or 'nothing of the model and workload'}."]
    if forced:
        lines += ["", f"**Not comparable, compared anyway (--force):** {describe(forced)}."]
    varying = differences([conditions(r) for r in runs])
    lines += ["", f"What differs: {describe(varying) or 'nothing recorded (a repeat of the same run)'}."]
    lines += [
        "",
        comparison_table(runs, letters),
        "",
        f"Ratios are each run / {letters[0]}: above 1 means more (a rate: faster; a latency or a peak: "
        "slower or larger). Failed backends show '-'. Every figure is the median over that run's timed passes "
        "that count (a pass that compiled does not), computed from its records; latencies count from each "
        "request's arrival.",
    ]
    if scaling := scaling_section(runs, letters):
        lines += [""] + scaling
    lines += online_sections(runs, letters, plot)
    failed = [f"- {x}: {e.label}: {e.error}" for x, r in zip(letters, runs) for e in r.runs if not e.ok]
    if failed:
        lines += ["", "Failures:", ""] + failed
    return "\n".join(lines) + "\n"
