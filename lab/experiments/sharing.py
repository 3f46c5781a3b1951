"""`lab experiment --n 1,2,4,6 --beam-width 2,4,6 --shared-prefix-tokens 0,80`: the memory-sharing sweep.

Each point (n samples, a beam width, or a shared prefix of K tokens) is one ordinary `lab experiment`
run folder, every backend/mode in its own process, written under the sweep's folder:

    results/<sweep-id>/
        manifest.json      the sweep's configuration, its points and their run folders
        sharing.json       the sharing figures per point and backend/mode (lab.report.sharing)
        sharing.md, sharing.html, sharing_saving.png, sharing_throughput.png
        points/<run-id>/   one finished run folder per point (its own report, `lab report` works on it)

vLLM runs twice at every point: vllm/offline with the prefix cache off (no sharing: the baseline) and
vllm/shared with it on, so the saving is measured, not assumed (`--backends vllm/shared` alone runs
only the shared engine, and no saving is computed). hf/continuous, where named, forks its n samples
inside transformers with their blocks shared (`lab.backends.hf_continuous_sharing`); its saving is
measured within its run. The sweep folder is written as
`.tmp-<id>` and renamed when every point is done (lab.run_folder.creating).

A sweep cut off part-way (Ctrl-C, SIGTERM from `timeout` or a lease ending, a later point failing outside
its backends) keeps the points that finished (`lab.experiments.sweep`): the manifest lists them, its
`cut` names the points not run and why, the report covers the finished ones and says so, and the folder
is renamed into results/ as usual; the exit code is 128 + N for signal N (else 1). The point that was
running is removed with its temporary folder: a point is whole (every backend at it) or not there.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lab import run_folder as rf
from lab.backends.hf_continuous_sharing import NO_BEAMS
from lab.config import ExperimentSpec, check_sharing, run_label
from lab.cut import Cut, cut_entry
from lab.errors import LabInputError
from lab.experiments.offline import run_experiment
from lab.experiments.steps import Finished
from lab.experiments.sweep import Sweep, supervised_folder
from lab.launchers.base import Echo, Launcher
from lab.models.resolve import TOKENIZER_FILES, has_tokenizer
from lab.report.sharing_writer import write_sharing_report

SHARING_BACKENDS = "hf/batched,vllm/offline,vllm/shared"  # the default runs of a sharing sweep
VLLM_PAIR = (("vllm", "offline"), ("vllm", "shared"))


@dataclass(frozen=True)
class SharingPoint:
    n: int = 1
    beam_width: int = 1
    shared_prefix_tokens: int = 0

    @property
    def label(self) -> str:
        """'n=2', 'beam=4', 'n=1' (the baseline), each with ', prefix=K' where a prefix is shared."""
        head = f"beam={self.beam_width}" if self.beam_width > 1 else f"n={self.n}"
        return head + (f", prefix={self.shared_prefix_tokens}" if self.shared_prefix_tokens else "")

    @property
    def slug(self) -> str:
        return self.label.replace(", ", "-").replace("=", "")

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), label=self.label)


def parse_counts(text: str | None, option: str, minimum: int) -> tuple[int, ...]:
    """'1,2,4,6' -> (1, 2, 4, 6); LabInputError naming `option` for anything else."""
    if not text:
        return ()
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise LabInputError(f"{option} takes integers, e.g. {option} 1,2,4; got {text!r}") from None
    if not values or min(values) < minimum:
        raise LabInputError(f"{option} takes integers of at least {minimum}, e.g. {option} 1,2,4; got {text!r}")
    return tuple(dict.fromkeys(values))


def sharing_points(ns: tuple[int, ...], beams: tuple[int, ...], prefixes: tuple[int, ...]) -> list[SharingPoint]:
    """Every n and every beam width, each with every shared prefix (none where none is given)."""
    prefixes = prefixes or (0,)
    points = [SharingPoint(n, 1, k) for n in ns for k in prefixes]
    points += [SharingPoint(1, w, k) for w in beams for k in prefixes]
    if not points:  # only --shared-prefix-tokens: one sequence per request
        points = [SharingPoint(1, 1, k) for k in prefixes]
    for point in points:
        check_sharing(point.n, point.beam_width, point.shared_prefix_tokens)
    return points


def check_sharing_spec(spec: ExperimentSpec, points: list[SharingPoint]) -> ExperimentSpec:
    """The sweep's runs, with both vLLM runs where vLLM runs; LabInputError for what cannot run."""
    if spec.engine.enable_prefix_caching:
        raise LabInputError(
            "--prefix-caching with a sharing sweep: vllm/offline is its baseline without sharing, so the "
            "prefix cache stays off there; vllm/shared turns it on (drop --prefix-caching)"
        )
    runs = list(spec.runs)
    if VLLM_PAIR[0] in runs:  # the baseline without sharing gets its shared twin (vllm/shared alone stays alone)
        runs = [r for r in runs if r[0] != "vllm"] + list(VLLM_PAIR)
    beams = [p.beam_width for p in points if p.beam_width > 1]
    if ("hf", "continuous") in runs and beams:
        raise LabInputError(f"--beam-width {','.join(map(str, beams))}: {NO_BEAMS}; drop hf/continuous from --backends")
    if beams and any(backend == "vllm" for backend, _ in runs) and not has_tokenizer(spec.engine.model):
        raise LabInputError(
            f"--beam-width {','.join(map(str, beams))} with vLLM: vLLM's beam search needs the model's tokenizer "
            f"(for its end-of-sequence token and the text it returns), and model folder {spec.engine.model} has "
            f"none ({', '.join(TOKENIZER_FILES)}). Fix: copy the model's tokenizer files into the folder, or "
            "leave vLLM out (--backends hf/batched)"
        )
    return dataclasses.replace(spec, runs=tuple(runs))


