"""The run folder: its layout and file names, atomic writes, JSON lines. Results are append-only.

This module alone knows where a file of a run lives. Everything else asks it (`RunFolder`,
`PartFolder`) for paths.

    results/<run-id>/
        manifest.json       versions, hardware, git commit, the full configuration and seeds
        records.jsonl       one line per request per backend/mode
        summary.json        aggregates per backend/mode
        timeline.jsonl      the collector's samples (every backend/mode, tagged with "run")
        kv.jsonl            KV-cache samples taken by the backends during their last timed pass
        kv_passes.jsonl     the same during every timed pass (each rate's; tagged with its pass and rate)
        kv_breakdown.json   where the KV memory went, per backend/mode
        plots.json, *.png   the plots, and why any was not drawn
        report.md           generated from the files above; regenerated, never edited
        report.html         the same report in one self-contained file
        capacity.json, capacity.md          (`lab capacity` runs, instead of records and summary)
        sharing.json, sharing.md, sharing.html, points/<run-id>/   (a sharing sweep: one run folder a point)
        runs/<backend>-<mode>/              what one backend process wrote:
            spec.json, pid, result.json, records.jsonl, kv.jsonl, kv_passes.jsonl, timeline.jsonl, log.txt,
            collector.log
            ranks/<k>/                      torchrun rank k > 0 of a tensor-parallel hf run: its own files

Merge gathers the runs' records.jsonl, kv.jsonl, kv_passes.jsonl and timeline.jsonl into the folder's
files of the same name. A compacted folder (scripts/compact_results.py: the committed results) keeps
those lines only there, its timeline.jsonl with each run's collector header and summary lines too;
`lab.merged_rows` reads a run's lines from its own file, else from the merged file.

A run is written into `results/.tmp-<run-id>/` (`creating`) and renamed when complete, so a
half-written run is never mistaken for a finished one, and an existing run folder is never
overwritten. A run cut off part-way is complete too once it is written from the points that finished
(`lab.experiments.sweep`), and is renamed the same way. Long JSON lines files may be committed
gzipped (`records.jsonl.gz`): readers take either.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lab.errors import LabInputError

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
SUMMARY = "summary.json"
TIMELINE = "timeline.jsonl"
KV_SAMPLES = "kv.jsonl"
KV_PASSES = "kv_passes.jsonl"
KV_BREAKDOWN = "kv_breakdown.json"
PLOTS_INDEX = "plots.json"
REPORT = "report.md"
HTML_REPORT = "report.html"
CAPACITY_JSON = "capacity.json"
CAPACITY_MD = "capacity.md"
SHARING_JSON = "sharing.json"  # a sharing sweep's folder (`lab experiment --n/--beam-width/--shared-prefix-tokens`)
SHARING_MD = "sharing.md"
SHARING_HTML = "sharing.html"
POINTS = "points"  # a sharing sweep's points, one finished run folder each
RESOLVE_SPEC = "resolve-spec.json"  # the spec `lab resolve` reads, removed once read
RESOLVED = "resolved.json"  # what `lab resolve` found, removed once read
RUNS = "runs"
TMP_PREFIX = ".tmp-"
# One backend/mode's folder, runs/<backend>-<mode>/.
SPEC = "spec.json"
PID = "pid"
RESULT = "result.json"
LOG = "log.txt"
COLLECTOR_LOG = "collector.log"
STOP = "stop"
RANKS = "ranks"


@dataclass(frozen=True)
class PartFolder:
    """runs/<backend>-<mode>/: the files of one backend process and of the collector beside it."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def spec(self) -> Path:
        return self.path / SPEC

    @property
    def pid(self) -> Path:
        return self.path / PID

    @property
    def result(self) -> Path:
        return self.path / RESULT

    @property
    def records(self) -> Path:
        return self.path / RECORDS

    @property
    def kv_samples(self) -> Path:
        return self.path / KV_SAMPLES

    @property
    def kv_passes(self) -> Path:
        return self.path / KV_PASSES

    def kv_every_pass(self) -> Path:
        """kv_passes.jsonl, or kv.jsonl where a run written before it kept only its last pass's samples."""
        return self.kv_passes if existing(self.kv_passes) else self.kv_samples

    @property
    def timeline(self) -> Path:
        return self.path / TIMELINE

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def collector_log(self) -> Path:
        return self.path / COLLECTOR_LOG

    @property
    def stop_file(self) -> Path:
        """Touched by the experiment to stop the collector (it also stops when the backend exits)."""
        return self.path / STOP

    def rank(self, k: int) -> PartFolder:
        """ranks/<k>/: what torchrun rank k > 0 of this backend/mode wrote (rank 0 writes this folder)."""
        return PartFolder(self.path / RANKS / str(k))

    def ranks(self) -> list[PartFolder]:
        """The folders of ranks 1.. that exist, in rank order."""
        folder = self.path / RANKS
        found = [p for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
        return [PartFolder(p) for p in sorted(found, key=lambda p: int(p.name))]


@dataclass(frozen=True)
class RunFolder:
    """results/<run-id>/ (or its temporary `.tmp-<run-id>/` while it is written)."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name.removeprefix(TMP_PREFIX)

    def part(self, name: str) -> PartFolder:
        """runs/<name>/, name as `config.run_name` spells it ('hf-batched')."""
        return PartFolder(self.path / RUNS / name)

    def plot(self, name: str) -> Path:
        """<name>.png, a plot of the report."""
        return self.path / f"{name}.png"

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    @property
    def records(self) -> Path:
        return self.path / RECORDS

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def timeline(self) -> Path:
        return self.path / TIMELINE

    @property
    def kv_samples(self) -> Path:
        return self.path / KV_SAMPLES

    @property
    def kv_passes(self) -> Path:
        return self.path / KV_PASSES

    @property
    def kv_breakdown(self) -> Path:
        return self.path / KV_BREAKDOWN

    @property
    def plots_index(self) -> Path:
        return self.path / PLOTS_INDEX

    @property
    def report(self) -> Path:
        return self.path / REPORT

    @property
    def html_report(self) -> Path:
        return self.path / HTML_REPORT

    @property
    def capacity_json(self) -> Path:
        return self.path / CAPACITY_JSON

    @property
    def capacity_md(self) -> Path:
        return self.path / CAPACITY_MD

    @property
    def points(self) -> Path:
        """points/: a sharing sweep's run folders, one a point."""
        return self.path / POINTS

    @property
    def sharing_json(self) -> Path:
        return self.path / SHARING_JSON

    @property
    def sharing_md(self) -> Path:
        return self.path / SHARING_MD

    @property
    def sharing_html(self) -> Path:
        return self.path / SHARING_HTML

    @property
    def resolve_spec(self) -> Path:
        return self.path / RESOLVE_SPEC

    @property
    def resolved(self) -> Path:
        return self.path / RESOLVED


# ----------------------------------------------------------------------------- creating a run


def new_run_id(tag: str = "") -> str:
    """'20261122-213005-hf-vllm-3f9a0c': sortable by time, unique by 3 random bytes (GPU lanes of one step
    start runs of one tag in one second: 50 ids shared a 2-byte suffix once in 54); `tag` is optional."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    parts = [stamp, tag, secrets.token_hex(3)] if tag else [stamp, secrets.token_hex(3)]
    return "-".join(parts)


@contextmanager
def creating(results_dir: Path, run_id: str) -> Iterator[RunFolder]:
    """The temporary folder `results_dir/.tmp-<run_id>` to write a run into.

    Renamed to `results_dir/<run_id>` when the block ends; removed when it raises (anything,
    KeyboardInterrupt included), so nothing half-written stays in results/.
    """
    tmp = _start(Path(results_dir), run_id)
    try:
        yield RunFolder(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _finish(tmp)


def _start(results_dir: Path, run_id: str) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    if (results_dir / run_id).exists():
        raise LabInputError(f"run folder {results_dir / run_id} already exists; runs are never overwritten")
    tmp = results_dir / f"{TMP_PREFIX}{run_id}"
    tmp.mkdir()
    return tmp


def _finish(tmp: Path) -> Path:
    final = tmp.with_name(tmp.name.removeprefix(TMP_PREFIX))
    if final.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        raise LabInputError(f"run folder {final} already exists; runs are never overwritten")
    os.rename(tmp, final)
    return final


def is_sharing_sweep(path: Path) -> bool:
    """Whether `path` is a sharing sweep's folder (its points are run folders of their own)."""
    return (Path(path) / POINTS).is_dir() and (Path(path) / MANIFEST).exists()


def check_run_dir(path: Path) -> Path:
    """A finished run folder, or a LabInputError that says what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise LabInputError(f"run folder not found: {path} (give a folder under results/)")
    if not (path / MANIFEST).exists() or not (path / SUMMARY).exists():
        raise LabInputError(f"{path} is not a finished run folder: it has no {MANIFEST} or {SUMMARY}")
    return path


# ----------------------------------------------------------------------------- writing


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write a whole file at once: a temporary sibling `<name>.part`, then a rename over `path`.

    A reader never sees half a file, and a writer killed mid-way leaves the old file (or none).
    """
    tmp = path.with_name(path.name + ".part")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: object) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write(path, "".join(json.dumps(row, default=str) + "\n" for row in rows))


