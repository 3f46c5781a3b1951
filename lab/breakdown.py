"""Where the KV-cache memory went, per backend/mode: the PagedAttention paper's Figure 2 for a run.

Reads a run folder (no torch, no vllm): each run's `result.json` (hf: per-batch shapes and the cache
tensors' own bytes; vLLM: the KV pool), `records.jsonl` and `kv.jsonl` (vLLM: one sample per engine
step). The categories and how each backend maps onto them are defined in `lab.kv`.

Time-averaged. Each step's breakdown is weighted by how long that step took, so the shares are
slot-seconds: what the memory held on average over the timed pass, as the paper's "average
percentage of memory wastes". vLLM: step i lasts `t_s[i] - t_s[i-1]` (its samples' runner-clock
times). hf: from the batch record's `step_s` (the clock at each step) where it has them, else each
of a batch's N steps lasts `(end_s - start_s) / N`.

Measurement against arithmetic (`checks` of each entry):
- hf: the cache tensors' bytes at the end of each batch against batch x slots x bytes per token,
  with slots = W + N - 1 for the dynamic cache and, for the static cache, the largest W + N - 1 of
  any call so far (transformers keeps a static cache's length across calls, warm-up included); on
  CUDA also the allocator's peak minus the weights against the cache bytes (the rest is activations
  and logits).
- vLLM: blocks in use as the scheduler reported them against sum(ceil(tokens / block_size)) over
  the requests running at that step, rebuilt from the records (a request runs from the step of its
  first token to the step of its last, one token per step). A step where they differ by more than
  2% is counted and the likely reason given.
"""

from __future__ import annotations

import bisect
from pathlib import Path

from tabulate import tabulate

from lab import records as rec
from lab.kv import (
    CATEGORIES,
    SlotBreakdown,
    blocks_needed,
    dynamic_batch_step,
    dynamic_cache_slots,
    final_tokens,
    integrate,
    paged_step,
    static_batch_step,
    static_cache_slots,
)

BREAKDOWN_JSON = "kv_breakdown.json"
TOLERANCE = 0.02  # arithmetic and measurement "agree" within 2%
DETAILS = ("padding", "finished", "unused_tail", "block_tail")

# PagedAttention paper (Kwon et al., SOSP 2023), Figure 2: share of KV-cache memory holding token
# states, averaged over the experiment of its section 6.2 (OPT-13B on one NVIDIA A100).
PAPER_FIG2_TOKEN_STATES_PCT = (("Orca (Max)", 20.4), ("Orca (Pow2)", 26.8), ("Orca (Oracle)", 38.2), ("vLLM", 96.3))

APPROACH = {
    "hf/sequential": "dynamic cache, batch 1: grows one slot per step, no padding",
    "hf/batched": "dynamic cache, left-padded batch: grows per step; padding and finished sequences waste",
    "hf/static-cache": "static cache sized by transformers to W + N - 1 (the largest call so far), allocated up front",
    "vllm/offline": "paged: blocks of block_size tokens, allocated as tokens arrive",
}


def _label(run: dict) -> str:
    return f"{run['backend']}/{run['mode']}"


def _part(run_dir: Path, run: dict) -> Path:
    return run_dir / rec.RUNS / f"{run['backend']}-{run['mode']}"


# ----------------------------------------------------------------------------- hf


def hf_batch_steps(batch: dict, static: bool, bytes_per_token: int) -> list[tuple[float, SlotBreakdown]]:
    """(duration s, breakdown) of each decoding step of one hf batch record (see module docstring)."""
    prompts, outputs = batch["prompt_tokens"], batch["output_tokens"]
    steps = batch["generated_tokens"]
    if steps < 1:
        return []
    size, width = batch["batch_size"], batch["padded_prompt_tokens"]
    durations = step_durations_s(batch)
    external = None
    if batch.get("peak_reserved_bytes") is not None and batch.get("peak_allocated_bytes") is not None:
        external = (batch["peak_reserved_bytes"] - batch["peak_allocated_bytes"]) / bytes_per_token
    measured = batch.get("cache_bytes")
    slots_per_sequence = batch.get("cache_slots_per_sequence") or width + steps - 1
    final_slots = static_cache_slots(size, slots_per_sequence) if static else dynamic_cache_slots(size, width, steps)
    other = max(measured / bytes_per_token - final_slots, 0.0) if measured is not None else 0.0
    out = []
    for step in range(1, steps + 1):
        if static:
            step_slots = static_batch_step(prompts, outputs, step, slots_per_sequence)
        else:
            step_slots = dynamic_batch_step(prompts, outputs, step)
        out.append((durations[step - 1], step_slots + SlotBreakdown(external_fragmentation=external, other=other)))
    return out


