"""Keep each line of a finished run folder once: remove a backend/mode's own copy of what merge gathered.

Merge (`lab.experiments.merge`) writes each backend/mode's records.jsonl, kv.jsonl, kv_passes.jsonl and the
collector's samples into the run folder's files of the same name and leaves runs/<name>/'s copies, so
committed results held every line twice. This removes runs/<name>/<file> (or its .gz) only where the merged
file holds exactly its lines (`lab.merged_rows.not_merged`: parsed, per backend/mode, in order; a torn last
line or a damaged file is kept). The merged timeline.jsonl first gets back the collector's header and
summary lines of each backend/mode (merge keeps its samples alone), so that nothing of runs/<name>/
timeline.jsonl is lost. `lab report` reads the merged lines where a backend/mode's own file is gone
(`lab.merged_rows.RunRows`).

Each folder (a sharing sweep with its points/ as one) is first compacted on a temporary copy, and `lab
report` run on it and on an untouched copy: every file of the two copies that compacting did not change
must then be byte-identical (report.md, kv_breakdown.json, plots.json, the plots, summary.json; a sharing
sweep's sharing.md too), else the folder is left as it is. Files under runs/<name>/ranks/ (the other ranks
of a tensor-parallel run) are never merged and stay. Running it again changes nothing.

Usage: PYTHONPATH=. python scripts/compact_results.py [--dry-run] RUN_DIR [RUN_DIR ...]
(a RUN_DIR may be a folder of run folders: every finished one below it is compacted)
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lab import run_folder as rf
from lab.config import run_name
from lab.errors import LabInputError
from lab.merged_rows import MERGED_FILES, not_merged, whole_timeline
from lab.report.sharing_writer import write_sharing_report
from lab.report.writer import write_report


@dataclass
class Compaction:
    """What compacting one run folder changed, or would: the removed files, and those kept with why."""

    removed: list[Path] = field(default_factory=list)
    kept: list[tuple[Path, str]] = field(default_factory=list)
    timeline_rewritten: bool = False


def compact_run(folder: Path, apply: bool) -> Compaction:
    """Compact the finished run folder `folder` (`apply` False: only say what would change)."""
    run = rf.RunFolder(folder)
    names = [run_name(r["backend"], r["mode"]) for r in rf.read_json(run.summary)["runs"]]
    done = Compaction()
    for file_name in MERGED_FILES:
        owns = [(name, run.part(name).path / file_name) for name in names]
        owns = [(name, rf.existing(path)) for name, path in owns if rf.existing(path) is not None]
        if not owns:
            continue
        merged_path = rf.existing(folder / file_name)
        if merged_path is None:
            done.kept += [(path, f"no merged {file_name}") for _, path in owns]
            continue
        try:
            merged = rf.read_jsonl(merged_path)
            read = {name: rf.JsonLines(path) for name, path in owns}
            rows = {name: list(lines) for name, lines in read.items()}
        except LabInputError as exc:
            done.kept += [(path, str(exc)) for _, path in owns]
            continue
        if file_name == rf.TIMELINE:
            whole = whole_timeline(merged, [rows[name] for name, _ in owns])
            if whole is None:
                done.kept += [(path, "the merged timeline is not exactly the runs' samples") for _, path in owns]
                continue
            if whole != merged:
                done.timeline_rewritten = True
                if apply:
                    write_jsonl_like(merged_path, whole)
                merged = whole
        for name, path in owns:
            why = not_merged(rows[name], read[name].torn_line, merged, file_name, name)
            if why is not None:
                done.kept.append((path, why))
                continue
            done.removed.append(path)
            if apply:
                path.unlink()
    return done


def write_jsonl_like(path: Path, rows: list[dict]) -> None:
    """Write `rows` as merge does (`run_folder.write_jsonl`), gzipped where `path` is a .gz."""
    text = "".join(json.dumps(row, default=str) + "\n" for row in rows)
    rf.atomic_write(path, gzip.compress(text.encode("utf-8"), mtime=0) if path.suffix == ".gz" else text)


def run_folders(unit: Path) -> list[Path]:
    """The run folders of a unit: a sharing sweep's points, or the run folder itself."""
    if rf.is_sharing_sweep(unit):
        return sorted(p for p in rf.RunFolder(unit).points.iterdir() if (p / rf.SUMMARY).exists())
    return [unit]


def units_below(path: Path) -> list[Path]:
    """Every finished run folder or sharing sweep at or below `path` (not inside one)."""
    if rf.is_sharing_sweep(path) or ((path / rf.MANIFEST).exists() and (path / rf.SUMMARY).exists()):
        return [path]
    return [unit for child in sorted(path.iterdir()) if child.is_dir() for unit in units_below(child)]


def regenerate(unit: Path) -> None:
    """`lab report` on the unit: each run folder's report, then a sharing sweep's."""
    for folder in run_folders(unit):
        write_report(folder)
    if rf.is_sharing_sweep(unit):
        write_sharing_report(unit)


def report_differences(unit: Path) -> tuple[list[str], int]:
    """Compact a copy of `unit`, run `lab report` on it and on an untouched copy, and name every file that
    differs other than those compacting removed or rewrote; and how many files were compared."""
    with tempfile.TemporaryDirectory(prefix="compact-") as tmp:
        before, after = Path(tmp) / "before", Path(tmp) / "after"
        shutil.copytree(unit, before)
        shutil.copytree(unit, after)
        changed: set[Path] = set()
        for folder in run_folders(after):
            done = compact_run(folder, apply=True)
            changed |= {p.relative_to(after) for p in done.removed}
            if done.timeline_rewritten:
                changed.add(rf.existing(folder / rf.TIMELINE).relative_to(after))
        regenerate(before)
        regenerate(after)
        return differing(before, after, changed)


def differing(before: Path, after: Path, changed: set[Path]) -> tuple[list[str], int]:
    """The files (relative paths) not in `changed` that differ between the trees `before` and `after`, or
    are in one only; and how many were compared."""
    files = {p.relative_to(tree) for tree in (before, after) for p in tree.rglob("*") if p.is_file()} - changed
    differ = [p for p in sorted(files) if not is_same_file(before / p, after / p)]
    return [str(p) for p in differ], len(files)


def is_same_file(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed; change nothing")
    args = parser.parse_args(argv)
    refused = 0
    for unit in (u for path in args.run_dirs for u in units_below(path)):
        plans = [compact_run(folder, apply=False) for folder in run_folders(unit)]
        for kept in (k for plan in plans for k in plan.kept):
            print(f"kept {kept[0]}: {kept[1]}")
        if not any(plan.removed or plan.timeline_rewritten for plan in plans):
            continue
        differ, compared = report_differences(unit)
        if differ:
            refused += 1
            print(f"REFUSED {unit}: `lab report` differs after compacting in {', '.join(differ[:10])}")
            continue
        removed = sum(len(plan.removed) for plan in plans)
        if not args.dry_run:
            for folder in run_folders(unit):
                compact_run(folder, apply=True)
        verb = "would remove" if args.dry_run else "removed"
        print(f"{unit}: {verb} {removed} per-run copies; lab report unchanged in {compared} files")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
