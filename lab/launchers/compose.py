"""`docker compose` for the lab's services: which files, which variables, which command runs one backend.

compose.yaml defines one service per backend (hf, vllm) and the collector; compose.gpu.yaml adds the
GPU reservations on an NVIDIA host.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from lab.launchers.docker_engine import compose_cli
from lab.launchers.images import BUILD_ENV, REPO_ROOT, SERVICES, image_tags, resolve_base_image


def compose_files(gpu: bool) -> list[Path]:
    """compose.yaml, plus compose.gpu.yaml (the GPU reservations) on an NVIDIA host."""
    files = [REPO_ROOT / "compose.yaml"]
    return files + [REPO_ROOT / "compose.gpu.yaml"] if gpu else files


def compose_env(
    variant: str,
    results_dir: Path,
    cache_dir: Path,
    gpus: str = "0",
    tags: dict[str, str] | None = None,
) -> dict[str, str]:
    """The variables compose.yaml reads; merge them into os.environ for every compose call.

    Creates `results_dir` and `cache_dir` first: a bind-mount source that does not exist would be
    created by the daemon, owned by root, and the containers (running as this user) could not
    write into it. Both are mounted at the same absolute path inside, so no path is translated.
    """
    tags = tags or image_tags(variant)
    results_dir, cache_dir = Path(results_dir).resolve(), Path(cache_dir).resolve()
    for folder in (results_dir, cache_dir):
        folder.mkdir(parents=True, exist_ok=True)
    env = {
        "LAB_UID": str(os.getuid()),
        "LAB_GID": str(os.getgid()),
        "LAB_RESULTS_DIR": str(results_dir),
        "LAB_CACHE_DIR": str(cache_dir),
        "LAB_GPUS": gpus,
        "LAB_VARIANT": variant,
        "LAB_BASE_IMAGE": resolve_base_image(),
        **BUILD_ENV,
    }
    env.update({f"LAB_IMAGE_{name.upper()}": tag for name, tag in tags.items()})
    return env


def compose_run_command(service: str, args: Iterable[str], gpu: bool, container: str | None = None) -> list[str]:
    """`docker compose ... run --rm -T [--name <container>] <service> lab <args>`: one backend run, one
    container, named so that it can be stopped and removed by name (`lab.launchers.container`)
    (compose_cli() says which compose command; `docker compose` when none answers).

    `args` are the arguments after `lab` (e.g. ["run", "--spec", path, "--out", dir]). Run it with
    `env={**os.environ, **compose_env(...)}`. -T: no TTY, so output can be captured.
    """
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; one of {SERVICES}")
    args = list(args)
    if args[:1] == ["lab"]:
        raise ValueError("compose_run_command adds `lab` itself; pass only what follows it")
    files = [arg for path in compose_files(gpu) for arg in ("-f", str(path))]
    name = ["--name", container] if container else []
    return [*(compose_cli() or ["docker", "compose"]), *files, "run", "--rm", "-T", *name, service, "lab", *args]