def step_durations_s(batch: dict) -> list[float]:
    """Each decoding step's seconds: from the batch's `step_s` clock readings where recorded, else
    its duration split evenly over its `generated_tokens` steps."""
    steps = batch["generated_tokens"]
    times = batch.get("step_s")
    if times and len(times) == steps:
        return [t - previous for previous, t in zip([batch["start_s"], *times[:-1]], times)]
    return [(batch["end_s"] - batch["start_s"]) / steps] * steps


def hf_cache_checks(result: dict) -> dict:
    """The cache tensors' bytes of each batch against the arithmetic (and, on CUDA, the allocator)."""
    engine = result.get("engine") or {}
    bytes_per_token = (result.get("model") or {}).get("kv_bytes_per_token")
    static = engine.get("cache_implementation") == "static"
    weights = engine.get("weights_allocated_bytes")
    rows, longest = [], 0
    warmup_batches = 1 if (result.get("warmup") or {}).get("requests") else 0
    batches = engine.get("batches") or []
    if warmup_batches and batches:  # the warm-up ran the first batch's shape: it sized the static cache first
        longest = batches[0]["padded_prompt_tokens"] + batches[0]["generated_tokens"] - 1
    for b in batches:
        call_length = b["padded_prompt_tokens"] + b["generated_tokens"] - 1
        longest = max(longest, call_length)
        slots = longest if static else call_length
        expected = b["batch_size"] * slots * bytes_per_token if bytes_per_token else None
        measured = b.get("cache_bytes")
        row = {
            "batch": b["batch"],
            "cache_bytes": measured,
            "arithmetic_bytes": expected,
            "slots_per_sequence": b.get("cache_slots_per_sequence"),
            "arithmetic_slots_per_sequence": slots,
            "agrees": measured is not None and expected is not None and abs(measured - expected) <= TOLERANCE * expected,
        }
        if b.get("peak_allocated_bytes") is not None and weights is not None:
            row["allocator_peak_minus_weights_bytes"] = b["peak_allocated_bytes"] - weights
            row["allocator_reserved_minus_allocated_bytes"] = b["peak_reserved_bytes"] - b["peak_allocated_bytes"]
        rows.append(row)
    return {
        "kind": "hf cache tensors",
        "formula": "batch x (W + N - 1) x bytes/token" + (" (W + N - 1: the largest call so far)" if static else ""),
        "batches": rows,
        "agree": sum(r["agrees"] for r in rows),
        "total": len(rows),
    }


def hf_breakdown(result: dict) -> dict:
    engine = result.get("engine") or {}
    bytes_per_token = (result.get("model") or {}).get("kv_bytes_per_token")
    static = engine.get("cache_implementation") == "static"
    steps = [s for b in engine.get("batches") or [] for s in hf_batch_steps(b, static, bytes_per_token)]
    return {"slot_seconds": integrate(steps), "duration_s": sum(w for w, _ in steps), "checks": hf_cache_checks(result),
            "external_note": None if result.get("device") == "cuda" else
            "not measurable on the CPU (no caching allocator to read)"}


# ----------------------------------------------------------------------------- vLLM


