"""A sharing sweep's figures (lab.experiments.sharing): per point and backend/mode, the KV memory held,
the saving sharing bought (lab.accounting.sharing), the throughput, and the paper's figures beside them.

Read from each point's run folder through `RunView`; no engine is imported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from lab import paper
from lab import run_folder as rf
from lab.accounting.sharing import memory_saving, pool_use, requests_per_budget
from lab.report.run_view import RunPart, RunView

FORKING_RUN = "hf/continuous"  # transformers forks its n samples in its paged cache (hf_continuous_sharing)


@dataclass(frozen=True)
class SharingRow:
    """One backend/mode at one point."""

    point: str  # 'n=2', 'beam=4', 'n=1, prefix=80'
    kind: str  # 'parallel sampling', 'beam search', 'shared prefix' or 'baseline'
    run: str  # 'vllm/shared'
    status: str
    output_tokens: int | None  # every sequence's tokens: requests x sequences x L
    output_tokens_per_s: float | None
    mean_blocks: float | None = None  # paged pools: physical blocks in use, mean over the engine steps
    peak_blocks: int | None = None
    mean_kv_bytes: float | None = (
        None  # paged: mean_blocks x bytes per block; hf: mean over batches of the cache tensors
    )
    peak_kv_bytes: float | None = None
    saving: float | None = None  # vllm/shared: 1 - its mean blocks / vllm/offline's; hf/continuous: in_run_saving
    in_run_saving: float | None = None  # 1 - physical / table blocks within the run (paged pools)
    hit_rate: float | None = None  # vLLM prefix cache: tokens found / looked up
    requests_per_budget: float | None = None  # requests the KV budget holds at this run's bytes per request
    kv_budget_bytes: float | None = None  # vLLM: its pool's usable blocks x bytes per block (hf is set beside it)
    kv_bytes_per_request: float | None = None  # hf: the largest batch's cache bytes / its rows' requests
    gain_over_unshared: float | None = None  # vllm/shared throughput / vllm/offline's

    def to_dict(self) -> dict:
        return asdict(self)


def point_kind(point: dict) -> str:
    if point["beam_width"] > 1:
        return "beam search"
    if point["n"] > 1:
        return "parallel sampling"
    return "shared prefix" if point["shared_prefix_tokens"] else "baseline"


def sharing_rows(sweep_dir: Path) -> list[SharingRow]:
    """Every backend/mode of every point of the sweep, in order."""
    manifest = rf.read_json(rf.RunFolder(Path(sweep_dir)).manifest)
    rows: list[SharingRow] = []
    for entry in manifest["points"]:
        view = RunView(rf.RunFolder(Path(sweep_dir)).points / entry["run"])
        rows.extend(point_rows(view, entry["point"]))
    return rows


def point_rows(view: RunView, point: dict) -> list[SharingRow]:
    sequences = max(point["n"], point["beam_width"])
    rows = []
    for run in view.runs:
        part = view.part(run) if run.ok else None
        row = SharingRow(
            point=point["label"],
            kind=point_kind(point),
            run=run.label,
            status=run.status,
            output_tokens=run.metric("output_tokens"),
            output_tokens_per_s=run.metric("output_tokens_per_s"),
        )
        if part is not None and part.result is not None:
            row = _with_memory(row, part, sequences)
        rows.append(row)
    return _with_comparisons(rows)


def _with_memory(row: SharingRow, part: RunPart, sequences: int) -> SharingRow:
    engine = part.result.engine or {}
    if part.result.backend == "vllm" or part.result.label == FORKING_RUN:
        use = pool_use(part.kv_samples, sequences)
        if use is None:
            return row
        per_block = engine.get("kv_bytes_per_block")
        if use.mean_blocks is None:
            return SharingRow(**dict(row.to_dict(), hit_rate=use.hit_rate))
        return SharingRow(
            **dict(
                row.to_dict(),
                mean_blocks=use.mean_blocks,
                peak_blocks=use.peak_blocks,
                mean_kv_bytes=use.mean_blocks * per_block if per_block else None,
                peak_kv_bytes=use.peak_blocks * per_block if per_block else None,
                in_run_saving=use.in_run_saving,
                # hf/continuous: no run without sharing beside it; its tables are the blocks without
                saving=use.in_run_saving if part.result.label == FORKING_RUN else None,
                hit_rate=use.hit_rate,
                requests_per_budget=use.requests_per_budget,
                kv_budget_bytes=use.usable_blocks * per_block if per_block and use.usable_blocks else None,
            )
        )
    batches = [b for b in part.result.hf_batches if b.cache_bytes]
    if not batches:
        return row
    return SharingRow(
        **dict(
            row.to_dict(),
            mean_kv_bytes=sum(b.cache_bytes for b in batches) / len(batches),
            peak_kv_bytes=max(b.cache_bytes for b in batches),
            saving=0.0,  # transformers expands the cache per sequence: nothing is shared
            kv_bytes_per_request=max(b.cache_bytes / (b.batch_size + b.padded_rows) for b in batches),
        )
    )


def _with_comparisons(rows: list[SharingRow]) -> list[SharingRow]:
    """vllm/shared against vllm/offline at the same point; hf's requests in vLLM's pool bytes (the same budget)."""
    by_run = {r.run: r for r in rows}
    base, shared = by_run.get("vllm/offline"), by_run.get("vllm/shared")
    out = []
    for row in rows:
        extra = {}
        if row is shared and base is not None and base.mean_blocks and shared.mean_blocks is not None:
            extra["saving"] = memory_saving(shared.mean_blocks, base.mean_blocks)
        if row is shared and base is not None and base.output_tokens_per_s and shared.output_tokens_per_s:
            extra["gain_over_unshared"] = shared.output_tokens_per_s / base.output_tokens_per_s
        if row.kv_bytes_per_request and base is not None and base.kv_budget_bytes:
            extra["requests_per_budget"] = requests_per_budget(base.kv_budget_bytes, row.kv_bytes_per_request, 1)
        out.append(SharingRow(**dict(row.to_dict(), **extra)) if extra else row)
    return out


def observation(kind: str, rows: list[SharingRow]) -> str | None:
    """One sentence for one point: the measured saving or gain against the paper's range, and why not."""
    shared = next((r for r in rows if r.run == "vllm/shared"), None)
    if shared is not None and kind == "beam search" and shared.mean_blocks is None:
        hit = f"{shared.hit_rate:.0%}" if shared.hit_rate is not None else "unknown"
        return (
            f"{shared.point}: not comparable with Figure 15: vLLM's beam search runs on top of its engine, one "
            "one-token request per beam per output token, whose blocks are freed within the step, so no block is "
            f"held when the scheduler reports; the beams' shared history shows as the prefix-cache hit rate ({hit})."
        )
    if shared is None or shared.saving is None:
        return None
    point, saving = shared.point, shared.saving * 100
    if kind == "baseline":
        return _baseline_observation(shared)
    if kind in paper.FIG15_SAVING_PCT:
        ranges = paper.FIG15_SAVING_PCT[kind]
        low, high = min(r[0] for r in ranges.values()), max(r[1] for r in ranges.values())
        span = ", ".join(f"{w} {lo:g}-{hi:g}%" for w, (lo, hi) in ranges.items())
        if low <= saving <= high:
            return (
                f"{point}: vLLM's sharing saved {saving:.1f}% of the blocks, within the paper's {kind} range ({span})."
            )
        return (
            f"{point}: vLLM's sharing saved {saving:.1f}% of the blocks, outside the paper's {kind} range ({span}). "
            "The saving is the prompt's full blocks held once instead of once per sequence, so it follows this "
            "workload's prompt/output lengths and the block size (a prompt's partial last block is never shared)"
            + (
                "; vLLM's beam search runs on top of its engine (one-token requests per step, shared only "
                "through the prefix cache), unlike the paper's in-engine beam search"
                if kind == "beam search"
                else ""
            )
            + "."
        )
    if kind == "shared prefix" and shared.gain_over_unshared is not None:
        gains = ", ".join(f"{k} {v:g}x" for k, v in paper.FIG16_THROUGHPUT_GAIN.items())
        hit = f"{shared.hit_rate:.0%}" if shared.hit_rate is not None else "unknown"
        return (
            f"{point}: sharing the prefix saved {saving:.1f}% of the blocks (hit rate {hit}) and changed vLLM's "
            f"throughput {shared.gain_over_unshared:.2f}x against the same engine without sharing; the paper's "
            f"{gains} compare vLLM with Orca (Oracle), a different baseline, on LLaMA-13B."
        )
    return None


