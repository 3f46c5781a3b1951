"""A finished run folder, loaded once: every analysis and renderer of the report reads it from here.

Each file is read the first time something asks for it, and never again: the manifest and the
summary for the tables, each backend/mode's own files (`runs/<name>/`) for the KV breakdown, the
bandwidth and the observations, the collector's timeline for the memory plot. Where a compacted folder
kept a backend/mode's records or KV samples only in the merged file, its lines come from there
(`lab.merged_rows`).

The latency and throughput figures are computed again from the request records
(`lab.metrics.run_metrics`), not read from summary.json: a run written before the arrival clock then
shows the same definitions as a new one (its records load with `RequestRecord.from_dict`), and its
throughput is the median over its passes' seconds where it kept only the last pass's records. An online
sweep's points are judged again too (`lab.online_judged`), against the concurrency limit summary.json
records, or, in runs written before it did, the one the engine's facts give.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from lab import run_folder as rf
from lab.config import EngineSettings
from lab.hardware.timeline import restricted_to_gpus
from lab.merged_rows import RunRows
from lab.metrics import passes_of, run_metrics, with_pass_seconds
from lab.online_judged import concurrency_limit, judged_sweep
from lab.online_metrics import is_sweep, last_rate_records
from lab.records import BackendResult, KvSample, RequestRecord, RunSummary


@dataclass(frozen=True)
class RunPart:
    """One backend/mode's own files: its result (None where it wrote none), the request records of its
    last timed pass and that pass's KV samples (what the KV breakdown and the batch figures describe),
    and the records and KV samples of every pass (online serving: each rate's; older runs kept the KV
    samples of their last pass only)."""

    summary: RunSummary
    result: BackendResult | None
    records: list[RequestRecord]
    kv_samples: list[KvSample]
    records_every_pass: list[RequestRecord] = field(default_factory=list)
    kv_samples_every_pass: list[KvSample] = field(default_factory=list)


class RunView:
    """Read-only access to one finished run folder (`run_folder.check_run_dir` says what finished means)."""

    def __init__(self, path: Path) -> None:
        self.folder = rf.RunFolder(rf.check_run_dir(Path(path)))
        self._parts: dict[str, RunPart] = {}
        self._records: dict[str, list[RequestRecord]] = {}
        self._rows = RunRows(self.folder)

    @property
    def path(self) -> Path:
        return self.folder.path

    @cached_property
    def manifest(self) -> dict:
        return rf.read_json(self.folder.manifest)

    @cached_property
    def summary_file(self) -> dict:
        """summary.json as it is on disk (the HTML report shows it whole)."""
        return rf.read_json(self.folder.summary)

    @cached_property
    def runs(self) -> list[RunSummary]:
        """One entry per backend/mode, in the order they ran, its metrics computed from its records."""
        return [self._with_current_metrics(RunSummary.from_dict(run)) for run in self.summary_file["runs"]]

    def _with_current_metrics(self, run: RunSummary) -> RunSummary:
        records = self.records(run.name)
        if not records:  # a failed run, or a folder kept without its records: summary.json's figures
            metrics = with_pass_seconds(run.metrics, run.passes_s or []) if run.metrics else run.metrics
            return dataclasses.replace(run, metrics=metrics)
        metrics, pass_metrics = run_metrics(last_rate_records(records))  # a sweep: its last rate's
        sweep = self._judged_sweep(run, records) if is_sweep(records) else None
        if all(r.pass_index is None for r in records):  # older runs kept only their last pass's records
            metrics = with_pass_seconds(metrics, run.passes_s or [])
        elif sweep:  # passes_s holds every rate's passes; the offline sections give the last rate's alone
            run = dataclasses.replace(run, passes_s=[m["duration_s"] for m in pass_metrics])
        return dataclasses.replace(run, metrics=metrics, pass_metrics=pass_metrics, sweep=sweep)

    def _judged_sweep(self, run: RunSummary, records: list[RequestRecord]) -> list[dict]:
        online = self.engine.online
        limit = run.concurrency_limit or concurrency_limit(run.backend, run.mode, run.engine, online.max_concurrency)
        samples = [KvSample.from_dict(s) for s in self._rows.kv_every_pass(run.name)]
        return judged_sweep(records, samples, online.slos, limit)

    def records(self, name: str) -> list[RequestRecord]:
        """Every timed pass's request records of backend/mode `name` ('hf-batched')."""
        if name not in self._records:
            self._records[name] = [RequestRecord.from_dict(r) for r in self._rows.of(rf.RECORDS, name)]
        return self._records[name]

    @cached_property
    def engine(self) -> EngineSettings:
        """The settings every backend/mode shared (a setting an older run lacks takes its default)."""
        return EngineSettings.from_dict(self.manifest["config"]["engine"])

    @cached_property
    def timeline(self) -> dict[str, list[dict]]:
        """The collector's samples by backend/mode name ('hf-batched')."""
        grouped: dict[str, list[dict]] = {}
        for row in rf.iter_jsonl(self.folder.timeline):
            if row.get("kind", "sample") == "sample":
                grouped.setdefault(row.get("run"), []).append(row)
        return grouped

    def part(self, run: RunSummary) -> RunPart:
        """`run`'s own files under runs/<name>/, read on first use."""
        if run.name not in self._parts:
            files = self.folder.part(run.name)
            result = BackendResult.from_dict(rf.read_json(files.result)) if files.result.exists() else None
            result = with_batch_sequences(result, self.engine.sequences) if result is not None else None
            records = self.records(run.name)
            passes = passes_of(records)
            samples = [KvSample.from_dict(s) for s in self._rows.of(rf.KV_SAMPLES, run.name)]
            every = [KvSample.from_dict(s) for s in self._rows.kv_every_pass(run.name)]
            last = passes[-1] if passes else []
            self._parts[run.name] = RunPart(run, result, last, samples, records, every)
        return self._parts[run.name]

    def own_timeline(self, run: RunSummary) -> list[dict]:
        """The collector's samples of `run`, with only the GPUs it used (the collector may read more)."""
        samples, used = self.timeline.get(run.name, []), run.memory.get("gpus_used")
        return restricted_to_gpus(samples, used) if used else samples

    def ok_parts(self) -> list[RunPart]:
        """The parts of the backend/modes that succeeded and wrote a result."""
        parts = (self.part(run) for run in self.runs if run.ok)
        return [p for p in parts if p.result is not None]


def with_batch_sequences(result: BackendResult, sequences: int) -> BackendResult:
    """`result` with each hf batch's `sequences_per_request` set to `sequences` (the run's --n or --beam-width)
    where the batch lacks it: runs written before the field held n or W cache rows per request all the same."""
    engine = result.engine or {}
    batches = engine.get("batches") or []
    if all("sequences_per_request" in b for b in batches):
        return result
    filled = [{"sequences_per_request": sequences, **b} for b in batches]
    return dataclasses.replace(result, engine={**engine, "batches": filled})
