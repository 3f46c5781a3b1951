"""report.md's lines about hf/continuous: the settings it ran with (as transformers resolved them) and
its block tables against the arithmetic."""

from __future__ import annotations

from lab.accounting.breakdown import TOLERANCE
from lab.records import BreakdownEntry, RunSummary


def _switch(value: bool | None) -> str:
    return "auto" if value is None else ("on" if value else "off")


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"


def describe(engine: dict) -> str:
    """One line of what an hf/continuous run used, from its engine info (the resolved values)."""
    cb = engine.get("continuous_batching_config") or {}
    graphs = cb.get("use_cuda_graph")
    if graphs is None:
        graphs_text = "-"
    elif isinstance(graphs, (list, tuple)):
        graphs_text = "/".join("on" if g else "off" for g in graphs)
    else:
        graphs_text = _switch(graphs)
    return (
        f"attention `{engine.get('attn_implementation', '-')}`, block size {engine.get('block_size', '-')}, "
        f"pool {engine.get('num_blocks', '-')} blocks ({_size(engine.get('kv_pool_bytes'))}, "
        f"{engine.get('kv_pool_rule', '-')}), "
        f"max_batch_tokens {cb.get('max_batch_tokens', '-')} ({engine.get('max_batch_tokens_rule', '-')}), "
        f"CUDA graphs (varlen/decode) {graphs_text}, compile level {cb.get('default_compile_level', '-')}, "
        f"async batching {_switch(cb.get('use_async_batching'))}, block sharing "
        f"{'on' if cb.get('allow_block_sharing') else 'off'}"
    )


def settings_lines(runs: list[RunSummary]) -> list[str]:
    """The conditions' line for each hf/continuous run that reported its engine."""
    return [f"- hf/continuous: {describe(r.engine)}" for r in runs if r.label == "hf/continuous" and r.engine]


def check_line(entry: BreakdownEntry) -> str:
    """The breakdown's check line: block tables read from the engine against ceil(tokens / block_size)."""
    c = entry.checks["tables"]
    text = (
        f"- {entry.run}: block tables read from transformers' paged cache vs {c['formula'].split(',')[0]}: "
        f"{c['agree']}/{c['total']} steps within {TOLERANCE:.0%}, largest difference {100 * c['max_off']:.1f}%; "
        f"the pool's count of used blocks {'equals' if c['pool_matches_tables'] else 'differs from'} the sum of "
        "the tables"
    )
    if c["reasons"]:
        text += f". Where they differ by more than {TOLERANCE:.0%}: " + "; ".join(c["reasons"])
    return text
