"""report.md's section for `lab experiment --preset tutorial`: the tutorial's own figures (lab.tutorial)
beside this run's, each labelled with the machine and vLLM version it comes from."""

from __future__ import annotations

from tabulate import tabulate

from lab import tutorial
from lab.records import RunSummary
from lab.report.format import fmt, mib, version
from lab.report.run_view import RunView


def tutorial_section(view: RunView) -> list[str]:
    """The section, for a run of the tutorial preset; none otherwise."""
    if view.manifest.get("config", {}).get("preset") != "tutorial":
        return []
    by_label = {r.label: r for r in view.runs}
    vllm, hf = by_label.get("vllm/offline"), by_label.get("hf/sequential")
    gpus = ((view.manifest.get("host") or {}).get("nvml") or {}).get("gpus") or []
    machine = ", ".join(str(g.get("name")) for g in gpus) or "no GPU (CPU)"
    env = next((e for e in (view.manifest.get("backend_environments") or {}).values() if e), {}) or {}
    engine = view.engine
    rows = [
        ["machine", tutorial.MACHINE, machine],
        ["vLLM", tutorial.VLLM_VERSION, version(env.get("vllm"))],
        [
            "model",
            f"{tutorial.MODEL}, max_seq_len {tutorial.MAX_SEQ_LEN}",
            f"`{engine.model}` (random weights), max_model_len {fmt(engine.max_model_len)}",
        ],
        [
            "workload",
            f"its {tutorial.PROMPTS} prompts, {tutorial.NEW_TOKENS} new tokens each",
            f"`{engine.workload}`, {fmt(engine.output_tokens)} new tokens each (EOS ignored)",
        ],
        [
            "vLLM output tokens/s",
            f"{tutorial.VLLM_OUTPUT_TOKENS_PER_S:,.2f} (its progress bar's estimate)",
            _rate(vllm),
        ],
        ["hf/sequential output tokens/s", "-", _rate(hf)],
        ["vLLM memory", f'"{tutorial.VLLM_MEMORY_PRINTED}" (as printed)', _memory(vllm)],
    ]
    return [
        "## The tutorial's own figures",
        "",
        "The tutorial this lab grew from, as its log printed them (lab/tutorial.py), beside this run of "
        "`--preset tutorial`. **Another machine, another vLLM version and the hub's trained weights**: a reference, "
        "not a like-for-like comparison.",
        "",
        tabulate(rows, headers=["", "the tutorial (its log)", "this run"], tablefmt="github", disable_numparse=True),
        "",
        f'"{tutorial.VLLM_MEMORY_PRINTED}": vLLM\'s engine runs in a child process (its engine core), so an '
        "allocator read in the calling process holds none of its memory; this run reads NVML for the whole process "
        "tree, and vLLM's KV pool is reserved up front whatever the load.",
    ]


def _rate(run: RunSummary | None) -> str:
    if run is None or not run.ok:
        return "- (not run or failed)"
    passes = (run.metrics or {}).get("passes_counted") or 1
    counted = "1 timed pass" if passes == 1 else f"the median of {passes} timed passes"
    return f"{fmt(run.metric('output_tokens_per_s'), 2)} ({counted})"


def _memory(run: RunSummary | None) -> str:
    if run is None or not run.ok:
        return "-"
    whole = run.memory.get("whole_process") or {}
    nvml = whole.get("nvml_tree_peak_mib")
    pool = mib((run.engine or {}).get("kv_pool_bytes"))
    measured = (
        f"NVML process tree peak {fmt(nvml, 0)} MiB"
        if nvml
        else f"RSS tree peak {fmt(whole.get('rss_tree_peak_mib'), 0)} MiB (psutil)"
    )
    return f"{measured}; KV pool {fmt(pool, 0)} MiB (engine)"
