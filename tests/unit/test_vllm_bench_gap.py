"""scripts/gpu/vllm_bench_gap.py's accounting of one call's parts, and its summary.

The engine here is a fake (`FakeEngine`: the three methods the script wraps, nothing else) and the
clock a fake that advances by hand, so the parts have exact expected values. The script itself runs
on the real engines (CPU: `LAB_GPU_DRY=1 scripts/gpu/measure.sh agree-tp-gap`).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture(scope="module")
def gap(gpu_script):
    return gpu_script("vllm_bench_gap")


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeEngine:
    """add_request, engine_core.get_output and output_processor.process_outputs, each advancing the
    fake clock by a fixed cost, as LLMEngine's own would take time."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.engine_core = SimpleNamespace(get_output=self._cost(0.030, "core output"))
        self.output_processor = SimpleNamespace(process_outputs=self._cost(0.004, "outputs"))
        self.add_request = self._cost(0.001, "request id")

    def _cost(self, seconds: float, result: str):
        def method(*args, **kwargs):
            self.clock.t += seconds
            return result

        return method


def test_parts_split_a_call_into_adding_waiting_and_frontend(gap):
    clock = FakeClock()
    engine = FakeEngine(clock)
    parts = gap.Parts(engine, now=clock)
    parts.start()
    clock.t += 0.010  # rendering before the first add
    assert [engine.add_request(i) for i in range(3)] == ["request id"] * 3  # results pass through
    for _ in range(5):  # five steps: wait for the core, then process its outputs
        assert engine.engine_core.get_output() == "core output"
        engine.output_processor.process_outputs([])
    split = parts.split()
    assert split["adding_s"] == pytest.approx(0.013)  # t=0 to the last add's return
    assert split["wait_s"] == pytest.approx(5 * 0.030)
    assert split["frontend_s"] == pytest.approx(5 * 0.004)
    assert split["steps"] == 5


def test_start_forgets_the_previous_call(gap):
    clock = FakeClock()
    engine = FakeEngine(clock)
    parts = gap.Parts(engine, now=clock)
    engine.add_request(0)
    engine.engine_core.get_output()
    parts.start()
    assert parts.split() == {"adding_s": 0.0, "frontend_s": 0.0, "wait_s": 0.0, "steps": 0}


def test_summary_gives_each_variant_against_warm_bench(gap):
    def row(variant: str, seconds: float) -> dict:
        gc = {"total_ms": seconds, "max_ms": seconds / 2}  # a fake pause total, to follow into the line
        parts = {"adding_s": 0.1, "frontend_s": 0.2, "wait_s": 0.3, "steps": 4}
        return {"variant": variant, "seconds": seconds, **parts, "gc": gc}

    rows = [row("bench", 10.0), row("bench", 10.4), row("bench", 9.6), row("lab", 8.0), row("lab", 9.0)]
    lines = gap.summary(rows)
    assert lines[0].startswith("     bench: 10.000 s (9.600-10.400, 3 calls), +0.0% against bench")
    assert lines[1].startswith("       lab: 8.500 s (8.000-9.000, 2 calls), -15.0% against bench")
    assert lines[1].endswith("waiting 0.300 s, rest 0.000 s, 4 steps; GC 8 ms a call (longest pause 4 ms)")


def test_summary_without_bench_compares_with_the_first_variant(gap):
    parts = {"adding_s": 0, "frontend_s": 0, "wait_s": 0, "steps": 1, "gc": {"total_ms": 0, "max_ms": 0}}
    rows = [{"variant": v, "seconds": s, **parts} for v, s in (("lab", 10.0), ("lab-kv", 11.0))]
    assert "+10.0% against lab;" in gap.summary(rows)[1]


def fake_call(seconds: float):
    """A variant's call (a fake): a row with the parts `one_call` reads and `seconds` as its duration."""
    return lambda: {"seconds": seconds, "adding_s": 0.0, "frontend_s": 0.0, "wait_s": 0.0, "steps": 1}


def test_interleave_warms_every_variant_then_takes_turns(gap, capsys):
    args = SimpleNamespace(prompts=100, repeats=2, no_freeze=False, profile=None)
    variants = {"bench-cold": fake_call(2.0), "bench": fake_call(1.0), "lab": fake_call(0.5)}
    rows: list[dict] = []
    gap.interleaved(["bench-cold", "bench", "lab"], variants, args, rows)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    order = [(r["variant"], r["repeat"]) for r in map(__import__("json").loads, printed)]
    assert order == [
        ("bench-cold", 0),
        ("bench", -1),
        ("lab", -1),
        ("bench", 0),
        ("lab", 0),
        ("bench", 1),
        ("lab", 1),
    ]
    assert [(r["variant"], r["repeat"]) for r in rows] == [o for o in order if o[1] >= 0]  # warm-ups not kept
    assert [r["requests_per_s"] for r in rows if r["variant"] == "lab"] == [200.0, 200.0]


def test_lab_against_bench_gives_the_agreement_on_one_engine(gap):
    rows = [{"variant": "bench", "requests_per_s": r} for r in (200.0, 201.0, 199.0, 200.5)]
    rows += [{"variant": "lab", "requests_per_s": r} for r in (201.0, 200.0, 200.5, 199.5)]
    line = gap.lab_against_bench(rows)
    assert line.startswith("the lab's loop against bench's call (4 lab calls, 4 bench calls, one engine): gap +0.1%")
    assert line.endswith("limit 5%: agree")
    assert gap.lab_against_bench([r for r in rows if r["variant"] == "lab"]) is None
