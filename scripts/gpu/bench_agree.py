"""The lab's vLLM against `vllm bench throughput` on the same workload: issue 18's 5% (at TP=2).

Usage: python scripts/gpu/bench_agree.py LAB_RUN_DIR BENCH_JSON [BENCH_JSON ...]

Both sides run N random prompts of 128 tokens with 128 output tokens each (EOS ignored), so they are
compared in requests per second; output tokens per second is that x 128 on both sides.

- The lab: each timed pass's requests/s (`summary.json`, `pass_metrics`), from its clock's t=0 (before
  the prompts are rendered and added) to the last token its step loop saw.
- The bench: each run's `requests_per_second` (its JSON), over `LLM.generate`: rendering the prompts,
  adding them, stepping to the end and building the outputs.

Known differences, none of them the lab's clock: the bench samples at temperature 1 and detokenizes
every output token (the lab decodes greedily and never detokenizes: token ids are all it counts), and
its random prompts re-encode to a few more tokens (131,477 against 131,072 for 1,024 prompts).

Verdict, on the medians: "agree" where they are within 5%; "outside" beyond it; "inconclusive" where
either side's own spread ((max - min) / median) exceeds 5%, since then the runs cannot tell a 5% gap.
Exit 0 only on "agree".
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

TOLERANCE = 0.05


def lab_rates(run_dir: Path) -> list[float]:
    """requests/s of each timed pass of the folder's vLLM run that counts (a pass that compiled does not)."""
    run = json.loads((run_dir / "summary.json").read_text())["runs"][0]
    invalid = {p["index"] for p in run.get("passes") or () if p.get("invalid")}
    return [m["requests_per_s"] for i, m in enumerate(run["pass_metrics"]) if i not in invalid]


def bench_rates(paths: list[Path]) -> list[float]:
    """requests_per_second of each `vllm bench throughput --output-json` file."""
    return [json.loads(p.read_text())["requests_per_second"] for p in paths]


def spread(values: list[float]) -> float:
    """(max - min) / median."""
    return (max(values) - min(values)) / statistics.median(values)


def verdict(lab: list[float], bench: list[float]) -> tuple[str, float]:
    """("agree" | "outside" | "inconclusive", lab median / bench median - 1)."""
    gap = statistics.median(lab) / statistics.median(bench) - 1
    if max(spread(lab), spread(bench)) > TOLERANCE:
        return "inconclusive", gap
    return ("agree" if abs(gap) <= TOLERANCE else "outside"), gap


def describe(name: str, values: list[float], output_len: int) -> str:
    each = ", ".join(f"{v:.2f}" for v in values)
    median = statistics.median(values)
    return (
        f"{name}: requests/s {each}; median {median:.2f} ({min(values):.2f}-{max(values):.2f}), spread "
        f"{spread(values):.1%}; output tokens/s median {median * output_len:,.0f}"
    )


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    lab, bench = lab_rates(Path(argv[0])), bench_rates([Path(p) for p in argv[1:]])
    print(describe(f"lab ({len(lab)} passes)", lab, 128))
    print(describe(f"vllm bench throughput ({len(bench)} runs)", bench, 128))
    result, gap = verdict(lab, bench)
    print(f"gap of the medians: {gap:+.1%} (limit {TOLERANCE:.0%}): {result}")
    return 0 if result == "agree" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
