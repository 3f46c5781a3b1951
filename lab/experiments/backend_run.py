"""One backend/mode in a process of its own, the collector beside it, within its time limit.

However the process ends, the experiment gets a `BackendResult` and goes on with the next backend:
- it wrote result.json (ok, or an error it caught itself, such as vLLM refusing a KV pool too small);
- it died before writing one (killed by a signal, the out-of-memory killer, a crash): an error result
  with its exit signal or code and the last lines of its log;
- it ran past its time limit: it is stopped with every process it started, and recorded as an error
  that names the limit (an online sweep keeps the rates it finished: `lab.rates_kept`);
- it wrote result.json and still ran `lab.teardown.EXIT_GRACE_S` later (its engine's close or its exit
  hung): it is stopped with every process it started, and its result is kept (`exit_stuck_s`).
Whatever it left running in its process group (an orphaned engine core) is killed and listed.

This module is light (no torch, no vllm): on a Docker host it runs in a small host environment.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import time

from lab import run_folder as rf
from lab.config import RunSpec
from lab.cut import Cut
from lab.launchers.base import Echo
from lab.launchers.process import LabProcess, LogPump
from lab.launchers.supervisor import Supervisor
from lab.records import BackendResult
from lab.teardown import EXIT_GRACE_S

# "ValueError: ...", also after a prefix such as vLLM's "(EngineCore pid=1) ERROR ... [core.py:1] ".
EXCEPTION_LINE = re.compile(r"\b[A-Za-z_][\w.]*(?:Error|Exception): (?P<message>.+)$")
COLLECTOR_STOP_S = 30.0  # the collector stops by itself when the backend exits; this is the stop file's wait
CUT_LOG_LINES = 20  # a backend's log shown when a cut stops it: its last steps, or a traceback's end


def execute_run(
    run: RunSpec,
    part: rf.PartFolder,
    processes: Supervisor,
    echo: Echo,
    collector_interval_ms: int | None,
    timeout_s: float,
    timeout_text: str = "",
) -> BackendResult:
    """Run one backend/mode with the collector beside it (None: without) and return its result; never
    raises for a failed, crashed or hung run (an interrupt, `lab.errors.Interrupted`, goes through)."""
    part.path.mkdir(parents=True)
    rf.write_json(part.spec, run.to_dict())
    collector = start_collector(run, part, processes, collector_interval_ms) if collector_interval_ms else None
    t0 = time.perf_counter()
    log = LogPump(part.log, show=lambda line: echo(f"    {run.name}: {line[4:].strip()}"))
    try:
        proc = processes.start(
            run.backend,
            ["run", "--spec", str(part.spec), "--out", str(part.path)],
            run.name,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        proc.pump(log)
        ended = wait_for_exit(proc, part, processes, timeout_s, EXIT_GRACE_S)
        timed_out = ended == TIMED_OUT
        left = processes.finish(proc) if ended == EXITED else processes.stop(proc)
    finally:
        log.close()
    stop_collector(collector, part, processes)
    result = read_result(run, part, proc, timed_out, timeout_text or f"{timeout_s:,.0f} s")
    if ended == STUCK_AFTER_RESULT:
        result.exit_stuck_s = EXIT_GRACE_S
        echo(f"    {run.name}: still running {EXIT_GRACE_S:.0f} s after writing its result; stopped it, result kept")
    result.process_s = time.perf_counter() - t0
    result.exit_code = proc.returncode
    result.exit_signal = proc.exit_signal()
    result.timeout_s = timeout_s
    pids = ", ".join(map(str, left))
    if left and ended == EXITED:  # what it left behind when it exited by itself
        result.leftover_pids = left
        echo(f"    {run.name}: killed {len(left)} process(es) it left running (pids {pids})")
    elif left:  # stopped by the lab (its time limit, or stuck after its result): its own tree, not left behind
        echo(f"    {run.name}: stopped {len(left)} process(es) of its tree (pids {pids})")
    rf.write_json(part.result, result.to_dict())
    return result


EXITED, TIMED_OUT, STUCK_AFTER_RESULT = "exited", "timed out", "stuck after its result"
POLL_S = 1.0  # how often the wait looks for result.json


def wait_for_exit(
    proc: LabProcess, part: rf.PartFolder, processes: Supervisor, timeout_s: float, grace_s: float = EXIT_GRACE_S
) -> str:
    """How the wait for the backend process ended: EXITED; TIMED_OUT, still running after `timeout_s`; or
    STUCK_AFTER_RESULT, still running `grace_s` after its result.json appeared (it is written before the
    engine's close: `lab.teardown`), so a close or exit that hangs costs `grace_s`, not the whole limit."""
    deadline = time.monotonic() + timeout_s
    written_at = None
    while True:
        if written_at is None and part.result.exists():
            written_at = time.monotonic()
        limit = deadline if written_at is None else min(deadline, written_at + grace_s)
        if processes.wait(proc, max(0.0, min(POLL_S, limit - time.monotonic()))) is not None:
            return EXITED
        if time.monotonic() >= limit:
            return TIMED_OUT if limit == deadline else STUCK_AFTER_RESULT


def read_result(run: RunSpec, part: rf.PartFolder, proc: LabProcess, timed_out: bool, limit: str) -> BackendResult:
    """The process's own result.json, or an error result that says how it ended."""
    written = BackendResult.from_dict(rf.read_json(part.result)) if part.result.exists() else None
    result = written or BackendResult(run.backend, run.mode, status="error")
    if timed_out:
        result.status = "error"
        result.error = (
            f"timed out: still running after {limit}; stopped it and every process it started (its log: "
            f"{part.log.relative_to(part.path.parent.parent)}). Fix: a longer --timeout if the work needs it"
        )
        if result.cut:  # an online sweep's finished rates were kept: the limit cut the rest, not a signal
            result.cut = recut(result.cut, f"timed out: still running after {limit}")
    elif written is None:
        result.error = (
            f"the {run.backend} process {how_it_ended(proc)} before writing its result; "
            f"last lines of its log:\n{log_tail(part)}"
        )
    elif not result.ok and (cause := root_cause(part, result.error or "")):
        result.error = f"{result.error} (in its log: {cause})"
    return result


def recut(cut: dict, reason: str, signal: str | None = None) -> dict:
    """A backend's `cut` (its finished rates kept) with the reason that really cut it: the backend only
    saw the SIGTERM by which the experiment stopped it."""
    return dataclasses.replace(Cut.from_dict(cut), reason=reason, signal=signal).to_dict()


def root_cause(part: rf.PartFolder, error: str) -> str | None:
    """The last exception line of the log that the recorded error does not already hold.

    An engine's child process reports its own failure in the log only: vLLM's engine core raises
    "No available memory for the cache blocks..." there, and the backend process records just
    "Engine core initialization failed. See root cause above".
    """
    text = part.log.read_text(encoding="utf-8", errors="replace") if part.log.exists() else ""
    for line in reversed(text.splitlines()):
        found = EXCEPTION_LINE.search(line)
        if found and not line.startswith("lab:") and found.group("message") not in error:
            return found.group(0)
    return None


def how_it_ended(proc: LabProcess) -> str:
    signal = proc.exit_signal()
    if signal == "SIGKILL":
        return "was killed by SIGKILL (the kernel's out-of-memory killer sends it, and `kill -9`)"
    if signal:
        return f"was killed by {signal}"
    return f"exited with code {proc.returncode}"


def log_tail(part: rf.PartFolder, lines: int = 15) -> str:
    text = part.log.read_text(encoding="utf-8", errors="replace") if part.log.exists() else ""
    return "\n".join(text.strip().splitlines()[-lines:])


def cut_log_lines(name: str, part: rf.PartFolder, kept: bool, lines: int = CUT_LOG_LINES) -> list[str]:
    """What a cut shows of the backend it stopped mid-way: the last `lines` lines of its own log (where it
    was slow or stuck), before its folder goes (`kept`: it stays); [] where it wrote no log."""
    tail = log_tail(part, lines)
    if not tail:
        return []
    where = "kept in its folder" if kept else "removed with its unfinished folder"
    log = part.log.relative_to(part.path.parent.parent)
    return [f"{name} was running when the run was cut; the last lines of its log ({log}, {where}):"] + [
        f"    | {line}" for line in tail.splitlines()
    ]


def end_cut_part(name: str, part: rf.PartFolder, kept: bool, echo: Echo) -> None:
    """A part (a backend/mode's or a measured point's runs/<name>/) that was running when its run was cut:
    the last lines of its log go to `echo` (what it was doing), then it is removed unless `kept`."""
    for line in cut_log_lines(name, part, kept):
        echo(line)
    if not kept:
        shutil.rmtree(part.path, ignore_errors=True)


def collector_args(run_name: str, part: rf.PartFolder, collector_gpus: str | None, interval_ms: int) -> list[str]:
    """`lab collect`'s arguments for one backend's process tree; `collector_gpus` from the launcher."""
    args = ["collect", "--pid-file", str(part.pid), "--out", str(part.timeline), "--run", run_name]
    args += ["--interval-ms", str(interval_ms), "--stop-file", str(part.stop_file)]
    if collector_gpus:  # the backend's GPUs only: device-wide figures of other GPUs are other jobs'
        args += ["--gpus", collector_gpus]
    return args


def start_collector(run: RunSpec, part: rf.PartFolder, processes: Supervisor, interval_ms: int) -> LabProcess:
    args = collector_args(run.name, part, processes.launcher.collector_gpus(), interval_ms)
    with part.collector_log.open("w", encoding="utf-8") as log:  # the child keeps its own descriptor
        return processes.start("collector", args, f"{run.name}-collector", stdout=log, stderr=subprocess.STDOUT)


def stop_collector(proc: LabProcess | None, part: rf.PartFolder, processes: Supervisor) -> None:
    """The collector stops by itself when the watched process exits; the stop file makes sure."""
    if proc is None:
        return
    part.stop_file.touch()
    if processes.wait(proc, COLLECTOR_STOP_S) is None:
        processes.stop(proc)
    else:
        processes.finish(proc)
    part.stop_file.unlink(missing_ok=True)