def run_sharing(
    spec: ExperimentSpec, points: list[SharingPoint], results_dir: Path, launcher: Launcher, echo: Echo, tag: str = ""
) -> Finished:
    """Run every point as its own experiment under the sweep folder; write the sharing report. A backend
    that fails at one point is recorded there (its error in that point's folder) and the sweep goes on;
    the returned `failed` names it with its point ('n=2: vllm/shared'). A cut (a signal, or an error
    outside any backend) after a point finished keeps the finished points (`lab.experiments.sweep`)."""
    spec = check_sharing_spec(spec, points)
    run_id = rf.new_run_id(tag or "sharing")
    with supervised_folder(results_dir, run_id, launcher, echo) as (folder, processes):
        started = time.time()
        labels = ", ".join(run_label(*r) for r in spec.runs)

        def run(point: SharingPoint) -> tuple[dict, Finished]:
            echo(f"sharing point {points.index(point) + 1}/{len(points)}: {point.label} ({labels})")
            finished = run_experiment(
                point_spec(spec, point), folder.points, launcher, echo, point.slug, keep_cut=False
            )
            return {"point": point.to_dict(), "run": finished.path.name}, finished

        sweep = Sweep(processes, echo, functools.partial(unfinished, folder))
        sweep.run(points, run, lambda p: p.label)
        swept = sweep.end()
        rf.write_json(
            folder.manifest,
            {
                "kind": "sharing",
                "run_id": folder.run_id,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "config": spec.to_dict(),
                "points": [entry for entry, _ in swept.done],
                **cut_entry(swept.cut),
            },
        )
        write_sharing_report(folder.path)
    failed = [f"{entry['point']['label']}: {label}" for entry, finished in swept.done for label in finished.failed]
    return Finished(results_dir / run_id, sum(f.runs for _, f in swept.done), failed, swept.cut)


def point_spec(spec: ExperimentSpec, point: SharingPoint) -> ExperimentSpec:
    """The sweep's experiment at one point: its n, beam width and shared prefix."""
    engine = dataclasses.replace(
        spec.engine, n=point.n, beam_width=point.beam_width, shared_prefix_tokens=point.shared_prefix_tokens
    )
    return dataclasses.replace(spec, engine=engine)


def unfinished(folder: rf.RunFolder, point: SharingPoint, cut: Cut) -> None:
    """The point that was running when the sweep was cut keeps nothing: its temporary folder under
    points/ is removed. Its experiment removes it itself, except where a signal landed while that folder
    was being created, before `rf.creating` guards it, or a second signal cut the removal short."""
    for tmp in folder.points.glob(f"{rf.TMP_PREFIX}*") if folder.points.is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True)
