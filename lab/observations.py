"""The tutorial's conclusions, each checked against a run's measured numbers.

Each check returns {"claim", "verdict", "evidence"}; the verdict is one of "holds",
"does not hold", "holds in part" or "not supported by this run" (the run lacks what it needs).
"""

from __future__ import annotations

from pathlib import Path

from lab import records as rec

NOT_SUPPORTED = "not supported by this run"


def _runs_by_label(runs: list[dict]) -> dict[str, dict]:
    return {f"{r['backend']}/{r['mode']}": r for r in runs if r["status"] == "ok" and r.get("metrics")}


def _rate(run: dict | None) -> float | None:
    return (run or {}).get("metrics", {}).get("output_tokens_per_s")


def vllm_faster(ok: dict[str, dict]) -> dict:
    claim = "vLLM generates faster than the traditional transformers path."
    vllm = _rate(ok.get("vllm/offline"))
    others = {k: _rate(v) for k, v in ok.items() if k.startswith("hf/")}
    if vllm is None or not others:
        return {"claim": claim, "verdict": NOT_SUPPORTED, "evidence": "needs vllm/offline and an hf mode that succeeded"}
    ratios = {k: vllm / v for k, v in others.items() if v}
    slower = [k for k, r in ratios.items() if r < 1]
    verdict = "holds" if not slower else ("does not hold" if len(slower) == len(ratios) else "holds in part")
    parts = ", ".join(f"{r:.2f}x {k}" for k, r in ratios.items())
    return {"claim": claim, "verdict": verdict, "evidence": f"vLLM output tokens/s = {parts}"}


def batching_helps(ok: dict[str, dict]) -> dict:
    claim = "Batching requests raises transformers' throughput over one request at a time."
    seq, batched = _rate(ok.get("hf/sequential")), _rate(ok.get("hf/batched"))
    if seq is None or batched is None:
        return {"claim": claim, "verdict": NOT_SUPPORTED, "evidence": "needs hf/sequential and hf/batched"}
    return {"claim": claim, "verdict": "holds" if batched > seq else "does not hold",
            "evidence": f"hf/batched {batched:,.1f} vs hf/sequential {seq:,.1f} output tokens/s ({batched / seq:.2f}x)"}


def traditional_reserves_max_length(run_dir: Path, ok: dict[str, dict]) -> dict:
    """Compare the cache slots each hf batch held with what its tokens needed and with the context."""
    claim = "The traditional way allocates the maximum length for every sequence."
    rows = []
    for name in ("hf/batched", "hf/static-cache"):
        run = ok.get(name)
        if not run:
            continue
        result = rec.read_json(run_dir / rec.RUNS / name.replace("/", "-") / "result.json")
        batches = (result.get("engine") or {}).get("batches") or []
        slots = [b.get("cache_slots_per_sequence") for b in batches if b.get("cache_slots_per_sequence")]
        needed = [b["padded_prompt_tokens"] + b["generated_tokens"] for b in batches]
        if slots:
            rows.append((name, max(slots), max(needed), (run.get("model") or {}).get("max_position_embeddings")))
    if not rows:
        return {"claim": claim, "verdict": NOT_SUPPORTED, "evidence": "needs hf/batched or hf/static-cache with cache sizes"}
    evidence = "; ".join(
        f"{name}: {slots:,} cache slots per sequence for at most {needed:,} tokens of the call (padded prompt + "
        f"longest output), model context {ctx:,}" for name, slots, needed, ctx in rows)
    reserves_context = any(slots >= ctx for _, slots, _, ctx in rows if ctx)
    verdict = "holds" if reserves_context else "does not hold"
    evidence += (". transformers sizes its cache to the call (padded prompt + max_new_tokens), not to the model's "
                 "maximum length; the waste it does have is padding to the longest prompt and output in the batch")
    return {"claim": claim, "verdict": verdict, "evidence": evidence}


def vllm_uses_less_memory(ok: dict[str, dict]) -> dict:
    claim = "vLLM uses less GPU memory than transformers."
    peaks = {k: (v["memory"]["whole_process"].get("nvml_tree_peak_mib"), v["memory"]["whole_process"].get("source"))
             for k, v in ok.items()}
    vllm = peaks.get("vllm/offline", (None, None))[0]
    hf = {k: p for k, (p, _) in peaks.items() if k.startswith("hf/") and p is not None}
    if vllm is None or not hf:
        return {"claim": claim, "verdict": NOT_SUPPORTED,
                "evidence": "needs NVML per-process peaks (a GPU run with the collector) for vLLM and an hf mode"}
    less = [k for k, p in hf.items() if vllm < p]
    verdict = "holds" if len(less) == len(hf) else ("does not hold" if not less else "holds in part")
    parts = ", ".join(f"{k} {p:,.0f} MiB" for k, p in hf.items())
    return {"claim": claim, "verdict": verdict,
            "evidence": f"NVML process-tree peak: vllm/offline {vllm:,.0f} MiB vs {parts}. vLLM reserves its KV pool "
                        "up front, so its footprint is set by the pool size it is given, not by the workload"}


def observations(run_dir: Path, runs: list[dict]) -> list[dict]:
    ok = _runs_by_label(runs)
    return [vllm_faster(ok), batching_helps(ok), traditional_reserves_max_length(run_dir, ok), vllm_uses_less_memory(ok)]