def vllm_running_per_sample(samples: list[dict], records: list[dict]) -> list[list[tuple[int, int]]]:
    """For each KV sample, the running requests as (tokens stored, final tokens), rebuilt from records.

    A request runs from the sample at its first token (stored = prompt) to the sample before its last
    (it is freed in the step that finishes it), one token per step: stored = P + (step - first step).
    """
    times = [s["t_s"] for s in samples]
    running: list[list[tuple[int, int]]] = [[] for _ in samples]
    for r in records:
        if r.get("status") != "ok" or r.get("first_token_s") is None:
            continue
        first = bisect.bisect_left(times, r["first_token_s"])
        end = bisect.bisect_left(times, r["end_s"])
        if first >= len(samples):
            continue
        final = final_tokens(r["prompt_tokens"], r["output_tokens"])
        for i in range(first, min(end, len(samples))):
            stored = r["prompt_tokens"] + samples[i]["step"] - samples[first]["step"]
            running[i].append((min(stored, final), final))
    return running


def vllm_block_check(samples: list[dict], running: list[list[tuple[int, int]]], block_size: int,
                     engine: dict) -> dict:
    """Blocks in use (measured) against sum(ceil(tokens / block_size)) of the rebuilt running requests."""
    rows, measured_bs, arith_bs = [], 0.0, 0.0
    previous = 0.0
    for sample, reqs in zip(samples, running):
        weight, previous = sample["t_s"] - previous, sample["t_s"]
        arith = sum(blocks_needed(t, block_size) for t, _ in reqs)
        measured = sample.get("blocks_used")
        if measured is None:
            continue
        measured_bs += measured * weight
        arith_bs += arith * weight
        off = abs(measured - arith) / measured if measured else (1.0 if arith else 0.0)
        rows.append({"step": sample["step"], "blocks_used": measured, "arithmetic_blocks": arith,
                     "running": sample.get("running"), "rebuilt_running": len(reqs),
                     "tokens_stored": sample.get("tokens_stored"), "rebuilt_tokens": sum(t for t, _ in reqs),
                     "tokens_stored_exact": sample.get("tokens_stored_exact"), "off": off})
    bad = [r for r in rows if r["off"] > TOLERANCE]
    return {
        "kind": "vLLM blocks",
        "formula": "sum over running requests of ceil(tokens / block_size)",
        "steps": len(rows),
        "agree": len(rows) - len(bad),
        "total": len(rows),
        "disagreeing_steps": bad[:20],
        "max_off": max((r["off"] for r in rows), default=0.0),
        "time_averaged_off": abs(measured_bs - arith_bs) / measured_bs if measured_bs else 0.0,
        "tokens_stored_match": all(r["tokens_stored"] == r["rebuilt_tokens"] for r in rows
                                   if r["tokens_stored"] is not None),
        "reasons": disagreement_reasons(bad, engine),
    }


def disagreement_reasons(bad: list[dict], engine: dict) -> list[str]:
    """Why measured blocks and arithmetic differ at the given steps (empty when none do)."""
    if not bad:
        return []
    reasons = []
    if any(r["running"] != r["rebuilt_running"] or r.get("tokens_stored_exact") is False for r in bad):
        reasons.append("the scheduler ran requests this process could not see (a chunked prefill not yet "
                       "producing a token, or a preempted request): their blocks are held but not in the arithmetic")
    if engine.get("async_scheduling"):
        reasons.append("async scheduling: the next step is scheduled, and its slots allocated, before this step's "
                       "output is seen")
    if any(r["arithmetic_blocks"] > r["blocks_used"] for r in bad):
        reasons.append("fewer blocks in use than the arithmetic needs: a request preempted (its blocks freed while "
                       "it waits to be recomputed) is rebuilt here as still running, or a step without a sample "
                       "shifted the rebuilt token counts")
    return reasons or ["not explained by the recorded figures"]


def vllm_breakdown(result: dict, samples: list[dict], records: list[dict]) -> dict:
    engine = result.get("engine") or {}
    block_size = engine["block_size"]
    samples = sorted(samples, key=lambda s: s["step"])
    running = vllm_running_per_sample(samples, records)
    steps, previous, usage_s = [], 0.0, 0.0
    for sample, reqs in zip(samples, running):
        weight, previous = sample["t_s"] - previous, sample["t_s"]
        steps.append((weight, paged_step(reqs, block_size, sample.get("blocks_used"))))
        usage_s += (sample.get("kv_usage") or 0.0) * weight
    duration = sum(w for w, _ in steps)
    return {"slot_seconds": integrate(steps), "duration_s": duration,
            "pool_occupancy_mean": usage_s / duration if duration else None,
            "checks": vllm_block_check(samples, running, block_size, engine), "external_note": None}


