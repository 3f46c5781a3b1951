"""report.md from a run folder's records: tables (tabulate), conditions, observations.

Imports neither torch nor vllm; the report can be regenerated anywhere with `lab report RUN_DIR`.
Every number printed here is read from the run folder; nothing is typed in.
"""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from lab import records as rec
from lab.observations import observations

MIB = 1024**2


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def label(run: dict) -> str:
    return f"{run['backend']}/{run['mode']}"


def conditions(manifest: dict, runs: list[dict]) -> list[str]:
    config = manifest["config"]["engine"]
    host = manifest.get("host") or {}
    first = next((r for r in runs if r.get("model")), {})
    model = first.get("model") or {}
    workload = first.get("workload") or {}
    gpus = host.get("nvml", {}).get("gpus") if isinstance(host.get("nvml"), dict) else None
    machine = ", ".join(f"{g.get('name')} ({fmt(g.get('memory_total_mib'), 0)} MiB)" for g in gpus) if gpus else "no GPU"
    env = next((r for r in (manifest.get("backend_environments") or {}).values() if r), {}) or {}
    versions = {k: env.get(k) for k in ("torch", "transformers", "vllm")}
    return [
        f"- Run `{manifest['run_id']}`, {manifest['started']} to {manifest['finished']}, runtime: {manifest['runtime']}",
        f"- Machine: {machine}; CPU: {host.get('cpu', {}).get('model', '-') if isinstance(host.get('cpu'), dict) else '-'}; device used: {first.get('device', '-')}",
        f"- Versions: {', '.join(f'{k} {_version(v)}' for k, v in versions.items())}; lab {host.get('lab_version', '-')}",
        f"- Model: `{config['model']}` ({fmt(model.get('num_layers'))} layers, {fmt(model.get('num_kv_heads'))} KV heads, "
        f"head_dim {fmt(model.get('head_dim'))}, {first.get('dtype', '-')}, {fmt(model.get('kv_bytes_per_token'))} KV bytes per token, "
        f"{'saved' if model.get('has_weights') else 'random-init'} weights)",
        f"- Workload: `{config['workload']}`, {fmt(workload.get('requests'))} requests, {fmt(workload.get('prompt_tokens'))} prompt tokens, "
        f"{fmt(workload.get('output_tokens'))} output tokens (fixed: EOS ignored), seed {config['seed']}",
        f"- Warm-up: {config['warmup']} (excluded from every timing); hf batch size {config['batch_size']}; "
        f"prefix caching {'on' if config['enable_prefix_caching'] else 'off'}; vLLM KV pool: "
        + (f"kv_cache_memory_bytes={fmt(config['kv_cache_memory_bytes'])}" if config.get("kv_cache_memory_bytes")
           else f"gpu_memory_utilization={config.get('gpu_memory_utilization') or 'engine default'}"),
        _passes_line(config),
        "- Clock: one `time.perf_counter` clock per process, read after `torch.cuda.synchronize()` on CUDA; "
        "t=0 when every request is available",
    ]


def _passes_line(config: dict) -> str:
    """Timed passes per backend/mode and whether vLLM sampled its KV usage (older manifests: 1 and on)."""
    repeats = config.get("repeats", 1)
    passes = f"{repeats} (the tables give the last; \"Repeated timed passes\" gives all)" if repeats > 1 else "1"
    samples = "on" if config.get("sample_kv_every_step", True) else "off (engine stats disabled, as in `vllm bench`)"
    return f"- Timed passes per backend/mode: {passes}; vLLM per-step KV samples: {samples}"


def _version(value) -> str:
    if isinstance(value, dict):
        return str(value.get("version") or value.get("error") or "-")
    return str(value or "-")


def throughput_table(runs: list[dict]) -> str:
    rows = []
    for run in runs:
        m = run.get("metrics") or {}
        rows.append([
            label(run), run["status"], fmt(m.get("requests_ok")), fmt(m.get("output_tokens")),
            fmt(m.get("duration_s"), 3), fmt(m.get("requests_per_s")), fmt(m.get("output_tokens_per_s"), 1),
            fmt(m.get("total_tokens_per_s"), 1), fmt(run.get("load_s"), 1),
        ])
    return tabulate(rows, headers=["backend/mode", "status", "requests", "output tokens", "duration s",
                                   "requests/s", "output tokens/s", "total tokens/s", "load s"], tablefmt="github")


