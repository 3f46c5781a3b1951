"""The torchrun launcher's configuration: the command that starts N ranks, who re-executes, where each
rank writes, and which pid the collector watches."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lab import run_folder as rf
from lab.config import EngineSettings, RunSpec
from lab.launchers import torchrun


def spec(backend: str, mode: str, tp: int) -> RunSpec:
    return RunSpec(backend, mode, EngineSettings("synthetic:tiny-tp", "seed", tensor_parallel_size=tp))


@pytest.fixture
def not_a_rank(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def rank_one(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")


def test_the_command_starts_n_ranks_of_the_same_lab_command():
    argv = torchrun.torchrun_argv("/py", 4, ["run", "--spec", "s.json", "--out", "d"])
    assert argv == [
        "/py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "4",
        "-m",
        "lab",
        "run",
        "--spec",
        "s.json",
        "--out",
        "d",
    ]


def test_only_hf_with_several_gpus_runs_as_ranks():
    assert torchrun.needs_ranks(spec("hf", "batched", 2))
    assert not torchrun.needs_ranks(spec("hf", "batched", 1))
    assert not torchrun.needs_ranks(spec("vllm", "offline", 2))  # vLLM starts its own workers
    assert not torchrun.needs_ranks(spec("hf", "continuous", 2))  # not split: one process says why


def test_outside_torchrun_the_process_writes_its_folder_and_is_the_root(not_a_rank, tmp_path):
    assert torchrun.rank() is None
    assert torchrun.rank_out(tmp_path) == tmp_path
    assert torchrun.tree_root_pid() == os.getpid()
    assert torchrun.log_prefix() == ""


def test_a_rank_writes_under_ranks_and_names_the_agent_as_root(rank_one, tmp_path):
    assert torchrun.rank() == 1
    assert torchrun.rank_out(tmp_path) == tmp_path / "ranks" / "1"
    assert torchrun.tree_root_pid() == os.getppid()  # torchrun's agent, parent of every rank
    assert torchrun.log_prefix() == "rank 1: "


class FakeExec:
    """Stands in for os.execv (NOT an exec): records the call instead of replacing the process."""

    def __init__(self):
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, path, argv):
        self.calls.append((path, argv))


def test_lab_run_replaces_itself_with_torchrun_once(monkeypatch, not_a_rank):
    fake = FakeExec()
    monkeypatch.setattr(os, "execv", fake)
    torchrun.exec_ranks_if_needed(spec("hf", "batched", 2), ["run", "--spec", "s.json"])
    assert fake.calls == [(sys.executable, torchrun.torchrun_argv(sys.executable, 2, ["run", "--spec", "s.json"]))]


def test_a_rank_and_a_one_gpu_run_do_not_exec(monkeypatch, rank_one):
    fake = FakeExec()
    monkeypatch.setattr(os, "execv", fake)
    torchrun.exec_ranks_if_needed(spec("hf", "batched", 2), ["run"])  # already a rank
    monkeypatch.delenv("RANK")
    torchrun.exec_ranks_if_needed(spec("hf", "batched", 1), ["run"])
    torchrun.exec_ranks_if_needed(spec("vllm", "offline", 2), ["run"])
    assert fake.calls == []


def test_the_run_folder_lists_the_ranks_in_order(tmp_path):
    part = rf.PartFolder(tmp_path)
    for k in (10, 2, 1):
        part.rank(k).path.mkdir(parents=True)
    assert [p.name for p in part.ranks()] == ["1", "2", "10"]
    assert rf.PartFolder(Path(tmp_path / "none")).ranks() == []
