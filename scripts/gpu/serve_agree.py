"""serve-agree: the lab's vLLM at one offered rate against `vllm bench serve` against `vllm serve`.

Usage: python scripts/gpu/serve_agree.py RESULTS_DIR RATE
Reads the lab's run folder (label serve-agree-lab) and vllm-bench-serve.json under RESULTS_DIR; prints
request throughput, output throughput and mean TTFT of both; exits 1 where throughput differs by more
than 5% or mean TTFT by more than 10% (issue 16's tolerances).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

THROUGHPUT_TOLERANCE = 0.05
TTFT_TOLERANCE = 0.10


def lab_point(results: Path) -> dict:
    folder = next(p for p in sorted(results.iterdir()) if p.is_dir() and "-serve-agree-lab" in p.name)
    run = json.loads((folder / "summary.json").read_text())["runs"][0]
    point = next(p for p in run["sweep"] if p.get("offered_rate_per_s"))
    return {
        "requests_per_s": point["requests_per_s"],
        "output_tokens_per_s": point["output_tokens_per_s"],
        "mean_ttft_s": point["ttft_s_mean"],
        "folder": str(folder),
    }


def bench_point(results: Path) -> dict:
    data = json.loads((results / "vllm-bench-serve.json").read_text())
    return {
        "requests_per_s": data["request_throughput"],
        "output_tokens_per_s": data["output_throughput"],
        "mean_ttft_s": data["mean_ttft_ms"] / 1000,
    }


def main() -> int:
    results, rate = Path(sys.argv[1]), sys.argv[2]
    lab, bench = lab_point(results), bench_point(results)
    failed = False
    print(f"offered {rate} req/s; lab: {lab['folder']}")
    for key, tolerance in (("requests_per_s", THROUGHPUT_TOLERANCE), ("output_tokens_per_s", THROUGHPUT_TOLERANCE),
                           ("mean_ttft_s", TTFT_TOLERANCE)):  # fmt: skip
        gap = abs(lab[key] - bench[key]) / bench[key]
        verdict = "ok" if gap <= tolerance else "OUTSIDE"
        failed |= gap > tolerance
        print(f"{key}: lab {lab[key]:.4g}, vllm bench serve {bench[key]:.4g}, gap {gap:.1%}", end=" ")
        print(f"({verdict}, limit {tolerance:.0%})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