def latency_table(runs: list[dict]) -> str:
    rows = []
    for run in runs:
        m = run.get("metrics") or {}
        rows.append([label(run)] + [fmt(m.get(k), 4) for k in (
            "ttft_s_p50", "ttft_s_p99", "tpot_s_p50", "tpot_s_p99", "e2e_s_p50", "e2e_s_p99")])
    return tabulate(rows, headers=["backend/mode", "TTFT p50 s", "TTFT p99 s", "TPOT p50 s", "TPOT p99 s",
                                   "E2E p50 s", "E2E p99 s"], tablefmt="github")


def memory_table(runs: list[dict]) -> str:
    rows = []
    for run in runs:
        whole = run["memory"]["whole_process"]
        gen = run["memory"]["generate_phase"]
        alloc = run["memory"].get("allocator") or {}
        kv = run.get("engine") or {}
        rows.append([
            label(run), whole.get("source") or "-",
            fmt(whole.get("nvml_tree_peak_mib"), 0), fmt(gen.get("nvml_tree_peak_mib"), 0),
            fmt(whole.get("nvml_device_peak_mib"), 0), fmt(whole.get("rss_tree_peak_mib"), 0),
            fmt(_mib(alloc.get("peak_allocated_bytes")), 0), fmt(_mib(alloc.get("peak_reserved_bytes")), 0),
            fmt(_mib(kv.get("kv_pool_bytes")), 0), fmt(kv.get("kv_tokens_capacity")),
        ])
    return tabulate(rows, headers=[
        "backend/mode", "sampled by", "NVML process tree peak MiB", "NVML tree peak in timed pass MiB",
        "NVML whole GPU peak MiB", "RSS tree peak MiB (psutil)", "allocator peak allocated MiB (torch)",
        "allocator peak reserved MiB (torch)", "vLLM KV pool MiB (engine)", "vLLM KV pool tokens (engine)",
    ], tablefmt="github")


def _mib(value) -> float | None:
    return None if value is None else value / MIB


def render(run_dir: Path) -> str:
    manifest = rec.read_json(run_dir / rec.MANIFEST)
    runs = rec.read_json(run_dir / rec.SUMMARY)["runs"]
    lines = [f"# PagedAttention Lab run `{manifest['run_id']}`", "", "## Conditions", ""]
    lines += conditions(manifest, runs)
    lines += ["", "## Throughput", "", "Timed pass only (warm-up and loading excluded).", "", throughput_table(runs)]
    from lab.repeats import repeats_section

    repeated = repeats_section(runs)
    if repeated:
        lines += [""] + repeated
    lines += ["", "## Latency", "",
              "TTFT: first token - start of work on the request (for hf, its batch's start; for vLLM, t=0: "
              "it queues requests itself). TPOT: (E2E - TTFT) / (output tokens - 1).", "", latency_table(runs)]
    lines += ["", "## Memory", "",
              "Each column names its source: NVML (read by the collector process, per process and for the whole GPU), "
              "psutil RSS (host memory), the torch allocator (inside the transformers process, CUDA only) and "
              "the KV pool vLLM reports.", "", memory_table(runs)]
    from lab.bandwidth import bandwidth_section
    from lab.breakdown import breakdown_section
    from lab.plots import plots_markdown

    lines += [""] + breakdown_section(run_dir, runs)
    bandwidth = bandwidth_section(run_dir, runs)
    if bandwidth:
        lines += [""] + bandwidth
    failed = [r for r in runs if r["status"] != "ok"]
    if failed:
        lines += ["", "## Failures", ""] + [f"- {label(r)}: {r.get('error')}" for r in failed]
    lines += [""] + plots_markdown(run_dir)
    lines += ["", "## Observations", "",
              "The tutorial's conclusions, each checked against this run's numbers.", ""]
    lines += [f"- **{o['claim']}** {o['verdict']}: {o['evidence']}" for o in observations(run_dir, runs)]
    lines += ["", "Field definitions: docs/results.md.", ""]
    return "\n".join(lines)


def write_report(run_dir: Path) -> Path:
    """Regenerate everything derived from the records: kv_breakdown.json, the plots, report.md, report.html."""
    from lab.breakdown import write_breakdown_json
    from lab.html_report import write_html
    from lab.plots import write_plots

    write_breakdown_json(run_dir, rec.read_json(run_dir / rec.SUMMARY)["runs"])
    write_plots(run_dir)  # before render(): it links the plots listed in plots.json
    path = run_dir / rec.REPORT
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(render(run_dir), encoding="utf-8")
    tmp.replace(path)
    write_html(run_dir)
    return path
