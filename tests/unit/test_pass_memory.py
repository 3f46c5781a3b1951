"""Memory of each timed pass and each offered rate (issue 16), on hand-made run files: the KV samples,
the collector's samples and the allocator's figures of each pass kept apart, the rates' peaks, older runs
(their last pass only), and the report's table, note and plot drawn from them. No engine involved."""

from __future__ import annotations

import dataclasses

import pytest

from lab.accounting.pass_memory import pass_memory, rate_memory
from lab.pass_records import TimedPass, last_pass_samples, samples_by_pass
from lab.records import BackendResult, KvSample, RequestRecord, RunSummary
from lab.report.online_kv_plot import online_kv_figure
from lab.report.online_memory_markdown import breakdown_rate_note, rate_memory_table
from lab.report.run_view import RunPart

MIB = 2**20
BLOCK_BYTES = 2 * MIB
ENGINE = {"num_blocks": 101, "usable_blocks": 100, "kv_pool_bytes": 101 * BLOCK_BYTES}
# Three timed passes (epoch seconds): 2 req/s twice (--repeats 2), then inf.
PHASES = [
    {"phase": "load", "start": 0.0, "end": 5.0},
    {"phase": "warmup", "start": 5.0, "end": 10.0},
    {"phase": "repeat", "start": 10.0, "end": 12.0},
    {"phase": "repeat", "start": 12.0, "end": 13.0},
    {"phase": "generate", "start": 13.0, "end": 14.0},
]
RATES = {0: 2.0, 1: 2.0, 2: None}


def gib_allocator(peak_gib: float) -> dict:
    return {"source": "torch.cuda", "peak_allocated_bytes": int(peak_gib * 2**30), "peak_reserved_bytes": 2**32}


def records() -> list[RequestRecord]:
    return [
        RequestRecord(i, 10, 4, 0.5, 1.0, pass_index=index, request_rate=rate)
        for index, rate in RATES.items()
        for i in range(2)
    ]


def sample(t_s: float, blocks: int, tokens: int | None, index: int | None = None) -> KvSample:
    rate = RATES.get(index) if index is not None else None
    return KvSample(t_s, 0, blocks / 100, blocks, 101, tokens_stored=tokens, usable_blocks=100, pass_index=index,
                    request_rate=rate)  # fmt: skip


KV = [sample(0.1, 3, 40, 0), sample(0.2, 5, 70, 0), sample(0.1, 8, None, 1), sample(0.3, 2, 20, 1)]
KV += [sample(0.1, 20, 300, 2), sample(0.2, 0, 0, 2)]
TIMELINE = [
    {"t": 7.0, "source": "nvml", "tree_gpu_mib": 999.0, "tree_rss_mib": 50.0},  # the warm-up: no pass's
    {"t": 11.0, "source": "nvml", "tree_gpu_mib": 100.0, "tree_rss_mib": 60.0},
    {"t": 11.5, "source": "nvml", "tree_gpu_mib": 150.0, "tree_rss_mib": 55.0},
    {"t": 12.5, "source": "nvml", "tree_gpu_mib": 120.0, "tree_rss_mib": 70.0},
    {"t": 13.5, "source": "nvml", "tree_gpu_mib": 300.0, "tree_rss_mib": 65.0},
]


def result(passes_memory: list[dict | None], last_memory: dict | None = None) -> BackendResult:
    passes = [TimedPass(i, 1.0, memory=m).to_dict() for i, m in enumerate(passes_memory)]
    return BackendResult("hf", "continuous", "ok", phases=PHASES, passes=passes, memory=last_memory, engine=ENGINE)


