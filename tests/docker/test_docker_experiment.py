"""End to end in containers: `lab experiment --runtime docker --device cpu` builds the CPU images
(on the offline base where no registry answers) and runs every backend/mode in its own container
through compose, on synthetic:tiny and the seed workload (4 prompts x 50 new tokens). The same
real-engine checks as the native run (tests/integration/test_experiment.py), made on what the
containers wrote: every backend/mode ok with exact token counts, each run inside its image, the
collector (a container of its own) sampling each backend's process tree, the manifest's images."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.config import BACKEND_MODES, OPT_IN_MODES
from lab.launchers import images

pytestmark = [pytest.mark.docker, pytest.mark.engine]

ALL_RUNS = [f"{b}/{m}" for b, modes in BACKEND_MODES.items() for m in modes if (b, m) not in OPT_IN_MODES]
SEED_REQUESTS, SEED_OUTPUT_TOKENS = 4, 50  # the seed workload with default options
PASSES = 3  # lab experiment's default --repeats: every timed pass's records are kept
IMAGE_PYTHON = "/opt/venv/bin/python"  # the images' venv (docker/base/Dockerfile), not the host's
# First build of the engine images about 4 min on 2 cores, then each engine starts in its container
# (vLLM about 85 s there, compiling the model).
TIMEOUT_S = 3600


@pytest.fixture(scope="module")
def experiment(docker_host, run_lab, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    results = tmp_path_factory.mktemp("results")
    cache = tmp_path_factory.mktemp("cache")
    out = run_lab(
        *("experiment", "--runtime", "docker", "--device", "cpu", "--model", "synthetic:tiny"),
        *("--workload", "seed", "--results", str(results), "--cache-dir", str(cache)),
        timeout_s=TIMEOUT_S,
    )
    return out, results


def run_dir_of(out: subprocess.CompletedProcess) -> Path:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1])


def test_experiment_exits_zero_and_prints_the_run_folder_last(experiment):
    out, results = experiment
    run_dir = run_dir_of(out)
    assert run_dir.is_dir()
    assert run_dir.resolve().parent == results.resolve()


def test_every_backend_and_mode_succeeded_in_its_container(experiment):
    summary = rf.read_json(run_dir_of(experiment[0]) / rf.SUMMARY)["runs"]
    assert [f"{r['backend']}/{r['mode']}" for r in summary] == ALL_RUNS
    failed = {f"{r['backend']}/{r['mode']}": r.get("error") for r in summary if r["status"] != "ok"}
    assert not failed, f"failed in their containers: {json.dumps(failed, indent=1)[:4000]}"


def test_records_hold_every_request_of_every_pass_with_exact_output_tokens(experiment):
    rows = rf.read_jsonl(run_dir_of(experiment[0]) / rf.RECORDS)
    per_run = {name: [r for r in rows if f"{r['backend']}/{r['mode']}" == name] for name in ALL_RUNS}
    assert {name: len(r) for name, r in per_run.items()} == {name: SEED_REQUESTS * PASSES for name in ALL_RUNS}
    for name, run_rows in per_run.items():
        assert sorted({r["pass_index"] for r in run_rows}) == list(range(PASSES)), name
    for row in rows:
        assert row["status"] == "ok", row
        assert row["output_tokens"] == SEED_OUTPUT_TOKENS, row
        assert len(row["token_times_s"]) == SEED_OUTPUT_TOKENS, row
        assert row["arrival_s"] == 0.0 <= row["scheduled_s"] <= row["first_token_s"] <= row["end_s"], row


def test_each_backend_ran_in_its_image_not_on_the_host(experiment):
    """The environment each run recorded is the image's (its venv's Python, torch and vLLM)."""
    manifest = rf.read_json(run_dir_of(experiment[0]) / rf.MANIFEST)
    for name, env in manifest["backend_environments"].items():
        assert env["python"]["executable"] == IMAGE_PYTHON, name
        assert env["torch"]["version"].endswith("+cpu"), name
        assert env["vllm"]["installed"], name


def test_collector_timeline_covers_each_backend_process_tree(experiment):
    """The collector runs in a container of its own; with `pid: host` it finds each backend's
    process (the pid the backend wrote from its container) and, for vLLM, the engine core child."""
    run_dir = run_dir_of(experiment[0])
    timeline = rf.read_jsonl(run_dir / rf.TIMELINE)
    for name in ALL_RUNS:
        label = name.replace("/", "-")
        samples = [s for s in timeline if s["run"] == label]
        assert len(samples) >= 5, (name, len(samples))
        root = int((run_dir / rf.RUNS / label / "pid").read_text())
        assert all(root in s["pids"] for s in samples), name
        assert max(s["tree_rss_mib"] for s in samples) > 50, name  # an engine with torch loaded
    widest = {s["run"]: 0 for s in timeline}
    for s in timeline:
        widest[s["run"]] = max(widest[s["run"]], len(s["pids"]))
    hf_widest = max(n for run, n in widest.items() if run.startswith("hf-"))
    assert widest["vllm-offline"] > hf_widest, f"vLLM's engine core and workers (child processes) not seen: {widest}"


def test_vllm_kv_usage_was_sampled_during_the_run(experiment):
    kv = rf.read_jsonl(run_dir_of(experiment[0]) / rf.KV_SAMPLES)
    assert kv and max(s["kv_usage"] or 0 for s in kv) > 0


def test_manifest_names_every_image_with_its_id(experiment):
    manifest = rf.read_json(run_dir_of(experiment[0]) / rf.MANIFEST)
    assert manifest["runtime"] == "docker"
    launcher = manifest["launcher"]
    assert launcher["variant"] == "cpu"
    for service in images.SERVICES:
        image = launcher["images"][service]
        assert image["tag"].startswith(f"paged-attention-lab/{service}:0"), service
        assert (image["id"] or "").startswith("sha256:"), service
        inspected = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Id}}", image["tag"]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert inspected == image["id"], service


def test_report_names_every_backend_and_mode(experiment):
    report = (run_dir_of(experiment[0]) / rf.REPORT).read_text()
    for name in ALL_RUNS:
        assert f"| {name}" in report, name


def test_every_result_file_belongs_to_the_host_user(experiment):
    run_dir = run_dir_of(experiment[0])
    paths = [run_dir, *run_dir.rglob("*")]
    wrong = [str(p) for p in paths if p.lstat().st_uid != os.getuid()]
    assert not wrong, f"not owned by uid {os.getuid()}: {wrong[:5]}"


def test_image_check_passes_on_the_built_images(experiment, run_lab):
    """`lab images check` (what `make build-cuda` runs on the CUDA images) on the CPU images just used."""
    run_dir_of(experiment[0])  # the images are built
    out = run_lab("images", "check", "--variant", "cpu", timeout_s=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines()[2:]}
    assert set(rows) == set(images.IMAGES)
    for engine in ("hf", "vllm"):
        assert "+cpu" in rows[engine] and " GB " in rows[engine]
