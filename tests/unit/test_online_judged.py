"""Whether a sweep's point could show saturation (`lab.online_judged`): the concurrency limit each backend
reports, the judged / not-judged decision, the report's cells and footnote, and older points without
the new fields. Pure logic on records and points written by hand."""

from __future__ import annotations

from lab.config import EngineSettings
from lab.online_judged import (
    concurrency_limit,
    judge_points,
    judgement,
    peaks_by_rate,
    saturated_text,
    short_trace_warning,
    waited_for_a_batch,
)
from lab.online_metrics import sweep_metrics
from lab.online_settings import OnlineSettings
from lab.records import KvSample, RequestRecord, RunSummary
from lab.report.online_markdown import points_table
from lab.report.sustained import Sustained, short_trace_note
from lab.report.sweep_compare import sweep_comparison

VLLM_256 = {"requests": 256, "source": "vLLM scheduler_config.max_num_seqs"}


def rec(i, arrival, begin, end, batch=None, rate=4.0):
    return RequestRecord(i, 2, 3, begin + 0.01, end, arrival_s=arrival, scheduled_s=begin, batch=batch,
                         pass_index=0, request_rate=rate)  # fmt: skip


def point(**fields):
    return {"offered_rate_per_s": 128.0, "request_rate": 128.0, "requests": 8, "saturated": False} | fields


def test_each_backend_reports_the_limit_that_applied_and_max_concurrency_lowers_it():
    assert concurrency_limit("vllm", "offline", {"max_num_seqs": 1024}, None) == {
        "requests": 1024, "source": "vLLM scheduler_config.max_num_seqs"}  # fmt: skip
    assert concurrency_limit("hf", "batched", {"batch_size": 8}, None)["requests"] == 8
    assert concurrency_limit("hf", "static-cache", {"batch_size": 4}, None)["requests"] == 4
    assert concurrency_limit("hf", "sequential", {"batch_size": 1}, None)["requests"] == 1
    continuous = {"continuous_batching_config": {"max_requests_per_batch": 32}}
    assert concurrency_limit("hf", "continuous", continuous, None)["requests"] == 32
    assert concurrency_limit("hf", "continuous", {}, None) is None  # not readable: unknown
    assert concurrency_limit("vllm", "offline", {"max_num_seqs": 1024}, 16) == {
        "requests": 16, "source": "--max-concurrency"}  # fmt: skip
    assert concurrency_limit("hf", "batched", {"batch_size": 8}, 64)["requests"] == 8  # the lower one applies


def test_a_point_is_not_judged_only_where_every_request_fit_at_once_and_nothing_waited():
    nothing = {"kv_peak_occupancy": 0.029, "peak_waiting": 0}
    assert judgement(point(), VLLM_256, nothing, None) == (
        False, "all 8 requests fit one batch of 256: no queue can form")  # fmt: skip
    assert judgement(point(), VLLM_256, None, None)[0] is False  # KV and waiting unknown: the limit decides
    assert judgement(point(requests=257), VLLM_256, nothing, None) == (True, None)  # more than fit at once
    assert judgement(point(), VLLM_256, {"kv_peak_occupancy": 1.0, "peak_waiting": 0}, None)[0]  # pool full
    assert judgement(point(), VLLM_256, {"kv_peak_occupancy": 0.5, "peak_waiting": 3}, None)[0]  # engine queued
    assert judgement(point(), VLLM_256, nothing, True)[0]  # arrived while another static batch ran
    assert judgement(point(saturated=True), VLLM_256, nothing, None)[0]  # the rule saw something: judged
    assert judgement(point(), None, nothing, None)[0]  # no limit known: judged as before


def test_a_request_that_arrives_while_another_static_batch_runs_waited():
    first = [rec(0, 0.0, 0.0, 2.0, batch=0)]
    assert waited_for_a_batch(first + [rec(1, 1.0, 2.0, 3.0, batch=1)])  # batch 0 ran from 0 to 2 s
    assert not waited_for_a_batch(first + [rec(1, 2.5, 2.5, 3.0, batch=1)])  # it had ended
    assert not waited_for_a_batch([rec(0, 0.0, 0.1, 2.0, batch=0), rec(1, 0.05, 0.1, 2.0, batch=0)])  # one batch
    assert waited_for_a_batch([rec(0, 0.0, 0.0, 1.0), rec(1, 0.5, 0.5, 1.0)]) is None  # vLLM: no batches