def _baseline_observation(shared: SharingRow) -> str:
    """The point with nothing to share (n=1, one beam, no common prefix): what sharing on changed anyway,
    the floor under the other points' savings and throughput ratios."""
    hit = f"{shared.hit_rate:.0%}" if shared.hit_rate is not None else "unknown"
    gain = (
        f" and ran at {shared.gain_over_unshared:.2f}x the throughput of the same engine without it"
        if shared.gain_over_unshared is not None
        else ""
    )
    return (
        f"{shared.point}: the baseline, one sequence per request and nothing to share: vLLM with its prefix cache "
        f"on held {shared.saving * 100:.1f}% fewer blocks (hit rate {hit}){gain}; what sharing cannot explain, "
        "the floor of this sweep's savings and throughput ratios."
    )


def forking_observation(kind: str, rows: list[SharingRow]) -> str | None:
    """hf/continuous's saving at one point (its forks' tables against its pool), against the paper's range."""
    forked = next((r for r in rows if r.run == FORKING_RUN and r.saving is not None), None)
    if forked is None or kind == "baseline":
        return None
    saving = forked.saving * 100
    line = (
        f"{forked.point}: transformers' own paging (hf/continuous, block sharing on) held {saving:.1f}% fewer "
        "blocks than its sequences' block tables list, i.e. than the same sequences with every block copied, "
        "under the same schedule"
    )
    ranges = paper.FIG15_SAVING_PCT.get(kind)
    if not ranges:
        return line + "."
    low, high = min(r[0] for r in ranges.values()), max(r[1] for r in ranges.values())
    where = "within" if low <= saving <= high else "outside"
    return line + f"; {where} the paper's {kind} range ({low:g}-{high:g}%)."