# ----------------------------------------------------------------------------- reading


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    return list(iter_jsonl(path))


def existing(path: Path) -> Path | None:
    """`path`, or its gzipped twin `path.gz` (long files are committed compressed), or None."""
    if path.exists():
        return path
    gz = path.with_name(path.name + ".gz")
    return gz if gz.exists() else None


def open_text(path: Path) -> IO[str]:
    """Open a text file for reading, or its gzipped twin `path.gz` where only that exists."""
    found = existing(Path(path))
    if found is None:
        raise FileNotFoundError(path)
    return gzip.open(found, "rt", encoding="utf-8") if found.suffix == ".gz" else found.open(encoding="utf-8")


class MalformedJsonLine(LabInputError):
    """A line of a JSON lines file that is not JSON, and not a torn last line: the file is damaged."""


class JsonLines:
    """The rows of a JSON lines file (or its .gz twin); a missing file has none.

    Only a torn last line is skipped: the last line of the file, without its newline, that is not
    valid JSON, as a process killed while writing leaves it. Its number is then `torn_line` (after
    iterating), so that the reader can say so. Any other line that is not JSON raises
    MalformedJsonLine naming the file and the line.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.torn_line: int | None = None

    def __iter__(self) -> Iterator[dict]:
        self.torn_line = None
        if existing(self.path) is None:
            return
        with open_text(self.path) as f:
            pending: tuple[int, str, json.JSONDecodeError] | None = None  # a bad line, torn if it is the last
            for number, line in enumerate(f, start=1):
                if pending is not None:
                    raise self._malformed(*pending)
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    pending = (number, line, exc)
            if pending is not None:
                number, line, exc = pending
                if line.endswith("\n"):  # a whole line that is not JSON: not torn by a killed writer
                    raise self._malformed(*pending)
                self.torn_line = number

    def _malformed(self, number: int, line: str, exc: json.JSONDecodeError) -> MalformedJsonLine:
        return MalformedJsonLine(
            f"{self.path}, line {number}: not valid JSON ({exc.msg}: {line.strip()[:80]!r}). Only a torn "
            "last line, left by a process killed while writing, is skipped; this one is not, so the file "
            "is damaged. Fix: restore the file, or run the experiment again"
        )


def iter_jsonl(path: Path) -> Iterator[dict]:
    """Rows of a JSON lines file (or its .gz twin); a missing file has none (`JsonLines`)."""
    return iter(JsonLines(path))
