"""What every experiment does, through its launcher: resolve the model once and write the manifest.
Running one backend/mode is `lab.experiments.backend_run`.

This module is light (no torch, no vllm): on a Docker host it runs in a small host environment and
starts the real work in containers through the launcher.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lab import run_folder as rf
from lab.config import RunSpec
from lab.cut import Cut
from lab.errors import LabInputError, StepFailed
from lab.hardware.env import collect_environment
from lab.launchers.base import Echo, Launcher
from lab.launchers.supervisor import Supervisor
from lab.records import BackendResult


@dataclass(frozen=True)
class Finished:
    """A finished run folder, how many processes it ran, the names of those that failed, and the cut
    that stopped it early, if one did (its finished points kept: `lab.experiments.sweep`)."""

    path: Path
    runs: int
    failed: list[str]
    cut: Cut | None = None

    @classmethod
    def of(cls, path: Path, results: list[BackendResult], cut: Cut | None = None) -> Finished:
        return cls(path, len(results), [r.label for r in results if not r.ok], cut)

    @property
    def exit_code(self) -> int:
        """0 done, 1 something failed (recorded), the cut's code where it was cut (`Cut.exit_code`)."""
        if self.cut is not None:
            return self.cut.exit_code
        return 1 if self.failed else 0


def resolve_once(run: RunSpec, folder: rf.RunFolder, processes: Supervisor, echo: Echo) -> dict:
    """Build (or check) the model once and check the workload against it, before any backend starts.

    Runs `lab resolve` in the hf service: a bad model or workload stops the experiment here with
    exit 2; a crash, with StepFailed (exit 1). Returns what it found (`lab.runner.Inputs.to_dict`)
    and how long it took (`s`).
    """
    model = run.engine.model
    echo(f"model {model}: building or checking it, and the workload against it (built once, then cached)")
    rf.write_json(folder.resolve_spec, run.to_dict())
    t0 = time.perf_counter()
    output: list[str] = []

    def show(line: str) -> None:  # the build's progress, shown as it comes; errors kept for the message
        output.append(line)
        if not line.startswith("error: "):
            echo(f"    {line.rstrip()}")

    proc = processes.start(
        "hf",
        ["resolve", "--spec", str(folder.resolve_spec), "--out", str(folder.resolved)],
        "resolve",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    proc.pump(show)
    returncode = processes.wait(proc)
    processes.finish(proc)
    folder.resolve_spec.unlink()
    if returncode == LabInputError.exit_code:
        raise LabInputError(last_line("".join(output)) or f"model {model!r} or its workload was not accepted")
    if returncode != 0:
        raise StepFailed(f"building or checking model {model} failed (exit {returncode}):\n{tail(''.join(output))}")
    resolved = rf.read_json(folder.resolved)
    folder.resolved.unlink()
    return dict(resolved, s=time.perf_counter() - t0)


def model_build(model: str, resolved: dict) -> dict:
    """The manifest's `model_build`: the model, its folder, and how long building or checking it took."""
    return {"model": model, "path": resolved["model_path"], "s": resolved["s"]}


def manifest(
    config: dict,
    launcher: Launcher,
    results: list[BackendResult],
    model_build: dict,
    started: float,
    folder: rf.RunFolder,
) -> dict:
    """manifest.json: the run's id and times, the command, the launcher, the configuration and seed,
    and the environment of the host and of every backend process."""
    return {
        "run_id": folder.run_id,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": sys.argv,
        "runtime": launcher.runtime,
        "launcher": launcher.describe(),
        "config": config,
        "seed": config["engine"]["seed"],
        "model_build": model_build,
        "host": collect_environment(),
        "backend_environments": {r.label: r.environment for r in results},
    }


def describe_result(result: BackendResult) -> str:
    if result.ok:
        return f"ok (load {result.load_s or 0:.1f} s, timed pass {result.generate_s or 0:.2f} s)"
    return f"FAILED: {first_line(result.error or 'unknown error')} (recorded; the other backends still run)"


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1].removeprefix("error: ") if lines else ""


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
