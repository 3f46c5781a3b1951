"""`lab capacity`: how many requests each approach runs at once under one fixed KV-cache budget.

The question of the PagedAttention paper's Figure 13a (average batched requests, OPT-13B on the
ShareGPT trace: Orca Max 7.00, Pow2 9.81, Oracle 13.62, vLLM 30.42), asked of this lab's engines.

Arithmetic (`lab.kv`), for the workload's requests and a budget of B bytes:
- static, max-length reservation (the Orca-Max way): every request reserves `max_len` slots:
  B // (max_len x bytes per token) requests;
- dynamic padded batch (hf/batched): the largest batch size whose batches of consecutive requests
  each fit, a batch needing batch x (longest prompt + longest output - 1) slots at its end;
- paged (vLLM): the pool B buys (B // block bytes blocks, block 0 the null block), and a simulated
  continuous-batching scheduler over it; the mean and the largest number of requests per step.

Measurement: each point runs in its own process through `lab.experiment.execute_run`, as every
experiment run does:
- vLLM with `kv_cache_memory_bytes` = B: the requests per step it actually ran (from its KV samples);
- hf/batched at the batch size the arithmetic allows (and hf/static-cache at the static capacity):
  the cache tensors' bytes, checked against B, and the throughput at that point;
- the curve: throughput against concurrency, hf/batched at batch sizes 1, 2, 4, ... up to its
  capacity and vLLM with `max_num_seqs` 1, 2, 4, ... up to its own (where the engine settings
  carry `max_num_seqs`).
The budget bounds the KV cache only: weights, activations and the CUDA context are outside it.

Writes `results/<run-id>/`: manifest.json, capacity.json, capacity.md and runs/<point>/ for each
measured point; written as `.tmp-<run-id>` and renamed when complete, never overwriting.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tabulate import tabulate

from lab import kv
from lab import records as rec
from lab.config import EngineSettings, ExperimentSpec, RunSpec

Echo = Callable[[str], None]
CAPACITY_JSON = "capacity.json"
CAPACITY_MD = "capacity.md"
# PagedAttention paper, Figure 13a: average number of batched requests, OPT-13B, ShareGPT trace.
PAPER_FIG13A_MEAN_BATCHED = (("Orca (Max)", 7.00), ("Orca (Pow2)", 9.81), ("Orca (Oracle)", 13.62), ("vLLM", 30.42))


@dataclass(frozen=True)
class CapacitySpec:
    """What `lab capacity` runs: the shared engine settings, the budget, and which points to measure."""

    engine: EngineSettings
    kv_budget_bytes: int
    max_len: int | None = None  # static reservation per request; None: max_model_len or the model's context
    concurrency: tuple[int, ...] | None = None  # curve points; None: 1, 2, 4, ... up to each capacity
    measure: bool = True
    curve: bool = True
    collect: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- arithmetic


def capacity_arithmetic(requests: list[tuple[int, int]], budget_bytes: int, bytes_per_token: int, block_size: int,
                        max_len: int, max_num_seqs: int | None = None,
                        max_num_batched_tokens: int | None = None) -> dict[str, dict]:
    """Concurrency each approach fits in `budget_bytes` for `(prompt, output)` requests (see module doc)."""
    static = kv.static_capacity(budget_bytes, bytes_per_token, max_len)
    padded = kv.padded_batch_capacity(budget_bytes, bytes_per_token, requests)
    try:
        sim = kv.paged_capacity(budget_bytes, bytes_per_token, block_size, requests, max_num_seqs, max_num_batched_tokens)
        paged = {"concurrency": sim.max_running, "mean_running": sim.mean_running, "steps": sim.steps,
                 "preemptions": sim.preemptions, "num_blocks": budget_bytes // (block_size * bytes_per_token)}
    except ValueError as exc:
        paged = {"concurrency": 0, "mean_running": 0.0, "error": str(exc)}
    return {
        "static": {"concurrency": min(static, len(requests)), "unbounded": static,
                   "rule": f"budget // ({max_len} slots x {bytes_per_token} B)"},
        "padded": {"concurrency": padded, "rule": "largest batch whose batches each need <= budget"},
        "paged": dict(paged, rule=f"simulated scheduler over budget // ({block_size} x {bytes_per_token} B) blocks",
                      max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens),
    }


def concurrency_levels(limit: int, given: tuple[int, ...] | None) -> list[int]:
    """The curve's points: `given` up to `limit`, else 1, 2, 4, ... and `limit` itself."""
    if limit < 1:
        return []
    if given:
        return sorted({c for c in given if 1 <= c <= limit})
    levels, c = [], 1
    while c < limit:
        levels.append(c)
        c *= 2
    return levels + [limit]