# ----------------------------------------------------------------------------- per run, and the JSON


def run_breakdown(run_dir: Path, run: dict) -> dict | None:
    """One backend/mode's breakdown entry, or None when the run has nothing to account (failed, no data)."""
    if run.get("status") != "ok":
        return None
    part = _part(run_dir, run)
    result = rec.read_json(part / "result.json")
    if run["backend"] == "vllm":
        samples = rec.read_jsonl(part / rec.KV_SAMPLES)
        if not samples or not (result.get("engine") or {}).get("block_size"):
            return None
        found = vllm_breakdown(result, samples, rec.read_jsonl(part / rec.RECORDS))
    elif (result.get("engine") or {}).get("batches"):
        found = hf_breakdown(result)
    else:
        return None
    slots: SlotBreakdown = found["slot_seconds"]
    total = slots.total()
    duration = found["duration_s"]
    bytes_per_token = (result.get("model") or {}).get("kv_bytes_per_token")
    return {
        "run": _label(run),
        "backend": run["backend"],
        "mode": run["mode"],
        "approach": APPROACH.get(_label(run), ""),
        "shares": slots.shares(),
        "internal_detail_shares": {d: (getattr(slots, d) / total if total else 0.0) for d in DETAILS},
        "external_fragmentation_measured": slots.external_fragmentation is not None,
        "external_note": found["external_note"],
        "slot_seconds": {c: getattr(slots, c) for c in CATEGORIES},
        "duration_s": duration,
        "mean_slots_held": total / duration if duration else None,
        "mean_kv_bytes_held": total / duration * bytes_per_token if duration and bytes_per_token else None,
        "kv_bytes_per_token": bytes_per_token,
        "pool_occupancy_mean": found.get("pool_occupancy_mean"),
        "weighting": "time: each step weighted by its duration",
        "checks": found["checks"],
    }


def kv_breakdown(run_dir: Path, runs: list[dict]) -> list[dict]:
    """One entry per backend/mode that ran: shares of the five categories (summing to 1), checks."""
    entries = (run_breakdown(Path(run_dir), run) for run in runs)
    return [e for e in entries if e is not None]


def write_breakdown_json(run_dir: Path, runs: list[dict]) -> Path:
    """kv_breakdown.json in the run folder: {"runs": kv_breakdown(...), "paper_fig2_token_states_pct": ...}."""
    path = Path(run_dir) / BREAKDOWN_JSON
    rec.write_json(path, {"runs": kv_breakdown(run_dir, runs),
                          "paper_fig2_token_states_pct": dict(PAPER_FIG2_TOKEN_STATES_PCT)})
    return path


# ----------------------------------------------------------------------------- markdown


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def breakdown_table(entries: list[dict]) -> str:
    rows = []
    for e in entries:
        s, d = e["shares"], e["internal_detail_shares"]
        detail = " / ".join(_pct(d[k]) for k in DETAILS)
        external = _pct(s["external_fragmentation"]) if e["external_fragmentation_measured"] else "n/m"
        rows.append([f"{e['run']} (this run)", _pct(s["token_states"]), _pct(s["reservation"]),
                     f"{_pct(s['internal_fragmentation'])} ({detail})", external, _pct(s["other"]),
                     f"{e['mean_slots_held']:,.0f}" if e["mean_slots_held"] is not None else "-",
                     _pct(e.get("pool_occupancy_mean"))])
    for name, pct in PAPER_FIG2_TOKEN_STATES_PCT:
        rows.append([f"{name} (paper, Fig. 2)", f"{pct:.1f}", "-", "-", "-", "-", "-", "-"])
    return tabulate(rows, headers=[
        "backend/mode", "token states %", "reservation %",
        "internal fragmentation % (padding / finished / unused tail / block tail)", "external fragmentation %",
        "other %", "mean KV slots held", "vLLM pool in use %"], tablefmt="github")


