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


# The heads of synthetic:tiny-tp (4 KV heads: 2 per rank) and synthetic:tiny (1 KV head), as model_info gives them.
SPLITS = {"num_heads": 4, "num_kv_heads": 4}
ONE_KV_HEAD = {"num_heads": 2, "num_kv_heads": 1}


def test_only_hf_with_several_gpus_runs_as_ranks():
    assert torchrun.needs_ranks(spec("hf", "batched", 2), SPLITS)
    assert not torchrun.needs_ranks(spec("hf", "batched", 1), SPLITS)
    assert not torchrun.needs_ranks(spec("vllm", "offline", 2), SPLITS)  # vLLM starts its own workers
    assert not torchrun.needs_ranks(spec("hf", "continuous", 2), SPLITS)  # not split: one process says why


def test_a_model_that_cannot_split_starts_no_ranks_so_one_process_records_why():
    assert not torchrun.needs_ranks(spec("hf", "batched", 2), ONE_KV_HEAD)  # 1 KV head over 2 ranks
    assert not torchrun.needs_ranks(spec("hf", "static-cache", 2), {"num_heads": 3, "num_kv_heads": 3})
    assert torchrun.needs_ranks(spec("hf", "sequential", 4), {"num_heads": 64, "num_kv_heads": 8})


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


def test_lab_run_replaces_itself_with_torchrun_once(monkeypatch, not_a_rank, tmp_path):
    fake = FakeExec()
    monkeypatch.setattr(os, "execv", fake)
    torchrun.exec_ranks_if_needed(spec("hf", "batched", 2), ["run", "--spec", "s.json"], tmp_path)
    assert fake.calls == [(sys.executable, torchrun.torchrun_argv(sys.executable, 2, ["run", "--spec", "s.json"]))]


def test_a_rank_and_a_one_gpu_run_do_not_exec(monkeypatch, rank_one, tmp_path):
    fake = FakeExec()
    monkeypatch.setattr(os, "execv", fake)
    torchrun.exec_ranks_if_needed(spec("hf", "batched", 2), ["run"], tmp_path)  # already a rank
    monkeypatch.delenv("RANK")
    torchrun.exec_ranks_if_needed(spec("hf", "batched", 1), ["run"], tmp_path)
    torchrun.exec_ranks_if_needed(spec("vllm", "offline", 2), ["run"], tmp_path)
    assert fake.calls == []


def test_lab_run_reads_the_model_and_does_not_exec_for_one_it_cannot_split(monkeypatch, not_a_rank, tiny_model):
    fake = FakeExec()
    monkeypatch.setattr(os, "execv", fake)
    one_kv_head = RunSpec("hf", "batched", EngineSettings(str(tiny_model), "seed", tensor_parallel_size=2))
    torchrun.exec_ranks_if_needed(one_kv_head, ["run"], None)
    assert fake.calls == []


def test_the_run_folder_lists_the_ranks_in_order(tmp_path):
    part = rf.PartFolder(tmp_path)
    for k in (10, 2, 1):
        part.rank(k).path.mkdir(parents=True)
    assert [p.name for p in part.ranks()] == ["1", "2", "10"]
    assert rf.PartFolder(Path(tmp_path / "none")).ranks() == []