# ----------------------------------------------------------------------------- one measured point


def measure_point(name: str, run: RunSpec, tmp: Path, launcher, collect: bool, echo: Echo) -> dict:
    """Run one point in its own process (`execute_run`) and read back what it measured."""
    from lab.experiment import execute_run

    echo(f"{name}: starting its own process")
    part = tmp / rec.RUNS / name
    result = execute_run(run, part, launcher, ExperimentSpec(run.engine, ((run.backend, run.mode),), collect=collect), echo)
    figures = point_figures(part, result)
    echo(f"{name}: {result.get('status')}" + (f", {figures['output_tokens_per_s']:,.1f} output tokens/s"
                                              if figures.get("output_tokens_per_s") else ""))
    return dict(figures, point=name, backend=run.backend, mode=run.mode, batch_size=run.engine.batch_size,
                status=result.get("status"), error=result.get("error"))


def point_figures(part: Path, result: dict) -> dict:
    """Throughput, requests per step and cache bytes of one finished point folder."""
    from lab.metrics import summarize_records

    records = rec.read_jsonl(part / rec.RECORDS)
    metrics = summarize_records(records) if records else {}
    engine = result.get("engine") or {}
    out = {"output_tokens_per_s": metrics.get("output_tokens_per_s"), "requests_per_s": metrics.get("requests_per_s"),
           "duration_s": metrics.get("duration_s"), "requests": len(records)}
    if result.get("backend") == "vllm":
        out.update(vllm_batched_requests(rec.read_jsonl(part / rec.KV_SAMPLES), records))
        out.update(max_num_seqs=engine.get("max_num_seqs"), max_num_batched_tokens=engine.get("max_num_batched_tokens"),
                   kv_pool_bytes=engine.get("kv_pool_bytes"), num_blocks=engine.get("num_blocks"))
    else:
        batches = engine.get("batches") or []
        out["max_cache_bytes"] = max((b.get("cache_bytes") or 0 for b in batches), default=None)
        out["max_batch"] = max((b["batch_size"] for b in batches), default=None)
        durations = [(b["end_s"] - b["start_s"], b["batch_size"]) for b in batches]
        total = sum(d for d, _ in durations)
        out["mean_running"] = sum(d * s for d, s in durations) / total if total else None
        out["max_running"] = out["max_batch"]
        out["cache_slots_per_sequence"] = max((b.get("cache_slots_per_sequence") or 0 for b in batches), default=None)
    return out


def vllm_batched_requests(samples: list[dict], records: list[dict]) -> dict:
    """Requests each engine step ran: `running` after the step plus those that finished in it.

    vLLM's `num_running_reqs` is read after the step has removed its finished requests; adding them
    back gives the step's batch, the paper's "batched requests". Steps that ran nothing are left out;
    the mean is weighted by step duration.
    """
    ends: dict[float, int] = {}
    for r in records:
        if r.get("status") == "ok":
            ends[r["end_s"]] = ends.get(r["end_s"], 0) + 1
    previous, weighted, total, batches = 0.0, 0.0, 0.0, []
    for s in sorted(samples, key=lambda s: s["step"]):
        weight, previous = s["t_s"] - previous, s["t_s"]
        batch = (s.get("running") or 0) + ends.get(s["t_s"], 0)
        if batch:
            batches.append(batch)
            weighted += batch * weight
            total += weight
    return {"max_running": max(batches, default=0), "mean_running": weighted / total if total else None,
            "max_waiting": max((s.get("waiting") or 0 for s in samples), default=0)}


# ----------------------------------------------------------------------------- the run


def run_capacity(spec: CapacitySpec, results_dir: Path, launcher, echo: Echo, label: str = "capacity") -> Path:
    """Arithmetic for all three approaches, then the measured points; returns the finished run folder."""
    from lab.experiment import manifest, prepare_model

    tmp = rec.start_run_dir(results_dir, rec.new_run_id(label))
    try:
        started = time.time()
        launcher.prepare(echo)
        base = RunSpec("vllm", "offline", dataclasses.replace(spec.engine, kv_cache_memory_bytes=spec.kv_budget_bytes))
        model_build = prepare_model(base, tmp, launcher, echo)
        facts = workload_facts(base, getattr(launcher, "cache_dir", None), spec)
        arithmetic = capacity_arithmetic(facts["lengths"], spec.kv_budget_bytes, facts["kv_bytes_per_token"],
                                         spec.engine.block_size, facts["max_len"])
        echo("arithmetic: " + ", ".join(f"{k} {v['concurrency']}" for k, v in arithmetic.items()))
        measured = measure_all(spec, base, arithmetic, tmp, launcher, echo) if spec.measure else []
        data = capacity_data(spec, facts, arithmetic, measured)
        rec.write_json(tmp / CAPACITY_JSON, data)
        (tmp / CAPACITY_MD).write_text(render_capacity(data), encoding="utf-8")
        experiment = ExperimentSpec(base.engine, (("hf", "batched"), ("vllm", "offline")), collect=spec.collect)
        info = manifest(experiment, launcher, measured, model_build, started, tmp.name)
        rec.write_json(tmp / rec.MANIFEST, dict(info, kind="capacity", capacity=spec.to_dict()))
        return rec.finish_run_dir(tmp)
    except BaseException:
        rec.discard_run_dir(tmp)
        raise


