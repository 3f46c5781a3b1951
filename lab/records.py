"""The run folder: layout, atomic writes, JSON lines. Results are append-only.

    results/<run-id>/
        manifest.json     versions, hardware, git commit, the full configuration and seeds
        records.jsonl     one line per request per backend/mode
        summary.json      aggregates per backend/mode
        timeline.jsonl    the collector's samples (every backend/mode, tagged with "run")
        kv.jsonl          KV-cache samples taken by the backends during the timed phase
        report.md         generated from the files above; regenerated, never edited
        runs/<backend>-<mode>/   what each backend process wrote (spec, result, log)

A run is written into `results/.tmp-<run-id>/` and renamed when complete, so a half-written run is
never mistaken for a finished one, and an existing run folder is never overwritten.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator

from lab.errors import LabInputError

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
SUMMARY = "summary.json"
TIMELINE = "timeline.jsonl"
KV_SAMPLES = "kv.jsonl"
REPORT = "report.md"
RUNS = "runs"
TMP_PREFIX = ".tmp-"


def new_run_id(label: str = "") -> str:
    """'20261122-213005-hf-vllm-3f9a': sortable by time, unique by a random suffix."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    parts = [stamp, label, secrets.token_hex(2)] if label else [stamp, secrets.token_hex(2)]
    return "-".join(parts)


def start_run_dir(results_dir: Path, run_id: str) -> Path:
    """Create the temporary folder a run is written into."""
    results_dir.mkdir(parents=True, exist_ok=True)
    if (results_dir / run_id).exists():
        raise LabInputError(f"run folder {results_dir / run_id} already exists; runs are never overwritten")
    tmp = results_dir / f"{TMP_PREFIX}{run_id}"
    tmp.mkdir()
    return tmp


def finish_run_dir(tmp: Path) -> Path:
    """Rename the finished temporary folder to its final name; refuse to overwrite."""
    final = tmp.with_name(tmp.name[len(TMP_PREFIX):])
    if final.exists():
        raise LabInputError(f"run folder {final} already exists; runs are never overwritten")
    os.rename(tmp, final)
    return final


def discard_run_dir(tmp: Path) -> None:
    """Remove a temporary run folder after a failure, so nothing half-written stays in results/."""
    if tmp.name.startswith(TMP_PREFIX):
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically (temporary file + rename)."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Write JSON lines atomically (temporary file + rename)."""
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    return list(iter_jsonl(path))


def existing(path: Path) -> Path | None:
    """`path`, or its gzipped twin `path.gz` (long timelines are committed compressed), or None."""
    if path.exists():
        return path
    gz = path.with_name(path.name + ".gz")
    return gz if gz.exists() else None


def open_text(path: Path):
    """Open a text file for reading, or its gzipped twin `path.gz` where only that exists."""
    found = existing(path)
    if found is None:
        raise FileNotFoundError(path)
    return gzip.open(found, "rt", encoding="utf-8") if found.suffix == ".gz" else found.open(encoding="utf-8")


def iter_jsonl(path: Path) -> Iterator[dict]:
    """Rows of a JSON lines file (or its .gz twin); a missing file has none. A torn last line is skipped."""
    if existing(path) is None:
        return
    with open_text(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def check_run_dir(path: Path) -> Path:
    """A finished run folder, or a LabInputError that says what is wrong."""
    if not path.is_dir():
        raise LabInputError(f"run folder not found: {path} (give a folder under results/)")
    if not (path / MANIFEST).exists() or not (path / SUMMARY).exists():
        raise LabInputError(f"{path} is not a finished run folder: it has no {MANIFEST} or {SUMMARY}")
    return path