def check_lines(entries: list[dict]) -> list[str]:
    lines = []
    for e in entries:
        c = e["checks"]
        if c["kind"] == "vLLM blocks":
            text = (f"- {e['run']}: blocks in use (scheduler) vs {c['formula']}, rebuilt from the records: "
                    f"{c['agree']}/{c['total']} steps within 2%, largest difference {100 * c['max_off']:.1f}%, "
                    f"time-averaged {100 * c['time_averaged_off']:.2f}%; tokens stored "
                    f"{'match' if c['tokens_stored_match'] else 'do not match'} the backend's own count")
            if c["reasons"]:
                text += ". Where they differ by more than 2%: " + "; ".join(c["reasons"])
        else:
            text = (f"- {e['run']}: cache tensors' bytes vs {c['formula']}: {c['agree']}/{c['total']} batches "
                    f"within 2%")
            bad = [b for b in c["batches"] if not b["agrees"]]
            if bad:
                text += "; differ: " + ", ".join(
                    f"batch {b['batch']} {b['cache_bytes']} B vs {b['arithmetic_bytes']} B "
                    f"({b['slots_per_sequence']} vs {b['arithmetic_slots_per_sequence']} slots per sequence)" for b in bad)
            alloc = [b for b in c["batches"] if "allocator_peak_minus_weights_bytes" in b]
            if alloc:
                ratio = max(b["allocator_peak_minus_weights_bytes"] / b["cache_bytes"] for b in alloc if b["cache_bytes"])
                text += (f"; allocator peak minus weights is up to {ratio:.2f}x the cache bytes "
                         "(the rest: activations, logits, the dynamic cache's copies as it grows)")
        lines.append(text)
    return lines


def conditions_line(run_dir: Path, entries: list[dict]) -> str:
    manifest = rec.read_json(Path(run_dir) / rec.MANIFEST)
    engine = manifest["config"]["engine"]
    bpt = next((e["kv_bytes_per_token"] for e in entries if e.get("kv_bytes_per_token")), None)
    return (f"Conditions: model `{engine['model']}` ({bpt:,} KV bytes per token), workload `{engine['workload']}`, "
            f"hf batch size {engine['batch_size']}, vLLM block size {engine['block_size']}, device "
            f"{engine['device']}; outputs fixed (EOS ignored), prefix caching "
            f"{'on' if engine['enable_prefix_caching'] else 'off'}. The paper: OPT-13B on one A100, the "
            f"experiment of its section 6.2." if bpt else "")


def breakdown_section(run_dir: Path, runs: list[dict]) -> list[str]:
    """Markdown lines of the report's "KV-cache memory breakdown" section."""
    entries = kv_breakdown(run_dir, runs)
    lines = ["", "## KV-cache memory breakdown", ""]
    if not entries:
        return lines + ["No backend/mode recorded the cache figures this section needs.", ""]
    lines += [
        "Where the KV-cache memory each approach held went, in the form of the PagedAttention paper's Figure 2, "
        "averaged over the timed pass (each step weighted by its duration). Shares of the slots held, summing to "
        "100%: token states (the requests' own tokens), reservation (empty, to be filled by the request's own "
        "later tokens), internal fragmentation (never to hold the request's tokens: left padding, tokens a finished "
        "sequence keeps generating in its batch, a reservation's tail past the request's end, a last block's "
        "unreachable slots), external fragmentation (allocator reserved but unallocated, CUDA only; n/m: not "
        "measurable here) and other (held beyond what the arithmetic explains). vLLM's free pool blocks are held by "
        "no request and in no share: its pool is reserved up front whatever the load (last column). Definitions: "
        "lab/kv.py.",
        "",
        conditions_line(run_dir, entries),
        "",
        breakdown_table(entries),
        "",
        "Arithmetic against measurement:",
        "",
    ]
    return lines + check_lines(entries) + [""]
