"""The tutorial's conclusions, each checked against a run's measured numbers.

Each check returns an `Observation`; its verdict is one of "holds", "does not hold", "holds in part"
or "not supported by this run" (the run lacks what it needs).
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.online_metrics import last_offered_rates
from lab.online_settings import rate_text
from lab.records import BreakdownEntry, RunSummary
from lab.report.paging_observation import paging_inside_transformers
from lab.report.run_view import RunView

NOT_SUPPORTED = "not supported by this run"


@dataclass(frozen=True)
class Observation:
    claim: str
    verdict: str
    evidence: str


def _runs_by_label(runs: list[RunSummary]) -> dict[str, RunSummary]:
    return {r.label: r for r in runs if r.ok and r.metrics}


def _rate(run: RunSummary | None) -> float | None:
    return run.metric("output_tokens_per_s") if run else None


def vllm_faster(ok: dict[str, RunSummary]) -> Observation:
    claim = "vLLM generates faster than the traditional transformers path."
    vllm = _rate(ok.get("vllm/offline"))
    others = {k: _rate(v) for k, v in ok.items() if k.startswith("hf/")}
    if vllm is None or not others:
        return Observation(claim, NOT_SUPPORTED, "needs vllm/offline and an hf mode that succeeded")
    ratios = {k: vllm / v for k, v in others.items() if v}
    slower = [k for k, r in ratios.items() if r < 1]
    verdict = "holds" if not slower else ("does not hold" if len(slower) == len(ratios) else "holds in part")
    parts = ", ".join(f"{r:.2f}x {k}" for k, r in ratios.items())
    return Observation(claim, verdict, f"vLLM output tokens/s = {parts}")


def batching_helps(ok: dict[str, RunSummary]) -> Observation:
    claim = "Batching requests raises transformers' throughput over one request at a time."
    seq, batched = _rate(ok.get("hf/sequential")), _rate(ok.get("hf/batched"))
    if seq is None or batched is None:
        return Observation(claim, NOT_SUPPORTED, "needs hf/sequential and hf/batched")
    return Observation(
        claim,
        "holds" if batched > seq else "does not hold",
        f"hf/batched {batched:,.1f} vs hf/sequential {seq:,.1f} output tokens/s ({batched / seq:.2f}x)",
    )


def traditional_reserves_max_length(view: RunView, ok: dict[str, RunSummary]) -> Observation:
    """Compare the cache slots each hf batch held with what its tokens needed and with the context."""
    claim = "The traditional way allocates the maximum length for every sequence."
    rows = []
    for name in ("hf/batched", "hf/static-cache"):
        run = ok.get(name)
        if not run:
            continue
        batches = view.part(run).result.hf_batches
        slots = [b.cache_slots_per_sequence for b in batches if b.cache_slots_per_sequence]
        needed = [b.padded_prompt_tokens + b.generated_tokens for b in batches]
        if slots:
            rows.append((name, max(slots), max(needed), (run.model or {}).get("max_position_embeddings")))
    if not rows:
        return Observation(claim, NOT_SUPPORTED, "needs hf/batched or hf/static-cache with cache sizes")
    evidence = "; ".join(
        f"{name}: {slots:,} cache slots per sequence for at most {needed:,} tokens of the call (padded prompt + "
        f"longest output), model context {ctx:,}"
        for name, slots, needed, ctx in rows
    )
    reserves_context = any(slots >= ctx for _, slots, _, ctx in rows if ctx)
    verdict = "holds" if reserves_context else "does not hold"
    evidence += (
        ". transformers sizes its cache to the call (padded prompt + max_new_tokens), not to the model's "
        "maximum length; the waste it does have is padding to the longest prompt and output in the batch"
    )
    return Observation(claim, verdict, evidence)


def vllm_uses_less_memory(ok: dict[str, RunSummary]) -> Observation:
    claim = "vLLM uses less GPU memory than transformers."
    peaks = {
        k: (v.memory["whole_process"].get("nvml_tree_peak_mib"), v.memory["whole_process"].get("source"))
        for k, v in ok.items()
    }
    vllm = peaks.get("vllm/offline", (None, None))[0]
    hf = {k: p for k, (p, _) in peaks.items() if k.startswith("hf/") and p is not None}
    if vllm is None or not hf:
        return Observation(
            claim, NOT_SUPPORTED, "needs NVML per-process peaks (a GPU run with the collector) for vLLM and an hf mode"
        )
    less = [k for k, p in hf.items() if vllm < p]
    verdict = "holds" if len(less) == len(hf) else ("does not hold" if not less else "holds in part")
    parts = ", ".join(f"{k} {p:,.0f} MiB" for k, p in hf.items())
    return Observation(
        claim,
        verdict,
        f"NVML process-tree peak: vllm/offline {vllm:,.0f} MiB vs {parts}. vLLM reserves its KV pool "
        "up front, so its footprint is set by the pool size it is given, not by the workload",
    )


def capped_by_rates(ok: dict[str, RunSummary]) -> str | None:
    """Where an online sweep's offline figures are at a finite offered rate (which caps the throughput at
    it), why throughputs cannot be set side by side as the engines' speed; None where they can (offline,
    or every backend/mode's last rate inf)."""
    last = last_offered_rates(list(ok.values()))
    if all(rate_text(rate) == "inf" for rate in last.values()):
        return None
    rates = ", ".join(f"{label} {rate_text(rate)}" for label, rate in last.items())
    return (
        f"an online sweep whose figures here are at finite offered rates (req/s: {rates}), and a rate caps the "
        "throughput at it: compare the backends rate by rate, and by the rate each sustains, in Online serving"
    )


def comparable(found: Observation, why: str | None) -> Observation:
    """A claim on throughput, unsupported where the runs' throughputs are capped by offered rates (`why`:
    `capped_by_rates`)."""
    return Observation(found.claim, NOT_SUPPORTED, why) if why and found.verdict != NOT_SUPPORTED else found


def observations(view: RunView, breakdown: list[BreakdownEntry]) -> list[Observation]:
    """Each conclusion checked; `breakdown`: the run's KV breakdown entries (computed once, by the analyses)."""
    ok = _runs_by_label(view.runs)
    capped = capped_by_rates(ok)
    return [
        comparable(vllm_faster(ok), capped),
        comparable(batching_helps(ok), capped),
        traditional_reserves_max_length(view, ok),
        vllm_uses_less_memory(ok),
        comparable(Observation(*paging_inside_transformers(view, ok, breakdown)), capped),
    ]
