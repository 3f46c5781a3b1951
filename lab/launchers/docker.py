"""The Docker launcher: each `lab` command of the experiment runs in its service's container.

Why a module of its own: the host orchestrator (`lab experiment --runtime docker`) runs on a light
venv (requirements/base.txt, no torch) and only ever talks to the `docker` CLI; every backend run
happens inside an image (`lab.launchers.images`), started with `docker compose run`
(`lab.launchers.compose`). So this module imports nothing heavy and never imports the backends.
"""

from __future__ import annotations

import os
from pathlib import Path

from lab.errors import LabInputError
from lab.launchers.base import Echo
from lab.launchers.compose import compose_env, compose_files, compose_run_command
from lab.launchers.container import ContainerProcess
from lab.launchers.docker_engine import default_variant, require_engine
from lab.launchers.images import (
    IMAGE_PREFIX,
    REPO_ROOT,
    build_images,
    check_variant,
    image_ids,
    image_tags,
    resolve_base_image,
)
from lab.models.build import default_cache_dir


def _is_build_step(line: str) -> bool:
    """The builder lines worth showing live (pip's thousands of lines stay out of the progress)."""
    return line.startswith(("Step ", f"{IMAGE_PREFIX}/", "Successfully built", "ERROR", "error"))


class DockerLauncher:
    """Runs each `lab` command in its service's container (a `lab.launchers.base.Launcher`).

    `results_dir` and `cache_dir` are bind-mounted at their own absolute paths, so every path the
    experiment passes (spec files, run folders, pid files) must lie under one of them: `command`
    checks that, because a path outside would silently not exist in the container.
    """

    runtime = "docker"

    def __init__(
        self,
        cache_dir: Path | None = None,
        results_dir: Path = Path("results"),
        variant: str | None = None,
        gpus: str = "0",
    ) -> None:
        self.cache_dir = Path(cache_dir or default_cache_dir()).resolve()
        self.results_dir = Path(results_dir).resolve()
        self.variant = variant or default_variant()
        check_variant(self.variant)
        self.gpu = self.variant == "cuda"
        self.gpus = gpus
        self._tags: dict[str, str] | None = None

    def setup(self, echo: Echo) -> None:
        """Check the engine (and NVIDIA runtime on GPU hosts), then build the images that are missing."""
        echo(f"docker: {require_engine(self.gpu)}; {self.variant} images")
        self._tags = build_images(self.variant, progress=lambda line: _is_build_step(line) and echo(line))

    @property
    def tags(self) -> dict[str, str]:
        if self._tags is None:
            self._tags = image_tags(self.variant)
        return self._tags

    def start(self, service: str, args: list[str], name: str, **popen_kwargs) -> ContainerProcess:
        """`docker compose run` in a session of its own, its container called `name`."""
        return ContainerProcess(self.command(service, args, name), self.env(), name, **popen_kwargs)

    def command(self, service: str, args: list[str], container: str | None = None) -> list[str]:
        return compose_run_command(service, [self._container_arg(arg) for arg in args], self.gpu, container)

    def _container_arg(self, arg: str) -> str:
        """A path under a mounted folder, made absolute (the container's cwd is not the host's);
        an absolute path outside them is refused; anything else passes unchanged."""
        roots = (self.results_dir, self.cache_dir)
        if not arg.startswith("-") and "/" in arg:
            path = Path(arg).resolve()
            if any(path.is_relative_to(root) for root in roots):
                return str(path)
            if arg.startswith("/"):
                raise LabInputError(
                    f"{arg} is outside the folders mounted into the containers "
                    f"({self.results_dir}, {self.cache_dir}); fix: keep results and "
                    "the model cache under --results / --cache-dir"
                )
        return arg

    def env(self) -> dict[str, str]:
        lab_env = compose_env(self.variant, self.results_dir, self.cache_dir, self.gpus, self.tags)
        return {**os.environ, "PYTHONUNBUFFERED": "1", **lab_env}

    def collector_gpus(self) -> str | None:
        """The backend's device ids: the collector's container sees every GPU of the host (compose.gpu.yaml)."""
        return self.gpus if self.gpu else None

    def describe(self) -> dict:
        """For the manifest: the variant, the compose files and every image's tag and id."""
        return {
            "runtime": self.runtime,
            "variant": self.variant,
            "gpus": self.gpus if self.gpu else None,
            "compose_files": [str(p.relative_to(REPO_ROOT)) for p in compose_files(self.gpu)],
            "base_image": resolve_base_image(),
            "images": image_ids(self.variant, self.tags),
        }
