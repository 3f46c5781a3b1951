"""No compilation inside a timed pass, and a pass that compiled is marked: the runner with the real
transformers engine on synthetic:tiny, its static-cache decode step compiled by transformers itself.

transformers auto-compiles a static cache's decode step on CUDA only (`_valid_auto_compile_criteria`).
To see that compilation on the CPU, `compile_on_the_cpu` sets the model's `compile_config` to
torch.compile's "eager" dynamo backend with `_compile_all_devices` (transformers' own switch):
dynamo traces and guards exactly as on CUDA, without inductor's code generation. The test runs
`run_backend` in this process, so torch._dynamo's counters are this process's; each test starts
from `torch._dynamo.reset()`, as a fresh backend process would (compiled code is otherwise reused).
"""

from __future__ import annotations

import pytest
import torch._dynamo
from transformers import CompileConfig

from lab import run_folder as rf
from lab.backends.hf import HfBackend
from lab.config import EngineSettings, RunSpec
from lab.pass_records import TimedPass
from lab.records import RequestRecord
from lab.runner import run_backend

pytestmark = pytest.mark.engine


@pytest.fixture
def compile_on_the_cpu(monkeypatch):
    load = HfBackend.load

    def load_and_compile_everywhere(self):
        load(self)
        config = CompileConfig(backend="eager")
        config._compile_all_devices = True
        self.model.generation_config.compile_config = config

    monkeypatch.setattr(HfBackend, "load", load_and_compile_everywhere)
    torch._dynamo.reset()


def timed_passes(result) -> list[TimedPass]:
    return [TimedPass.from_dict(p) for p in result.passes]


def run_static_cache(tiny_model, out, warmup: str, mode: str = "static-cache"):
    engine = EngineSettings(
        model=str(tiny_model), workload="seed", device="cpu", output_tokens=6, batch_size=3, warmup=warmup, repeats=3
    )
    result = run_backend(RunSpec("hf", mode, engine), out)
    assert result.ok, result.error
    records = [RequestRecord.from_dict(r) for r in rf.iter_jsonl(rf.PartFolder(out).records)]
    assert len(records) == 3 * 4 and all(r.ok and r.output_tokens == 6 for r in records)
    return result, records


def test_a_timed_pass_that_compiled_is_marked_invalid(tiny_model, tmp_path, compile_on_the_cpu):
    """No warm-up: the first timed pass compiles the decode step; fixed shapes keep the others from compiling."""
    result, records = run_static_cache(tiny_model, tmp_path / "none", warmup="none")
    first, *later = timed_passes(result)
    assert first.compile.frames > 0 and first.invalid and "torch.compile ran" in first.invalid
    assert [p.compile.frames for p in later] == [0, 0] and [p.invalid for p in later] == [None, None]
    assert {r.pass_invalid for r in records if r.pass_index == 0} == {first.invalid}
    assert {r.pass_invalid for r in records if r.pass_index != 0} == {None}
    assert result.engine["torch_compile"]["compiled"] is True


def test_the_shapes_warm_up_leaves_every_timed_pass_without_compilation(tiny_model, tmp_path, compile_on_the_cpu):
    """Two batches of different widths (the last padded to the batch size), one pinned cache length:
    the warm-up compiles once, and no timed pass compiles or recompiles."""
    result, _ = run_static_cache(tiny_model, tmp_path / "shapes", warmup="shapes")
    assert result.compile["warmup"]["frames"] > 0
    assert [(p.compile.frames, p.compile.graphs, p.invalid) for p in timed_passes(result)] == [(0, 0, None)] * 3
    batches = result.hf_batches
    assert [(b.batch_size, b.padded_rows) for b in batches] == [(3, 0), (1, 2)]
    assert {b.cache_slots_per_sequence for b in batches} == {result.engine["static_cache_len"]}


def test_static_cache_eager_never_compiles(tiny_model, tmp_path, compile_on_the_cpu):
    result, _ = run_static_cache(tiny_model, tmp_path / "eager", warmup="none", mode="static-cache-eager")
    assert result.compile["warmup"]["frames"] == 0
    assert all(p.compile.frames == 0 and p.invalid is None for p in timed_passes(result))
    assert result.engine["torch_compile"]["compiled"] is False
    assert "disable_compile" in result.engine["torch_compile"]["policy"]