def workload_facts(run: RunSpec, cache_dir: Path | None, spec: CapacitySpec) -> dict:
    """The workload's (prompt, output) lengths and the model's KV bytes per token (in this process)."""
    from lab.runner import prepare, resolve_device, resolve_dtype

    dtype = resolve_dtype(run.engine.dtype, resolve_device(run.engine.device))
    _, info, requests = prepare(run, cache_dir, dtype)
    max_len = spec.max_len or run.engine.max_model_len or info["max_position_embeddings"]
    return {"lengths": [(r.prompt_tokens, r.output_tokens) for r in requests], "kv_bytes_per_token": info["kv_bytes_per_token"],
            "max_len": max_len, "dtype": dtype, "model": info}


def supports_max_num_seqs() -> bool:
    """Whether the engine settings carry vLLM's `max_num_seqs` (needed for the vLLM curve)."""
    return "max_num_seqs" in {f.name for f in dataclasses.fields(EngineSettings)}


def measure_all(spec: CapacitySpec, base: RunSpec, arithmetic: dict, tmp: Path, launcher, echo: Echo) -> list[dict]:
    """The measured points: vLLM at the budget, hf at its capacities, then the curve."""
    engine = base.engine
    points = [measure_point("vllm-offline-budget", base, tmp, launcher, spec.collect, echo)]
    hf_sizes = set(concurrency_levels(arithmetic["padded"]["concurrency"], spec.concurrency) if spec.curve else [])
    hf_sizes.add(arithmetic["padded"]["concurrency"])
    for size in sorted(s for s in hf_sizes if s >= 1):
        run = RunSpec("hf", "batched", dataclasses.replace(engine, batch_size=size))
        points.append(dict(measure_point(f"hf-batched-b{size}", run, tmp, launcher, spec.collect, echo), role="curve"))
    static = arithmetic["static"]["concurrency"]
    if static >= 1:
        run = RunSpec("hf", "static-cache", dataclasses.replace(engine, batch_size=static))
        points.append(measure_point(f"hf-static-cache-b{static}", run, tmp, launcher, spec.collect, echo))
    if spec.curve and supports_max_num_seqs():
        limit = points[0].get("max_running") or arithmetic["paged"]["concurrency"]
        for seqs in concurrency_levels(limit, spec.concurrency):
            run = RunSpec("vllm", "offline", dataclasses.replace(engine, max_num_seqs=seqs))
            points.append(dict(measure_point(f"vllm-offline-c{seqs}", run, tmp, launcher, spec.collect, echo),
                               role="curve", max_num_seqs_requested=seqs))
    return points


def capacity_data(spec: CapacitySpec, facts: dict, arithmetic: dict, measured: list[dict]) -> dict:
    """capacity.json: conditions, arithmetic, measured points, the curve and the paper's figures."""
    lengths = facts["lengths"]
    vllm = next((p for p in measured if p["point"] == "vllm-offline-budget"), None)
    if vllm and vllm.get("max_num_seqs"):  # the simulation again, with the limits the engine reported
        arithmetic = dict(arithmetic, paged_engine_limits=capacity_arithmetic(
            lengths, spec.kv_budget_bytes, facts["kv_bytes_per_token"], spec.engine.block_size, facts["max_len"],
            vllm["max_num_seqs"], vllm.get("max_num_batched_tokens"))["paged"])
    return {
        "conditions": {
            "model": spec.engine.model, "dtype": facts["dtype"], "device": spec.engine.device,
            "kv_bytes_per_token": facts["kv_bytes_per_token"], "kv_budget_bytes": spec.kv_budget_bytes,
            "block_size": spec.engine.block_size, "max_len": facts["max_len"], "workload": spec.engine.workload,
            "requests": len(lengths), "mean_prompt_tokens": sum(p for p, _ in lengths) / len(lengths),
            "mean_output_tokens": sum(o for _, o in lengths) / len(lengths),
            "budget_covers": "the KV cache only (weights, activations and the CUDA context are outside it)",
        },
        "arithmetic": arithmetic,
        "measured": measured,
        "curve": curve_rows(measured),
        "vllm_curve_note": None if supports_max_num_seqs() or not (spec.measure and spec.curve) else
        "vLLM curve skipped: EngineSettings has no max_num_seqs field to limit concurrency with",
        "paper_fig13a_mean_batched_requests": dict(PAPER_FIG13A_MEAN_BATCHED),
    }


