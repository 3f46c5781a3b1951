"""scripts/gpu/bench_agree.py's verdict: the lab's vLLM against `vllm bench throughput` (issue 18).

The lab's summary.json and bench's JSON files here are fakes written for the test, with only the
fields the script reads (`fake_lab_folder`, `fake_bench_json`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench_agree(gpu_script):
    return gpu_script("bench_agree")


def fake_lab_folder(folder: Path, rates: list[float], *, requests: int = 1024, status: str = "ok") -> Path:
    """A run folder whose summary.json holds one vLLM run with a timed pass at each rate."""
    run = {
        "backend": "vllm",
        "status": status,
        "error": None if status == "ok" else "some requests failed; see records.jsonl",
        "passes": [],
        "pass_metrics": [{"requests_per_s": r, "requests": requests, "prompt_tokens": requests * 128} for r in rates],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({"runs": [run]}))
    return folder


def fake_bench_json(path: Path, rate: float, *, requests: int = 1024, prompt_tokens: int = 131_477) -> str:
    """One `vllm bench throughput --output-json` file."""
    total = prompt_tokens + requests * 128
    path.write_text(json.dumps({"requests_per_second": rate, "num_requests": requests, "total_num_tokens": total}))
    return str(path)


def test_the_lab_side_leaves_out_a_pass_that_compiled(bench_agree, tmp_path):
    summary = {
        "runs": [
            {
                "backend": "vllm",
                "status": "ok",
                "passes": [{"index": 0, "invalid": "compiled"}, {"index": 1, "invalid": None}],
                "pass_metrics": [{"requests_per_s": 50.0}, {"requests_per_s": 150.0}],
            }
        ]
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert bench_agree.lab_rates(tmp_path) == [150.0]


def test_main_exits_nonzero_unless_they_agree(bench_agree, tmp_path, capsys):
    lab = fake_lab_folder(tmp_path / "lab", [100.0, 100.5, 101.0])
    bench = [fake_bench_json(tmp_path / f"bench-{i}.json", r) for i, r in enumerate((99.5, 100.0, 100.5))]
    assert bench_agree.main([str(lab), *bench]) == 0
    bench = [fake_bench_json(tmp_path / f"bench-{i}.json", r) for i, r in enumerate((80.0, 80.5, 81.0))]
    assert bench_agree.main([str(lab), *bench]) == 1
    assert "outside" in capsys.readouterr().out
    assert bench_agree.main([str(lab), bench[0]]) == 1  # one bench run: no interval, so no "agree"
    assert "inconclusive" in capsys.readouterr().out


def test_bench_as_users_run_it_is_printed_beside_and_decides_nothing(bench_agree, tmp_path, capsys):
    lab = fake_lab_folder(tmp_path / "lab", [100.0, 100.5, 101.0])
    like = [fake_bench_json(tmp_path / f"warm-{i}.json", r) for i, r in enumerate((99.5, 100.0, 100.5))]
    as_run = [fake_bench_json(tmp_path / f"default-{i}.json", r) for i, r in enumerate((80.0, 80.5))]
    assert bench_agree.main([str(lab), *like, "--as-run", *as_run]) == 0
    out = capsys.readouterr().out
    assert "the lab against bench: gap +0.5% (95% " in out
    assert "medians +0.5%), limit 5%: agree" in out
    assert "as users run it (2 runs)" in out
    assert "the lab against those: gap +25.2%" in out
    assert ": outside (for the record: decides nothing)" in out


def test_both_sides_prompt_tokens_are_printed(bench_agree, tmp_path, capsys):
    assert bench_agree.bench_prompt_tokens({"total_num_tokens": 262_549, "num_requests": 1024}) == 131_477
    lab = fake_lab_folder(tmp_path / "lab", [100.0])
    bench_agree.main([str(lab), fake_bench_json(tmp_path / "bench.json", 100.0)])
    assert "prompt tokens a pass: lab 131,072, bench 131,477" in capsys.readouterr().out


def test_a_different_number_of_requests_is_refused_before_any_verdict(bench_agree, tmp_path, capsys):
    lab = fake_lab_folder(tmp_path / "lab", [100.0], requests=1024)
    bench = fake_bench_json(tmp_path / "bench.json", 100.0, requests=256)
    assert bench_agree.main([str(lab), bench]) == 2
    captured = capsys.readouterr()
    assert "--num-prompts" in captured.err
    assert captured.out == ""


@pytest.mark.parametrize(
    ("make_folder", "problem"),
    [
        (lambda folder: folder, "summary.json does not exist"),
        (lambda folder: fake_lab_folder(folder, [100.0], status="error"), "did not succeed"),
    ],
)
def test_a_folder_without_a_successful_vllm_run_is_refused(bench_agree, tmp_path, capsys, make_folder, problem):
    folder = make_folder(tmp_path / "lab")
    folder.mkdir(exist_ok=True)
    assert bench_agree.main([str(folder), fake_bench_json(tmp_path / "bench.json", 100.0)]) == 2
    assert problem in capsys.readouterr().err


def test_a_missing_bench_result_is_refused(bench_agree, tmp_path, capsys):
    lab = fake_lab_folder(tmp_path / "lab", [100.0])
    assert bench_agree.main([str(lab)]) == 2
    assert "no bench result given" in capsys.readouterr().err
    assert bench_agree.main([str(lab), str(tmp_path / "missing.json")]) == 2
    assert "no such bench result" in capsys.readouterr().err


def test_several_lab_runs_pool_their_passes_one_engine_start_each(bench_agree, tmp_path, capsys):
    # agree-tp-lab REPEATS=1 three times: one timed run per engine start, as each bench run
    labs = [str(fake_lab_folder(tmp_path / f"lab-{i}", [r])) for i, r in enumerate((100.0, 100.5, 101.0))]
    bench = [fake_bench_json(tmp_path / f"warm-{i}.json", r) for i, r in enumerate((99.5, 100.0, 100.5))]
    assert bench_agree.main([*labs, *bench]) == 0
    out = capsys.readouterr().out
    assert "lab (3 passes, 3 engine starts): requests/s 100.00, 100.50, 101.00" in out
    assert "limit 5%: agree" in out


def test_a_bench_json_before_the_lab_folders_is_refused(bench_agree, tmp_path, capsys):
    lab = fake_lab_folder(tmp_path / "lab", [100.0])
    bench = fake_bench_json(tmp_path / "bench.json", 100.0)
    assert bench_agree.main([bench, str(lab)]) == 2
    assert "give the lab's run folders first" in capsys.readouterr().err