def test_each_pass_has_its_own_kv_collector_and_allocator_peaks():
    run = result([gib_allocator(1.0), gib_allocator(1.5), gib_allocator(3.0)])
    passes = pass_memory(run, records(), KV, TIMELINE)
    assert [(p["pass_index"], p["request_rate"], p["seconds"]) for p in passes] == [
        (0, 2.0, 2.0),
        (1, 2.0, 1.0),
        (2, "inf", 1.0),
    ]
    assert [p["kv_samples"] for p in passes] == [2, 2, 2]
    assert [p["kv_peak_blocks_used"] for p in passes] == [5, 8, 20]
    assert [p["kv_peak_tokens_stored"] for p in passes] == [70, 20, 300]  # an unknown count is left out
    assert [p["kv_peak_occupancy"] for p in passes] == [0.05, 0.08, 0.2]
    assert [p["kv_peak_mib"] for p in passes] == [10.0, 16.0, 40.0]  # blocks x 2 MiB
    assert [p["kv_usable_blocks"] for p in passes] == [100, 100, 100]
    # The warm-up's 999 MiB belongs to no pass; each pass has the samples inside its phase only.
    assert [p["collector_samples"] for p in passes] == [2, 1, 1]
    assert [p["nvml_tree_peak_mib"] for p in passes] == [150.0, 120.0, 300.0]
    assert [p["rss_tree_peak_mib"] for p in passes] == [60.0, 70.0, 65.0]
    assert [p["allocator_peak_allocated_bytes"] for p in passes] == [2**30, int(1.5 * 2**30), 3 * 2**30]
    assert {p["collector_source"] for p in passes} == {"nvml"} and {p["allocator_source"] for p in passes} == {
        "torch.cuda"
    }


def test_a_rate_takes_the_largest_peak_over_its_passes_and_the_sum_of_their_samples():
    rates = rate_memory(pass_memory(result([gib_allocator(1.0), gib_allocator(1.5), None]), records(), KV, TIMELINE))
    assert [(r["request_rate"], r["passes"]) for r in rates] == [(2.0, 2), ("inf", 1)]
    two = rates[0]
    assert (two["kv_samples"], two["kv_peak_blocks_used"], two["kv_peak_tokens_stored"]) == (4, 8, 70)
    assert (two["collector_samples"], two["nvml_tree_peak_mib"], two["rss_tree_peak_mib"]) == (3, 150.0, 70.0)
    assert two["allocator_peak_allocated_bytes"] == int(1.5 * 2**30) and two["allocator_source"] == "torch.cuda"
    assert rates[1]["allocator_peak_allocated_bytes"] is None and rates[1]["allocator_source"] is None


def test_an_older_run_has_kv_and_allocator_figures_for_its_last_pass_only():
    kept = [KvSample(0.1, 0, 0.2, 20, 101, tokens_stored=300), KvSample(0.2, 1, 0.0, 0, 101, tokens_stored=0)]
    older = result([None, None, None], last_memory=gib_allocator(3.0))  # passes written without `memory`
    passes = pass_memory(older, records(), kept, TIMELINE)
    assert [p["kv_samples"] for p in passes] == [0, 0, 2]
    assert [p["kv_peak_blocks_used"] for p in passes] == [None, None, 20]
    assert [p["allocator_peak_allocated_bytes"] for p in passes] == [None, None, 3 * 2**30]
    assert [p["nvml_tree_peak_mib"] for p in passes] == [150.0, 120.0, 300.0]  # the phases were always kept
    assert passes[2]["kv_usable_blocks"] is None  # older samples had no usable_blocks


def test_the_last_pass_samples_are_the_highest_pass_index_or_every_untagged_one():
    assert last_pass_samples(KV) == KV[4:]
    older = [KvSample(0.1, 0), KvSample(0.2, 1)]
    assert last_pass_samples(older) == older
    assert {k: len(v) for k, v in samples_by_pass(older, 7).items()} == {7: 2}
    assert {k: len(v) for k, v in samples_by_pass(KV, 2).items()} == {0: 2, 1: 2, 2: 2}


def test_kv_samples_round_trip_with_their_pass_and_rate():
    stored = sample(0.1, 3, 40, 0).to_dict()
    assert (stored["pass_index"], stored["request_rate"]) == (0, 2.0)
    assert KvSample.from_dict(stored) == sample(0.1, 3, 40, 0)
    assert "pass_index" not in KvSample(0.1, 0).to_dict()  # untagged samples stay as older runs wrote them
    assert TimedPass.from_dict(TimedPass(1, 2.0, memory={"source": "torch.cuda"}).to_dict()).memory == {
        "source": "torch.cuda"
    }


