"""One latency clock: every latency counts from the request's arrival, queueing and service add up to
it, ITL is the gaps between tokens, and runs recorded before this clock load with the same definitions.
Hand-computed expectations."""

from __future__ import annotations

import pytest

from lab.metrics import run_metrics, summarize_records, with_pass_seconds
from lab.pass_records import CompileCount, TimedPass
from lab.records import RequestRecord


def record(rid, scheduled, times, arrival=0.0, **kw):
    return RequestRecord(
        rid, 10, len(times), times[0], times[-1], arrival_s=arrival, scheduled_s=scheduled, token_times_s=times, **kw
    )


def test_latencies_count_from_arrival_and_queueing_plus_service_is_e2e():
    r = record(0, scheduled=3.0, times=[3.5, 4.0, 5.0], arrival=1.0)
    assert r.ttft_s == 2.5 and r.e2e_s == 4.0
    assert r.queue_s == 2.0 and r.service_s == 2.0
    assert r.queue_s + r.service_s == r.e2e_s
    assert r.itl_s == [0.5, 1.0]


def test_a_request_queued_behind_others_has_their_service_in_its_ttft():
    """hf/sequential's shape: request k starts when request k-1 ends; all arrive at 0."""
    first = record(0, scheduled=0.0, times=[0.1, 0.2, 1.0])
    second = record(1, scheduled=1.0, times=[1.1, 1.2, 2.0])
    assert second.ttft_s >= first.service_s
    assert second.ttft_s == pytest.approx(1.1)  # the old per-batch clock said 0.1


def test_itl_percentiles_pool_every_gap_and_tpot_is_per_request():
    records = [record(0, 0.0, [0.1, 0.2, 0.3]), record(1, 0.0, [0.1, 1.1])]
    s = summarize_records(records)
    # gaps: 0.1, 0.1 (request 0) and 1.0 (request 1), pooled
    assert s["itl_s_p50"] == pytest.approx(0.1) and s["itl_s_mean"] == pytest.approx(0.4)
    # TPOT per request: 0.1 and 1.0
    assert s["tpot_s_p50"] == pytest.approx(0.55)
    assert s["queue_s_p50"] == 0.0 and s["service_s_p99"] == pytest.approx(1.1 - 0.01 * (1.1 - 0.3))


def test_a_run_from_before_the_arrival_clock_loads_with_the_new_definitions():
    """records.jsonl of tests/fixtures/run-cpu-tiny: hf's start_s was its batch's start, vLLM's 0."""
    hf = {"request_id": 1, "prompt_tokens": 14, "output_tokens": 8, "start_s": 0.0115, "first_token_s": 0.0176,
          "end_s": 0.0258, "batch": 1, "status": "ok", "ttft_s": 0.0061, "e2e_s": 0.0143}  # fmt: skip
    vllm = dict(hf, start_s=0.0, batch=None)
    old_hf, old_vllm = RequestRecord.from_dict(hf), RequestRecord.from_dict(vllm)
    assert old_hf.arrival_s == 0.0 and old_hf.scheduled_s == 0.0115
    assert old_hf.ttft_s == 0.0176 and old_hf.e2e_s == 0.0258  # not the recorded 0.0061 / 0.0143
    assert old_vllm.scheduled_s is None and old_vllm.queue_s is None  # vLLM's scheduling was not recorded
    assert old_hf.token_times_s is None and old_hf.itl_s == []


def test_medians_are_over_the_passes_that_did_not_compile():
    def one_pass(index, end, invalid=None):
        return [record(0, 0.0, [end / 2, end], pass_index=index, pass_invalid=invalid)]

    records = one_pass(0, 9.0, invalid="compiled") + one_pass(1, 1.0) + one_pass(2, 2.0) + one_pass(3, 4.0)
    median, per_pass = run_metrics(records)
    assert [p["duration_s"] for p in per_pass] == [9.0, 1.0, 2.0, 4.0]
    assert median["duration_s"] == 2.0 and median["e2e_s_p50"] == 2.0  # over passes 1-3 only
    assert median["passes"] == 4 and median["passes_counted"] == 3 and median["invalid_passes"] == [0]
    assert median["requests"] == 1 and isinstance(median["requests"], int)


