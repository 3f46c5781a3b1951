"""What every experiment does, through its launcher: resolve the model once, run one backend/mode in a
process of its own with the collector beside it, and write the manifest.

This module is light (no torch, no vllm): on a Docker host it runs in a small host environment and
starts the real work in containers through the launcher.
"""

from __future__ import annotations

import subprocess
import sys
import time

from lab import run_folder as rf
from lab.config import RunSpec
from lab.errors import LabInputError
from lab.hardware.env import collect_environment
from lab.launchers.base import Echo, Launcher
from lab.records import BackendResult


def resolve_once(run: RunSpec, folder: rf.RunFolder, launcher: Launcher, echo: Echo) -> dict:
    """Build (or check) the model once and check the workload against it, before any backend starts.

    Runs `lab resolve` in the hf service: a bad model or workload stops the experiment here with
    exit 2. Returns what it found (`lab.runner.Inputs.to_dict`) and how long it took (`s`).
    """
    model = run.engine.model
    echo(f"model {model}: building or checking it, and the workload against it (built once, then cached)")
    rf.write_json(folder.resolve_spec, run.to_dict())
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        launcher.command("hf", ["resolve", "--spec", str(folder.resolve_spec), "--out", str(folder.resolved)]),
        env=launcher.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    errors = []
    for line in proc.stderr:  # the build's progress, shown as it comes
        errors.append(line)
        if not line.startswith("error: "):
            echo(f"    {line.rstrip()}")
    stdout = proc.stdout.read()
    returncode = proc.wait()
    folder.resolve_spec.unlink()
    if returncode == 2:
        raise LabInputError(last_line("".join(errors)) or f"model {model!r} or its workload was not accepted")
    if returncode != 0:
        raise RuntimeError(f"resolving model {model} failed (exit {returncode}):\n{tail(''.join(errors) + stdout)}")
    resolved = rf.read_json(folder.resolved)
    folder.resolved.unlink()
    return dict(resolved, s=time.perf_counter() - t0)


def model_build(model: str, resolved: dict) -> dict:
    """The manifest's `model_build`: the model, its folder, and how long building or checking it took."""
    return {"model": model, "path": resolved["model_path"], "s": resolved["s"]}


def execute_run(
    run: RunSpec, part: rf.PartFolder, launcher: Launcher, echo: Echo, collector_interval_ms: int | None
) -> BackendResult:
    """Run one backend/mode with the collector beside it (None: without); return its result (never
    raises for a failed run)."""
    part.path.mkdir(parents=True)
    rf.write_json(part.spec, run.to_dict())
    collector = start_collector(run, part, launcher, collector_interval_ms) if collector_interval_ms else None
    t0 = time.perf_counter()
    with part.log.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            launcher.command(run.backend, ["run", "--spec", str(part.spec), "--out", str(part.path)]),
            env=launcher.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        for line in proc.stdout:  # the log keeps everything; the terminal shows the lab's own lines
            log.write(line)
            if line.startswith("lab:"):
                echo(f"    {run.name}: {line[4:].strip()}")
        returncode = proc.wait()
    stop_collector(collector, part)
    if part.result.exists():
        result = BackendResult.from_dict(rf.read_json(part.result))
    else:
        result = BackendResult(
            run.backend,
            run.mode,
            status="error",
            error=f"the {run.backend} process exited with code {returncode} before writing its result; "
            f"last lines of its log:\n{tail(part.log.read_text(encoding='utf-8'))}",
        )
        rf.write_json(part.result, result.to_dict())
    result.process_s = time.perf_counter() - t0
    result.exit_code = returncode
    return result


def collector_args(run_name: str, part: rf.PartFolder, collector_gpus: str | None, interval_ms: int) -> list[str]:
    """`lab collect`'s arguments for one backend's process tree; `collector_gpus` from the launcher."""
    args = ["collect", "--pid-file", str(part.pid), "--out", str(part.timeline), "--run", run_name]
    args += ["--interval-ms", str(interval_ms), "--stop-file", str(part.stop_file)]
    if collector_gpus:  # the backend's GPUs only: device-wide figures of other GPUs are other jobs'
        args += ["--gpus", collector_gpus]
    return args


def start_collector(run: RunSpec, part: rf.PartFolder, launcher: Launcher, interval_ms: int) -> subprocess.Popen:
    args = collector_args(run.name, part, launcher.collector_gpus(), interval_ms)
    log = part.collector_log.open("w", encoding="utf-8")
    return subprocess.Popen(
        launcher.command("collector", args), env=launcher.env(), stdout=log, stderr=subprocess.STDOUT
    )


def stop_collector(proc: subprocess.Popen | None, part: rf.PartFolder) -> None:
    """The collector stops by itself when the watched process exits; the stop file makes sure."""
    if proc is None:
        return
    part.stop_file.touch()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=10)
    part.stop_file.unlink(missing_ok=True)


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