def untagged(samples: list[KvSample]) -> list[KvSample]:
    """The samples as a run written before every pass kept its own would hold them."""
    return [dataclasses.replace(s, pass_index=None, request_rate=None) for s in samples]


def summary(label: str, rates: list) -> RunSummary:
    backend, mode = label.split("/")
    return RunSummary(backend, mode, "ok", sweep=[{"request_rate": r} for r in rates])


def test_the_memory_table_gives_each_rate_with_each_source_and_flags_an_older_run():
    memory = {
        "hf/continuous": rate_memory(pass_memory(result([None] * 3), records(), KV, TIMELINE)),
        "vllm/offline": rate_memory(pass_memory(result([None] * 3), records(), untagged(KV[4:6]), TIMELINE)),
    }
    for entry in memory["vllm/offline"]:  # as an older run: the last rate's samples only, untagged
        assert entry["kv_samples"] == (2 if entry["request_rate"] == "inf" else 0)
    lines = rate_memory_table([summary("hf/continuous", [2.0, "inf"]), summary("vllm/offline", [2.0, "inf"])], memory)
    table = "\n".join(lines)
    for header in ("(engine)", "NVML process tree peak MiB", "psutil RSS tree peak MiB", "(torch)"):
        assert header in table
    rows = [line for line in table.splitlines() if line.startswith("| hf/continuous")]
    assert [row.split("|")[2].strip() for row in rows] == ["2", "inf"]
    assert "| 8 " in rows[0] and "| 150 " in rows[0]  # peak blocks at 2 req/s; NVML peak MiB
    assert lines[-1].startswith("vllm/offline: KV samples of the last pass only")
    assert rate_memory_table([summary("hf/batched", [2.0])], {}) == []


def test_the_breakdown_note_names_each_last_rate_and_warns_when_they_differ():
    same = breakdown_rate_note([summary("vllm/offline", [2.0, "inf"]), summary("hf/continuous", [2.0, "inf"])])
    assert "vllm/offline: inf req/s; hf/continuous: inf req/s" in same[0] and "not like for like" not in same[0]
    differ = breakdown_rate_note([summary("vllm/offline", [1.0, 4.0]), summary("hf/continuous", [1.0])])
    assert "vllm/offline: 4 req/s; hf/continuous: 1 req/s" in differ[0] and "not like for like" in differ[0]
    assert breakdown_rate_note([RunSummary("hf", "batched", "ok")]) == []


def test_the_kv_timeline_draws_a_line_per_pass_in_a_panel_per_paged_backend():
    pytest.importorskip("matplotlib", reason="the report's plots need matplotlib")
    paged = RunPart(summary("hf/continuous", [2.0, "inf"]), result([None] * 3), [], KV[4:], records(), KV)
    generate_only = RunPart(summary("hf/batched", [2.0, "inf"]), result([None] * 3), [], [], records(), [])
    fig = online_kv_figure([paged, generate_only])
    (ax,) = [a for a in fig.axes if a.get_title(loc="left")]  # one panel: hf/batched keeps no pool
    lines = ax.get_lines()
    assert len(lines) == 3  # one per pass: 2 req/s twice (one colour, one legend entry), inf
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["2 req/s", "inf (offline)"]
    assert list(lines[0].get_xdata()) == [0.1, 0.2]  # seconds since that pass's own t=0
    assert list(lines[0].get_ydata()) == [6.0, 10.0]  # blocks x 2 MiB
    assert online_kv_figure([generate_only]) is None


def test_a_pass_without_a_collector_sample_has_no_process_peak_and_the_table_says_why():
    inside_first_pass_only = TIMELINE[:3]
    memory = {"hf/continuous": rate_memory(pass_memory(result([None] * 3), records(), KV, inside_first_pass_only))}
    assert [(p["collector_samples"], p["nvml_tree_peak_mib"]) for p in memory["hf/continuous"]] == [
        (2, 150.0),
        (0, None),
    ]
    assert [p["seconds"] for p in memory["hf/continuous"]] == [3.0, 1.0]
    lines = rate_memory_table([summary("hf/continuous", [2.0, "inf"])], memory)
    assert lines[-1].startswith(
        "No collector sample fell inside the timed pass of hf/continuous at inf req/s (1.000 s)"
    )