def test_a_pass_that_compiled_is_invalid_and_one_that_did_not_is_valid():
    before = {"frames": 2, "graphs": 1, "recompiles": {"0/0": "x"}}
    after = {"frames": 4, "graphs": 2, "recompiles": {"0/0": "x", "0/1": "tensor 'x' size mismatch"}}
    count = CompileCount.between(before, after)
    assert (count.frames, count.graphs, count.recompiles, count.reasons) == (2, 1, 1, ["tensor 'x' size mismatch"])
    assert "torch.compile ran" in TimedPass(0, 1.0, count).invalid
    assert TimedPass(1, 1.0, CompileCount.between(after, after)).invalid is None
    assert CompileCount.between(None, after) is None and TimedPass(2, 1.0, None).invalid is None  # not observable
    assert TimedPass.from_dict(TimedPass(0, 1.0, count).to_dict()).compile == count


def test_an_older_run_with_repeats_gets_the_median_of_its_pass_seconds():
    """Runs before every pass's records were kept: records of the last pass, `passes_s` of each."""
    metrics, _ = run_metrics([record(0, 0.0, [0.5, 4.0])])  # its last pass took 4 s
    older = with_pass_seconds(metrics, [1.0, 4.0, 2.0])
    assert older["duration_s"] == 2.0 and older["output_tokens_per_s"] == 1.0  # 2 tokens / the median 2 s
    assert older["passes"] == older["passes_counted"] == 3
    assert older["e2e_s_p50"] == 4.0  # latencies stay the last pass's
    assert with_pass_seconds(metrics, [4.0]) == metrics


def test_hf_continuous_records_from_before_the_clock_load_their_times_from_extra():
    old = {"request_id": 0, "prompt_tokens": 5, "output_tokens": 3, "start_s": 0.0, "first_token_s": 0.4,
           "end_s": 0.9, "batch": None, "extra": {"token_times_s": [0.4, 0.6, 0.9], "scheduled_s": 0.3,
           "submitted_s": 0.01}}  # fmt: skip
    r = RequestRecord.from_dict(old)
    assert r.token_times_s == [0.4, 0.6, 0.9] and r.scheduled_s == 0.3
    assert r.queue_s == 0.3 and r.service_s == pytest.approx(0.6) and r.itl_s == pytest.approx([0.2, 0.3])


def test_the_stored_record_keeps_first_token_equal_to_the_first_token_time():
    """The file rounds every time alike (to the microsecond), so the life's order holds in it too."""
    record = RequestRecord(
        0, 8, 3, first_token_s=0.004793745, end_s=0.0091234567, token_times_s=[0.004793745, 0.0071, 0.0091234567]
    )
    stored = record.to_dict()
    assert stored["first_token_s"] == stored["token_times_s"][0] == 0.004794
    assert stored["end_s"] == stored["token_times_s"][-1] == 0.009123
    assert stored["ttft_s"] == 0.004794 and RequestRecord.from_dict(stored).e2e_s == stored["e2e_s"]


def test_the_stored_record_rounds_the_online_submission_times_alike():
    """Online serving's submission (hf: its batch's generate() began, as scheduled_s) keeps its order in the file."""
    record = RequestRecord(
        0, 8, 1, first_token_s=0.25, end_s=0.25, arrival_s=0.1000004, scheduled_s=0.1234567891,
        submitted_s=0.1234567891, submit_lag_s=0.0234563891, token_times_s=[0.25], request_rate=4.0,
    )  # fmt: skip
    stored = record.to_dict()
    assert stored["submitted_s"] == stored["scheduled_s"] == 0.123457
    assert stored["arrival_s"] <= stored["submitted_s"] and stored["submit_lag_s"] == 0.023456
