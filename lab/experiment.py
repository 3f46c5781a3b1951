"""An experiment: every backend/mode in its own process, one after the other, with the collector.

This module is light (no torch, no vllm): on a Docker host it runs in a small host environment and
starts the real work in containers through the launcher. The steps:

1. build (or check) the model once, through the launcher, so no backend pays for it;
2. for each backend/mode: start `lab run` and, beside it, `lab collect` watching its process tree;
3. merge what the runs wrote into records.jsonl, kv.jsonl, timeline.jsonl and summary.json;
4. write manifest.json and report.md, then rename the temporary folder to results/<run-id>/.

A backend that fails is recorded with its error and the others still run; anything else that fails
removes the temporary folder, so nothing half-written stays in results/.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from lab import records as rec
from lab.config import ExperimentSpec, RunSpec
from lab.errors import LabInputError
from lab.progress import StepBar

Echo = Callable[[str], None]
LOG = "log.txt"
TIMELINE_PART = "timeline.jsonl"
COLLECTOR_LOG = "collector.log"
STOP_FILE = "stop"


def run_experiment(spec: ExperimentSpec, results_dir: Path, launcher, echo: Echo, label: str = "") -> Path:
    """Run every backend/mode of `spec`; return the finished run folder."""
    tmp = rec.start_run_dir(results_dir, rec.new_run_id(label))
    try:
        started = time.time()
        launcher.prepare(echo)
        specs = spec.run_specs()
        model_build = prepare_model(specs[0], tmp, launcher, echo)
        results = []
        bar = StepBar(len(specs))  # a live bar on a terminal; quiet in logs
        for number, run in enumerate(specs, start=1):
            with bar.step(f"{run.backend}/{run.mode}"):
                bar.echo(f"[{number}/{len(specs)}] {run.backend}/{run.mode}: starting its own process")
                result = execute_run(run, tmp / rec.RUNS / run.name, launcher, spec, bar.echo)
                bar.echo(f"[{number}/{len(specs)}] {run.backend}/{run.mode}: {describe_result(result)}")
            results.append(result)
        merge_runs(tmp, [s.name for s in specs])
        rec.write_json(tmp / rec.MANIFEST, manifest(spec, launcher, results, model_build, started, tmp.name))
        from lab.report import write_report

        write_report(tmp)
        return rec.finish_run_dir(tmp)
    except BaseException:
        rec.discard_run_dir(tmp)
        raise


def prepare_model(run: RunSpec, tmp: Path, launcher, echo: Echo) -> dict:
    """Build (or check) the model once and check the workload against it, before any backend starts.

    Runs `lab prepare` in the hf service: a bad model or workload stops the experiment here with exit 2.
    """
    model = run.engine.model
    echo(f"model {model}: building or checking it, and the workload against it (built once, then cached)")
    spec_path = tmp / "prepare.json"
    rec.write_json(spec_path, run.to_dict())
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        launcher.command("hf", ["prepare", "--spec", str(spec_path)]),
        env=launcher.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
    )
    errors = []
    for line in proc.stderr:  # the build's progress, shown as it comes (stdout is one line: the path)
        errors.append(line)
        if not line.startswith("error: "):
            echo(f"    {line.rstrip()}")
    stdout = proc.stdout.read()
    returncode = proc.wait()
    spec_path.unlink()
    if returncode == 2:
        raise LabInputError(last_line("".join(errors)) or f"model {model!r} or its workload was not accepted")
    if returncode != 0:
        raise RuntimeError(f"preparing model {model} failed (exit {returncode}):\n{tail(''.join(errors) + stdout)}")
    return {"model": model, "path": last_line(stdout), "s": time.perf_counter() - t0}


def execute_run(run: RunSpec, run_dir: Path, launcher, spec: ExperimentSpec, echo: Echo) -> dict:
    """Run one backend/mode with the collector beside it; return its result (never raises for a failed run)."""
    run_dir.mkdir(parents=True)
    spec_path = run_dir / "spec.json"
    rec.write_json(spec_path, run.to_dict())
    collector = start_collector(run, run_dir, launcher, spec) if spec.collect else None
    t0 = time.perf_counter()
    with (run_dir / LOG).open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            launcher.command(run.backend, ["run", "--spec", str(spec_path), "--out", str(run_dir)]),
            env=launcher.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        for line in proc.stdout:  # the log keeps everything; the terminal shows the lab's own lines
            log.write(line)
            if line.startswith("lab:"):
                echo(f"    {run.name}: {line[4:].strip()}")
        returncode = proc.wait()
    stop_collector(collector, run_dir)
    result_path = run_dir / "result.json"
    if result_path.exists():
        result = rec.read_json(result_path)
    else:
        result = {
            "backend": run.backend, "mode": run.mode, "status": "error",
            "error": f"the {run.backend} process exited with code {returncode} before writing its result; "
                     f"last lines of its log:\n{tail((run_dir / LOG).read_text(encoding='utf-8'))}",
        }
        rec.write_json(result_path, result)
    result["process_s"] = time.perf_counter() - t0
    result["exit_code"] = returncode
    return result


def start_collector(run: RunSpec, run_dir: Path, launcher, spec: ExperimentSpec) -> subprocess.Popen:
    args = [
        "collect", "--pid-file", str(run_dir / "pid"), "--out", str(run_dir / TIMELINE_PART),
        "--label", run.name, "--interval-ms", str(spec.collector_interval_ms),
        "--stop-file", str(run_dir / STOP_FILE),
    ]
    log = (run_dir / COLLECTOR_LOG).open("w", encoding="utf-8")
    return subprocess.Popen(launcher.command("collector", args), env=launcher.env(), stdout=log, stderr=subprocess.STDOUT)


def stop_collector(proc: subprocess.Popen | None, run_dir: Path) -> None:
    """The collector stops by itself when the watched process exits; the stop file makes sure."""
    if proc is None:
        return
    (run_dir / STOP_FILE).touch()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=10)
    (run_dir / STOP_FILE).unlink(missing_ok=True)


def merge_runs(run_dir: Path, names: list[str]) -> None:
    """Gather the runs' files into the run folder's records, kv, timeline and summary."""
    from lab.collector import read_timeline
    from lab.summary import summarize_run

    records, kv, timeline, summaries = [], [], [], []
    for name in names:
        part = run_dir / rec.RUNS / name
        records.extend(rec.iter_jsonl(part / rec.RECORDS))
        kv.extend(dict(row, run=name) for row in rec.iter_jsonl(part / rec.KV_SAMPLES))
        timeline_path = part / TIMELINE_PART  # header, samples, summary of the collector (absent: it was off)
        collected = read_timeline(timeline_path) if rec.existing(timeline_path) else {"samples": []}
        timeline.extend(collected["samples"])
        summary = summarize_run(rec.read_json(part / "result.json"), list(rec.iter_jsonl(part / rec.RECORDS)),
                                collected["samples"])
        summary["collector"] = collector_facts(collected)
        summaries.append(summary)
    rec.write_jsonl(run_dir / rec.RECORDS, records)
    rec.write_jsonl(run_dir / rec.KV_SAMPLES, kv)
    rec.write_jsonl(run_dir / rec.TIMELINE, timeline)
    rec.write_json(run_dir / rec.SUMMARY, {"runs": summaries})


def collector_facts(collected: dict) -> dict:
    """How the timeline was taken: its source, why NVML was not used, and the collector's own cost."""
    header, summary = collected.get("header") or {}, collected.get("summary") or {}
    keys = ("source", "fallback_reason", "interval_ms", "mean_interval_ms", "max_gap_ms", "skipped_ticks",
            "stop_reason", "collector_cpu_pct", "samples")
    facts = {k: summary.get(k, header.get(k)) for k in keys}
    facts["complete"] = collected.get("complete")
    return facts


def manifest(spec: ExperimentSpec, launcher, results: list[dict], model_build: dict, started: float, tmp_name: str) -> dict:
    from lab.env import collect_environment

    run_envs = {f"{r['backend']}/{r['mode']}": r.get("environment") for r in results}
    return {
        "run_id": tmp_name[len(rec.TMP_PREFIX):],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": sys.argv,
        "runtime": launcher.runtime,
        "launcher": launcher.describe(),
        "config": spec.to_dict(),
        "seed": spec.engine.seed,
        "model_build": model_build,
        "host": collect_environment(),
        "backend_environments": run_envs,
    }


def describe_result(result: dict) -> str:
    if result.get("status") == "ok":
        return f"ok (load {result.get('load_s', 0):.1f} s, timed pass {result.get('generate_s', 0):.2f} s)"
    return f"FAILED: {first_line(result.get('error') or 'unknown error')} (recorded; the other backends still run)"


def with_device(spec: ExperimentSpec, device: str, model: str) -> ExperimentSpec:
    return dataclasses.replace(spec, engine=dataclasses.replace(spec.engine, device=device, model=model))


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1].removeprefix("error: ") if lines else ""


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
