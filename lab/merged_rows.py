"""A backend/mode's rows of a run folder's merged JSON lines files, and whether its own copy is wholly there.

Merge (`lab.experiments.merge`) gathers what each backend/mode wrote under runs/<name>/ (records.jsonl,
kv.jsonl, kv_passes.jsonl, timeline.jsonl) into the run folder's file of the same name, so every line is
kept twice. A compacted folder (`scripts/compact_results.py`) keeps the merged copy alone, only where it
holds exactly the lines of the backend/mode's own file; readers (`lab.report.run_view`) then take a
backend/mode's rows from its own file where it is still there, else from the merged file.

Which merged rows are a backend/mode's: a request record names its `backend` and `mode`
(`config.run_name`); a KV sample or a line of the collector carries its `run` (merge adds it to the KV
samples; the collector writes it into each of its lines).
"""

from __future__ import annotations

from collections.abc import Iterable

from lab import run_folder as rf
from lab.config import run_name

MERGED_FILES = (rf.RECORDS, rf.KV_SAMPLES, rf.KV_PASSES, rf.TIMELINE)
KV_FILES = (rf.KV_SAMPLES, rf.KV_PASSES)  # merge adds the `run` the backend did not write


def run_of(row: dict, file_name: str) -> str | None:
    """The backend/mode ('hf-batched') a line of the merged file `file_name` belongs to."""
    if file_name == rf.RECORDS:
        return run_name(row.get("backend"), row.get("mode"))
    return row.get("run")


def rows_of_run(rows: Iterable[dict], file_name: str, name: str) -> list[dict]:
    """The lines of backend/mode `name` among a merged file's, in their order."""
    return [row for row in rows if run_of(row, file_name) == name]


def as_merged(row: dict, file_name: str, name: str) -> dict:
    """A line of runs/<name>/<file_name> as merge writes it into the merged file."""
    return dict(row, run=name) if file_name in KV_FILES else row


def as_own(row: dict, file_name: str) -> dict:
    """A merged line as the backend/mode's own file holds it (`as_merged` undone)."""
    return {k: v for k, v in row.items() if k != "run"} if file_name in KV_FILES else row


def not_merged(own: list[dict], torn_line: int | None, merged: list[dict], file_name: str, name: str) -> str | None:
    """Why runs/<name>/<file_name> (its rows `own`, the number of its torn last line if any) is not wholly in
    the merged file (its rows `merged`), or None where the merged file holds exactly its lines, in order."""
    if torn_line is not None:
        return f"its last line ({torn_line}) is torn, a part of a line that the merged file does not hold"
    if file_name in KV_FILES and any("run" in row for row in own):
        return "its lines carry a 'run' of their own, which the merged file's would hide"
    mine = rows_of_run(merged, file_name, name)
    if [as_merged(row, file_name, name) for row in own] != mine:
        return f"the merged file holds {len(mine)} lines of {name}, not the same as its {len(own)}"
    return None


def whole_timeline(merged: list[dict], own: list[list[dict]]) -> list[dict] | None:
    """The merged timeline with the collector's header and summary lines of each backend/mode put back around
    its samples: the concatenation of the backend/modes' own timelines (`own`, in merge's order), where the
    merged file holds exactly their samples (merge keeps the samples alone) or already all their lines;
    None where it holds anything else."""
    whole = [row for rows in own for row in rows]
    if merged == whole:
        return merged
    samples = [row for row in whole if row.get("kind", "sample") == "sample"]
    return whole if merged == samples else None


class RunRows:
    """A finished run folder's rows of each backend/mode: its own file's where it is there, else the merged
    file's (read once)."""

    def __init__(self, folder: rf.RunFolder) -> None:
        self.folder = folder
        self._merged: dict[str, list[dict]] = {}

    def of(self, file_name: str, name: str) -> list[dict]:
        """The lines of runs/<name>/<file_name>, or the merged file's lines of `name` where it was compacted."""
        own = self.folder.part(name).path / file_name
        if rf.existing(own) is not None:
            return rf.read_jsonl(own)
        return [as_own(row, file_name) for row in rows_of_run(self.merged(file_name), file_name, name)]

    def kv_every_pass(self, name: str) -> list[dict]:
        """kv_passes.jsonl's lines of `name`, or kv.jsonl's where a run written before it kept only its last
        pass's samples (`PartFolder.kv_every_pass`; merge wrote the merged kv_passes.jsonl from the same)."""
        kept = rf.existing(self.folder.part(name).kv_passes) or rf.existing(self.folder.kv_passes)
        return self.of(rf.KV_PASSES if kept else rf.KV_SAMPLES, name)

    def merged(self, file_name: str) -> list[dict]:
        if file_name not in self._merged:
            self._merged[file_name] = rf.read_jsonl(self.folder.path / file_name)
        return self._merged[file_name]