def curve_rows(measured: list[dict]) -> list[dict]:
    """Throughput against concurrency: one row per curve point, hf batch size or vLLM max_num_seqs."""
    rows = []
    for p in measured:
        if p.get("role") != "curve":
            continue
        level = p["batch_size"] if p["backend"] == "hf" else p["max_num_seqs_requested"]
        rows.append({"approach": f"{p['backend']}/{p['mode']}", "concurrency": level, "status": p["status"],
                     "mean_running": p.get("mean_running"), "output_tokens_per_s": p.get("output_tokens_per_s")})
    return sorted(rows, key=lambda r: (r["approach"], r["concurrency"]))


# ----------------------------------------------------------------------------- capacity.md


def _num(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def render_capacity(data: dict) -> str:
    c, a = data["conditions"], data["arithmetic"]
    by_point = {p["point"]: p for p in data["measured"]}
    padded = by_point.get(f"hf-batched-b{a['padded']['concurrency']}")
    static = by_point.get(f"hf-static-cache-b{a['static']['concurrency']}")
    vllm = by_point.get("vllm-offline-budget")
    rows = [
        ["static, max-length reservation", a["static"]["concurrency"], _measured(static), "Orca (Max)", "7.00"],
        ["hf/batched (dynamic, padded)", a["padded"]["concurrency"], _measured(padded), "-", "-"],
        ["vllm/offline (paged)", f"{a['paged']['concurrency']} (mean {_num(a['paged'].get('mean_running'))})",
         _measured(vllm), "vLLM", "30.42"],
    ]
    lines = [
        "# KV-cache capacity under one budget", "",
        f"Budget {c['kv_budget_bytes']:,} bytes for {c['budget_covers']}; model `{c['model']}` ({c['dtype']}, "
        f"{c['kv_bytes_per_token']:,} KV bytes per token); workload `{c['workload']}`, {c['requests']} requests, mean "
        f"{c['mean_prompt_tokens']:.1f} prompt + {c['mean_output_tokens']:.1f} output tokens; static reservation "
        f"{c['max_len']:,} tokens per request; vLLM block size {c['block_size']}. A concurrency equal to the number "
        "of requests is the workload's limit, not the budget's.", "",
        tabulate(rows, headers=["approach", "arithmetic: concurrent requests", "measured: max / mean per step, "
                                "output tokens/s", "paper analogue", "paper Fig. 13a mean batched"], tablefmt="github"),
        "",
        "Static max-length reservation is measured with hf/static-cache at that batch size, but transformers sizes "
        "its static cache to the call (padded prompt + longest output - 1), not to the maximum length: the "
        "measured point gives the throughput at that concurrency, not the reservation. Paper Fig. 13a "
        "(OPT-13B, ShareGPT): " + ", ".join(f"{k} {v:.2f}" for k, v in PAPER_FIG13A_MEAN_BATCHED) + ".",
    ]
    limits = a.get("paged_engine_limits")
    if limits:
        lines += ["", f"Paged simulation with the engine's limits (max_num_seqs {limits['max_num_seqs']}, "
                      f"max_num_batched_tokens {limits['max_num_batched_tokens']}): max {limits['concurrency']}, "
                      f"mean {_num(limits.get('mean_running'))} requests per step, {limits.get('preemptions', 0)} preemptions."]
    if data["curve"]:
        lines += ["", "## Throughput against concurrency", "",
                  tabulate([[r["approach"], r["concurrency"], r["status"], _num(r["mean_running"]),
                             _num(r["output_tokens_per_s"])] for r in data["curve"]],
                           headers=["approach", "batch size / max_num_seqs", "status", "mean requests per step",
                                    "output tokens/s"], tablefmt="github")]
    if data.get("vllm_curve_note"):
        lines += ["", data["vllm_curve_note"]]
    return "\n".join(lines) + "\n"


def _measured(point: dict | None) -> str:
    if point is None:
        return "not measured"
    if point.get("status") != "ok":
        return f"{point.get('status')}: {(point.get('error') or '')[:80]}"
    text = f"{point.get('max_running')} / {_num(point.get('mean_running'))}, {_num(point.get('output_tokens_per_s'))}"
    if point.get("max_cache_bytes") is not None:
        text += f" (cache {point['max_cache_bytes']:,} B)"
    return text
