"""Typed records of the timed passes: torch.compile's activity in a window of a process
(`CompileCount`), one timed pass (`TimedPass`, result.json `passes`), and which KV samples belong to
which pass (`last_pass_samples`, `samples_by_pass`). docs/results.md defines each field."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lab.records import KvSample, _known


@dataclass
class CompileCount:
    """torch.compile's activity in one window of a process (load, warm-up, one timed pass).

    The difference of two cumulative snapshots of torch._dynamo's own counters
    (`lab.backends.compile_watch.snapshot`): `frames`, Python frames dynamo compiled (a function's
    first compile and every recompile: each call that missed its cache); `graphs`, the graphs it
    produced; `recompiles`, the compiles dynamo itself calls recompilations, with its `reasons`.
    """

    frames: int = 0
    graphs: int = 0
    recompiles: int = 0
    reasons: list[str] = field(default_factory=list)
    source: str | None = None  # where the counters were read

    @property
    def compiled(self) -> bool:
        return self.frames > 0 or self.graphs > 0

    @classmethod
    def between(cls, before: dict | None, after: dict | None) -> CompileCount | None:
        """What happened between two snapshots; None where either could not be taken (not observable)."""
        if before is None or after is None:
            return None
        new_recompiles = {k: v for k, v in after.get("recompiles", {}).items() if k not in before.get("recompiles", {})}
        return cls(
            frames=after["frames"] - before["frames"],
            graphs=after["graphs"] - before["graphs"],
            recompiles=len(new_recompiles),
            reasons=sorted(set(new_recompiles.values())),
            source=after.get("source"),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> CompileCount | None:
        return None if data is None else _known(cls, data)


@dataclass
class TimedPass:
    """One timed pass of the whole workload: its seconds and whether it counts.

    A pass during which anything was compiled is invalid: it timed compilation, not generation.
    `compile` is None where compilation cannot be observed from the lab's process.
    """

    index: int
    duration_s: float
    compile: CompileCount | None = None
    memory: dict | None = None  # the backend's memory_stats() after the pass (its peaks reset before it); None: none
    gc: dict | None = None  # this process's garbage collections in the pass (lab.gc_pauses.summarize); None: older runs
    engine_gc: dict | None = None  # the engine's own processes' (Backend.engine_gc); None: not observed

    @property
    def invalid(self) -> str | None:
        """Why this pass does not count; None when it does (or could not be checked)."""
        c = self.compile
        if c is None or not c.compiled:
            return None
        return f"torch.compile ran in this timed pass ({c.frames} frames, {c.graphs} graphs, {c.recompiles} recompiles)"

    def to_dict(self) -> dict:
        return dict(asdict(self), invalid=self.invalid)  # asdict turns `compile` into its dict

    @classmethod
    def from_dict(cls, data: dict) -> TimedPass:
        compiled = CompileCount.from_dict(data.get("compile"))
        gc, engine_gc = data.get("gc"), data.get("engine_gc")
        return cls(data["index"], data["duration_s"], compiled, data.get("memory"), gc, engine_gc)


def last_pass_samples(samples: list[KvSample]) -> list[KvSample]:
    """The KV samples of the last timed pass (the highest `pass_index`): what kv.jsonl keeps, the pass the
    KV breakdown, the bandwidth and memory.png describe. Untagged samples (older runs): all of them."""
    tagged = [s.pass_index for s in samples if s.pass_index is not None]
    if not tagged:
        return list(samples)
    last = max(tagged)
    return [s for s in samples if s.pass_index == last]


def samples_by_pass(samples: list[KvSample], last_index: int) -> dict[int, list[KvSample]]:
    """The KV samples of each timed pass, by pass index; untagged samples (older runs) are the last
    pass's, `last_index` (the records' highest `pass_index`)."""
    out: dict[int, list[KvSample]] = {}
    for sample in samples:
        out.setdefault(last_index if sample.pass_index is None else sample.pass_index, []).append(sample)
    return out
