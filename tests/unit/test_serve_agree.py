"""scripts/gpu/serve_agree.py: issue 16's verdict (the lab's vLLM against `vllm bench serve`) and the
mean TTFT over each clock's own interval, the server's from its /metrics histograms.

Everything read here is a fake written for the test, with only the fields the script reads:
`fake_metrics` (a /metrics text), `fake_lab_folder` (summary.json and records.jsonl.gz of one sweep
point) and `fake_bench_json` (`vllm bench serve --save-result`).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

MODEL = 'model_name="/tmp/labcache/models/synthetic-llama-1b"'


@pytest.fixture(scope="module")
def serve_agree(gpu_script):
    return gpu_script("serve_agree")


def fake_metrics(ttft: tuple[float, float], queue: tuple[float, float], prefill: tuple[float, float]) -> str:
    """A /metrics text with the three histograms as (sum, count), split over two engines' label sets,
    with bucket and created lines that must not be added."""
    lines = ["# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds."]
    for name, (total, count) in (("time_to_first_token", ttft), ("request_queue_time", queue),
                                 ("request_prefill_time", prefill)):  # fmt: skip
        for engine, share in (("0", 0.25), ("1", 0.75)):
            labels = f'{{engine="{engine}",{MODEL}}}'
            lines += [
                f'vllm:{name}_seconds_bucket{{engine="{engine}",le="0.01",{MODEL}}} {count * share}',
                f"vllm:{name}_seconds_count{labels} {count * share}",
                f"vllm:{name}_seconds_sum{labels} {total * share}",
                f"vllm:{name}_seconds_created{labels} 1.7e9",
            ]
    lines.append("vllm:num_requests_running 0.0")
    return "\n".join(lines) + "\n"


def fake_lab_folder(results: Path, *, ttft_s: float, lag_s: float, rate: float = 20.0, n: int = 4) -> Path:
    """A lab run folder: one sweep point at `rate` and n records whose first token comes ttft_s after
    arrival, each handed to the engine lag_s after it."""
    folder = results / "20261127-000000-serve-agree-lab-abcd"
    folder.mkdir(parents=True)
    point = {"offered_rate_per_s": rate, "request_rate": rate, "requests_per_s": 19.78,
             "output_tokens_per_s": 2532.0, "ttft_s_mean": ttft_s}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps({"runs": [{"sweep": [point]}]}))
    records = [
        {"request_id": i, "arrival_s": i * 0.05, "submitted_s": i * 0.05 + lag_s, "first_token_s": i * 0.05 + ttft_s,
         "submit_lag_s": lag_s, "request_rate": rate, "status": "ok"}
        for i in range(n)
    ]  # fmt: skip
    (folder / "records.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    return folder


def fake_bench_json(results: Path, *, mean_ttft_ms: float, completed: int = 400) -> None:
    data = {"request_throughput": 19.75, "output_throughput": 2528.0, "mean_ttft_ms": mean_ttft_ms,
            "completed": completed}  # fmt: skip
    (results / "vllm-bench-serve.json").write_text(json.dumps(data))


def test_histogram_totals_add_every_label_set_and_skip_buckets(serve_agree):
    text = fake_metrics(ttft=(6.0, 400), queue=(0.1, 400), prefill=(2.0, 400))
    assert serve_agree.histogram_totals(text, "vllm:time_to_first_token_seconds") == pytest.approx((6.0, 400))


def test_histogram_missing_says_what_to_check(serve_agree):
    with pytest.raises(ValueError, match="vllm:time_to_first_token_seconds.*stats on"):
        serve_agree.histogram_totals("vllm:num_requests_running 0.0\n", "vllm:time_to_first_token_seconds")


def test_server_mean_is_the_difference_of_sums_over_the_difference_of_counts(serve_agree):
    before = fake_metrics(ttft=(0.5, 10), queue=(0.01, 10), prefill=(0.2, 10))
    after = fake_metrics(ttft=(6.5, 410), queue=(0.41, 410), prefill=(4.2, 410))
    server = serve_agree.server_point(before, after)
    assert server["requests"] == 400
    assert server["mean_ttft_s"] == pytest.approx(6.0 / 400)
    assert server["mean_engine_core_s"] == pytest.approx((0.4 + 4.0) / 400)


def test_engine_core_share_is_unknown_when_its_histograms_counted_other_requests(serve_agree):
    before = fake_metrics(ttft=(0.0, 0), queue=(0.0, 0), prefill=(0.0, 0))
    after = fake_metrics(ttft=(6.0, 400), queue=(0.4, 398), prefill=(4.0, 398))  # two still running
    assert serve_agree.server_point(before, after)["mean_engine_core_s"] is None


def test_server_point_refuses_scrapes_with_nothing_served_between(serve_agree):
    same = fake_metrics(ttft=(1.0, 10), queue=(0.1, 10), prefill=(0.2, 10))
    with pytest.raises(ValueError, match="observed nothing"):
        serve_agree.server_point(same, same)


def test_verdict_is_outside_where_mean_ttft_differs_by_more_than_ten_percent(serve_agree):
    lab = {"requests_per_s": 19.78, "output_tokens_per_s": 2532.0, "mean_ttft_s": 0.0117, "folder": "f"}
    bench = {"requests_per_s": 19.75, "output_tokens_per_s": 2528.0, "mean_ttft_s": 0.0154}
    lines, failed = serve_agree.verdict_lines(lab, bench, "20")
    assert failed
    assert lines[3] == "mean_ttft_s: lab 0.0117, vllm bench serve 0.0154, gap 24.0% (OUTSIDE, limit 10%)"
    lines, failed = serve_agree.verdict_lines({**lab, "mean_ttft_s": 0.0145}, bench, "20")
    assert not failed
    assert lines[3].endswith("gap 5.8% (ok, limit 10%)")


def test_interval_lines_compare_the_same_interval_and_give_the_share_outside_the_server(serve_agree):
    lab = {"mean_ttft_s": 0.0117, "mean_ttft_from_add_s": 0.0105, "mean_submit_lag_s": 0.0012}
    bench = {"mean_ttft_s": 0.0154, "requests": 400}
    server = {"mean_ttft_s": 0.0110, "requests": 400, "mean_engine_core_s": 0.0080}
    text = "\n".join(serve_agree.interval_lines(lab, bench, server))
    assert "lab, add_request -> the same: 10.50 (its dispatcher's mean lag before add_request 1.20)" in text
    assert "over 400 requests" in text and ": 11.00\n" in text
    assert "gap 4.5% (ok at 10%; informative, not issue 16's verdict)" in text
    assert "server - its engine core: 3.00 ms" in text
    assert "bench client - server: 4.40 ms (29% of the client's TTFT)" in text
    assert "note:" not in text


def test_interval_lines_say_when_the_server_was_not_scraped_or_counted_other_requests(serve_agree):
    lab = {"mean_ttft_s": 0.0117, "mean_ttft_from_add_s": None, "mean_submit_lag_s": None}
    bench = {"mean_ttft_s": 0.0154, "requests": 400}
    text = "\n".join(serve_agree.interval_lines(lab, bench, None))
    assert "server: not scraped" in text and "add_request -> the same: unknown" in text
    assert "bench client - server" not in text
    server = {"mean_ttft_s": 0.011, "requests": 401, "mean_engine_core_s": None}
    text = "\n".join(serve_agree.interval_lines(lab, bench, server))
    assert "note: the server counted 401 requests, the bench 400" in text
    assert "engine core" not in text.replace("first token out of the engine core", "")


def test_main_reads_the_step_folder_and_exits_1_outside_the_issue_tolerance(serve_agree, tmp_path, monkeypatch, capsys):
    fake_lab_folder(tmp_path, ttft_s=0.0117, lag_s=0.0012)
    fake_bench_json(tmp_path, mean_ttft_ms=15.4, completed=4)
    (tmp_path / "server-metrics-before.txt").write_text(fake_metrics((0.0, 0), (0.0, 0), (0.0, 0)))
    (tmp_path / "server-metrics-after.txt").write_text(fake_metrics((0.044, 4), (0.0004, 4), (0.032, 4)))
    monkeypatch.setattr("sys.argv", ["serve_agree.py", str(tmp_path), "20"])
    assert serve_agree.main() == 1
    out = capsys.readouterr().out
    assert "lab, add_request -> the same: 10.50" in out
    assert "over 4 requests" in out and ": 11.00\n" in out
    assert "bench client - server: 4.40 ms" in out
    fake_bench_json(tmp_path, mean_ttft_ms=12.0, completed=4)
    assert serve_agree.main() == 0
