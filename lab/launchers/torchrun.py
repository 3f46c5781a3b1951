"""Tensor parallelism for transformers: N ranks of one backend process, started by torchrun.

vLLM starts its own workers, one per GPU, under its engine core. transformers does not: its
tensor-parallel plan (`tp_plan="auto"`) runs one process per GPU, each started by torchrun
(`python -m torch.distributed.run`) with RANK, LOCAL_RANK and WORLD_SIZE set. So `lab run` for an hf
mode with `--tensor-parallel-size N` replaces itself (exec, same pid) with

    python -m torch.distributed.run --standalone --nproc-per-node N -m lab <the same arguments>

and torchrun's agent starts the N ranks as its children. Not a third runtime beside native and
Docker: it runs inside whichever launcher started `lab run`, so the experiment's steps, the
collector and the containers need no change.

- Only a model that splits over N ranks starts them (`needs_ranks`): `lab run` reads the model's heads
  first, and one that cannot split stays one process, which records why it is not run. Started as
  ranks, every rank would find the same problem and exit 1, and the agent stops the rest at the
  first exit: rank 0 could be stopped before it recorded the reason.
- Rank 0 writes the run's files; rank k > 0 writes only its own result into `ranks/<k>/`
  (`rank_out`), so a failure on any rank is recorded with its traceback.
- The pid file names the agent (`tree_root_pid`): the collector watches the agent's tree, which
  holds every rank.
- `--standalone`: a rendezvous on a free local port, so runs side by side do not collide.
- The ranks inherit the environment; `lab.cli.main` has already set NVLink multicast off in it
  unless the caller set it (`lab.hardware.gpus`). torchrun sets OMP_NUM_THREADS=1 in each rank
  where it is unset (its own default, to keep N ranks from oversubscribing the CPU).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lab import run_folder as rf
from lab.accounting.parallel import spec_problem
from lab.config import RunSpec
from lab.models.resolve import model_info, resolve_model

# Backends whose tensor parallelism runs as torchrun ranks (vLLM starts its own workers).
RANKED_BACKENDS = ("hf",)


def rank() -> int | None:
    """This process's rank when torchrun started it (RANK and WORLD_SIZE set), else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"])
    return None


def is_ranked(spec: RunSpec) -> bool:
    """Whether `spec` is a ranked backend on more than one GPU: the runs whose model is read before
    torchrun is started (every other run starts no ranks, and reads nothing here)."""
    return spec.backend in RANKED_BACKENDS and spec.engine.tensor_parallel_size > 1


def needs_ranks(spec: RunSpec, model: dict) -> bool:
    """Whether `spec` runs as torchrun ranks: a ranked backend with more than one GPU, on a `model`
    (`lab.models.resolve.model_info`) that it can split over them. A mode the lab does not split, or a
    model it cannot (`lab.accounting.parallel.spec_problem`), stays one process, which
    records why it is not run (`lab.runner.check_tensor_parallel`)."""
    return is_ranked(spec) and spec_problem(spec, model) is None


def torchrun_argv(python: str, nproc: int, lab_args: list[str]) -> list[str]:
    """The argv that starts `nproc` ranks of `python -m lab <lab_args>` on this host."""
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "lab",
        *lab_args,
    ]


def exec_ranks_if_needed(spec: RunSpec, lab_args: list[str], cache_dir: Path | None) -> None:
    """Replace this process with torchrun and `spec`'s ranks where it needs them; return otherwise.

    `lab_args`: this process's arguments after `lab` (sys.argv[1:]); each rank runs them again and,
    seeing RANK set, does not exec. `cache_dir`: where a synthetic model is built (here, once, before
    any rank starts) or found. A bad model name raises LabInputError before anything starts.
    """
    if rank() is not None or not is_ranked(spec):
        return
    model = model_info(resolve_model(spec.engine.model, cache_dir), cache_dir=cache_dir)
    if not needs_ranks(spec, model):
        return
    argv = torchrun_argv(sys.executable, spec.engine.tensor_parallel_size, lab_args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def tree_root_pid() -> int:
    """The pid the collector watches: torchrun's agent (the ranks' parent) under torchrun, else this process."""
    return os.getppid() if rank() is not None else os.getpid()


def rank_out(out: Path) -> Path:
    """Where this process writes: `out` for rank 0 (or without torchrun), `out/ranks/<k>` for rank k > 0."""
    k = rank()
    return out if not k else rf.PartFolder(out).rank(k).path


def log_prefix() -> str:
    """'' for rank 0 (or without torchrun), 'rank k: ' else, so the terminal shows rank 0's lines only."""
    k = rank()
    return f"rank {k}: " if k else ""