def test_the_engines_peaks_are_taken_per_offered_rate_and_untagged_samples_left_out():
    samples = [KvSample(0.1, 1, kv_usage=0.2, waiting=0, request_rate=4.0),
               KvSample(0.2, 2, kv_usage=0.5, waiting=2, request_rate=4.0),
               KvSample(0.3, 3, kv_usage=0.9, waiting=9, request_rate=None)]  # fmt: skip
    assert peaks_by_rate(samples) == {4.0: {"kv_peak_occupancy": 0.5, "peak_waiting": 2}}


def test_judge_points_marks_the_finite_points_of_a_sweep_and_names_the_requests_needed():
    records = [rec(i, i * 0.25, i * 0.25, i * 0.25 + 1.0) for i in range(8)]
    records += [rec(i, 0.0, 0.0, 1.0, rate=None) for i in range(8)]  # the offline pass at inf
    samples = [KvSample(0.1, 1, kv_usage=0.03, waiting=0, request_rate=4.0)]
    finite, offline = judge_points(sweep_metrics(records, {}), records, samples, VLLM_256)
    assert finite["judged"] is False and finite["concurrency_limit"] == 256 and finite["requests_to_judge"] == 1024
    assert finite["saturated"] is False  # the boolean older readers use is kept
    assert "judged" not in offline  # inf: no saturation rule to judge


def test_the_saturated_cell_says_not_judged_and_an_older_point_reads_as_before():
    assert saturated_text(point(judged=False, concurrency_limit=256)) == "not judged (8 <= 256)"
    assert saturated_text(point(judged=True)) == "no"
    assert saturated_text(point(saturated=True)) == "yes"
    assert saturated_text(point()) == "no"  # written before the field existed


def test_the_sustained_rate_of_a_too_short_trace_is_marked_and_footnoted():
    unjudged = point(judged=False, concurrency_limit=256, requests_to_judge=1024)
    sweeps = {("vllm/offline",): [point(offered_rate_per_s=64.0, request_rate=64.0), unjudged]}
    assert Sustained.of(sweeps[("vllm/offline",)], None, False).text() == ">= 128.00 †"
    note = short_trace_note(sweeps)
    assert "too short to show saturation" in note[-1] and "--num-requests 1024 or more" in note[-1]
    old = {("vllm/offline",): [point()]}  # an older sweep: no marker, no footnote
    assert Sustained.of(old[("vllm/offline",)], None, False).text() == ">= 128.00" and short_trace_note(old) == []
    failed = [unjudged | {"offered_rate_per_s": 64.0}, point(saturated=True)]  # the knee was seen: exact
    assert Sustained.of(failed, None, False).text() == "64.00"


def test_an_older_summary_without_the_limit_still_renders_its_points():
    old = {"backend": "vllm", "mode": "offline", "status": "ok", "sweep": [point(admitted_rate_per_s=127.6)]}
    run = RunSummary.from_dict(old)
    assert run.concurrency_limit is None
    assert "| no " in points_table([run])


def test_the_warning_names_the_backends_whose_limit_the_trace_does_not_exceed():
    def engine(**kw):
        online = OnlineSettings(request_rates=kw.pop("rates", (16.0, 32.0)))
        return EngineSettings("synthetic:tiny", "sharegpt-like", online=online, **kw)

    runs = (("vllm", "offline"), ("hf", "batched"))
    warning = short_trace_warning(engine(num_requests=8, batch_size=8, max_num_seqs=256), runs)
    assert "vllm/offline (256), hf/batched (8) can hold at once" in warning and "--num-requests 1024" in warning
    assert short_trace_warning(engine(num_requests=8, batch_size=4), runs) is None  # vLLM's limit unknown yet
    assert short_trace_warning(engine(num_requests=8, max_num_seqs=256, rates=(float("inf"),)), runs) is None
    assert short_trace_warning(engine(max_num_seqs=256), runs) is None  # the workload's own count: unknown


def test_the_compare_latency_table_marks_a_not_judged_point_apart_from_a_saturated_one():
    sweep = [point(normalized_latency_s=0.01, judged=False, concurrency_limit=256),
             point(offered_rate_per_s=256.0, normalized_latency_s=0.02, saturated=True)]  # fmt: skip
    run = RunSummary.from_dict({"backend": "vllm", "mode": "offline", "status": "ok", "sweep": sweep})
    row = next(line for line in sweep_comparison([("A", [run])]) if "vllm/offline" in line)
    assert "0.0100°" in row and "0.0200*" in row
