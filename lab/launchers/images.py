"""The container images, host side: content-addressed tags, builds, push and pull.

Why a module of its own: the host orchestrator (`lab experiment --runtime docker`) runs on a light
venv (requirements/base.txt, no torch) and only ever talks to the `docker` CLI; every backend run
happens inside an image. So this module imports nothing heavy and never imports the backends.

Images (build order; each FROM the one before it, except that hf, vllm and collector all build on
base):

    paged-attention-lab/base:<version>-<variant>-<hash>       Python venv + requirements/base.txt
    paged-attention-lab/hf:<version>-<variant>-<hash>         + torch/transformers (+ vLLM, shared layer)
    paged-attention-lab/vllm:<version>-<variant>-<hash>       same engine layer, vLLM backend
    paged-attention-lab/collector:<version>-<variant>-<hash>  base + the lab package

<hash> covers every file copied into the image (and the base it builds on), so a tag names exactly
one content: `build_images` skips tags that exist, a code change rebuilds only the last layer, and
a team pulling a tag from a registry gets the images its checkout would build. Each image is also
tagged `:<variant>-latest` for people typing commands by hand.

The classic builder is used (DOCKER_BUILDKIT=0) because hosts with Debian's engine have no buildx;
builds use the host network, as the compose services do.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from lab import __version__
from lab.errors import LabInputError
from lab.launchers.docker_engine import docker_cli, require_engine

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"
IMAGE_PREFIX = "paged-attention-lab"
SERVICES = ("hf", "vllm", "collector")
IMAGES = ("base",) + SERVICES  # build order
VARIANTS = ("cpu", "cuda")
OFFLINE_BASE = f"{IMAGE_PREFIX}/base-offline:bookworm"
ENGINE_CHECK = DOCKER_DIR / "check-engines.py"  # run by the engine images' build
BUILD_ENV = {"DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"}

Progress = Callable[[str], None]


# --- tags -----------------------------------------------------------------------------------------


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise LabInputError(f"image variant {variant!r} is unknown; use one of {', '.join(VARIANTS)}")


def default_base_image() -> str:
    """The pinned default from docker/base/Dockerfile (its ARG line is the one source of truth)."""
    text = (DOCKER_DIR / "base" / "Dockerfile").read_text()
    return re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.MULTILINE).group(1)


def image_exists(ref: str) -> bool:
    return docker_cli("image", "inspect", ref, timeout_s=30).returncode == 0


def resolve_base_image() -> str:
    """LAB_BASE_IMAGE if set, else the offline base when it was built here, else the pinned default.

    The offline base wins over the default because a host that built it cannot pull.
    """
    explicit = os.environ.get("LAB_BASE_IMAGE")
    if explicit:
        return explicit
    return OFFLINE_BASE if image_exists(OFFLINE_BASE) else default_base_image()


def _image_inputs(image: str, variant: str) -> list[Path]:
    """The files copied into `image` (docker/certs is left out: a CA bundle is the host's setting,
    not the image's content, and must not split a team's tags)."""
    files = [DOCKER_DIR / image / "Dockerfile"]
    if image == "base":
        return files + [REPO_ROOT / "requirements" / "base.txt"]
    if image in ("hf", "vllm"):
        files += [REPO_ROOT / "requirements" / f"{variant}.txt", REPO_ROOT / "requirements" / "base.txt", ENGINE_CHECK]
    lab_files = [p for p in (REPO_ROOT / "lab").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return files + [REPO_ROOT / "pyproject.toml"] + sorted(lab_files)


def _content_hash(image: str, variant: str, parent: str) -> str:
    digest = hashlib.sha256(f"{image}\0{variant}\0{parent}\0".encode())
    for path in _image_inputs(image, variant):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    if image in ("hf", "vllm"):  # local wheels by name: the name carries the version and build
        for wheel in sorted((DOCKER_DIR / "wheels").glob("*.whl")):
            digest.update(wheel.name.encode() + b"\0")
    return digest.hexdigest()[:12]


def image_tags(variant: str, base_image: str | None = None) -> dict[str, str]:
    """{"base", "hf", "vllm", "collector"} -> the content-addressed tag of each image."""
    check_variant(variant)
    base_image = base_image or resolve_base_image()
    base = f"{IMAGE_PREFIX}/base:{__version__}-{variant}-{_content_hash('base', variant, base_image)}"
    tags = {"base": base}
    for service in SERVICES:
        tags[service] = f"{IMAGE_PREFIX}/{service}:{__version__}-{variant}-{_content_hash(service, variant, base)}"
    return tags


# --- build, inspect, share ----------------------------------------------------------------------


def _build_fix(output: str) -> str:
    """The likely fix for a failed build, read from the builder's last lines."""
    if "CERTIFICATE_VERIFY_FAILED" in output or "SSLError" in output:
        return (
            "pip cannot verify TLS (an intercepting proxy?): put its CA bundle in "
            "docker/certs/extra-ca.crt and build again"
        )
    if re.search(
        r"pull access denied|manifest unknown|repository does not exist|"
        r"Get \"?https://registry|dial tcp|i/o timeout.*registry",
        output,
    ):
        return (
            "the base image cannot be pulled: run `make base-image-offline` (a Debian base "
            "built without a registry, used automatically) or set LAB_BASE_IMAGE"
        )
    if "No matching distribution found for torch" in output or "from versions: none" in output:
        return (
            "pip found no matching torch: reach PyTorch's index, or put the wheel in "
            "docker/wheels/ (see docker/wheels/README.md)"
        )
    if "No space left on device" in output:
        return "the Docker disk is full: `docker system prune` or free space under /var/lib/docker"
    return "read the builder output above; rerun `make build` after fixing it"


def _stream(cmd: list[str], progress: Progress | None, env: dict[str, str]) -> tuple[int, str]:
    """Run `cmd`, passing each output line to `progress`; return (exit code, last 40 lines)."""
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env}, cwd=REPO_ROOT
    ) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            if progress:
                progress(line)
    return proc.returncode, "\n".join(tail)


def build_images(
    variant: str, progress: Progress | None = None, base_image: str | None = None, force: bool = False
) -> dict[str, str]:
    """Build base, hf, vllm and collector for `variant`; skip tags that exist unless `force`.

    Returns image_tags(). Raises LabInputError naming the image that failed and the likely fix.
    """
    check_variant(variant)
    require_engine(gpu=False)  # building needs no GPU, even for the cuda variant
    base_image = base_image or resolve_base_image()
    tags = image_tags(variant, base_image)
    say = progress or (lambda line: None)
    for image in IMAGES:
        tag = tags[image]
        if not force and image_exists(tag):
            say(f"{tag}: up to date")
            continue
        args = {"base": {"BASE_IMAGE": base_image}, "collector": {"LAB_BASE": tags["base"]}}.get(
            image, {"VARIANT": variant, "LAB_BASE": tags["base"]}
        )
        say(f"{tag}: building from docker/{image}/Dockerfile" + (f" on {base_image}" if image == "base" else ""))
        cmd = [
            "docker",
            "build",
            "--network",
            "host",
            "-f",
            str(DOCKER_DIR / image / "Dockerfile"),
            "-t",
            tag,
            "-t",
            f"{IMAGE_PREFIX}/{image}:{variant}-latest",
        ]
        cmd += [arg for key, value in args.items() for arg in ("--build-arg", f"{key}={value}")]
        started = time.monotonic()
        code, tail = _stream(cmd + [str(REPO_ROOT)], progress, BUILD_ENV)
        if code != 0:
            raise LabInputError(
                f"building the {image} image ({tag}) failed with exit code {code}.\n"
                f"Last lines of the builder:\n{tail}\nFix: {_build_fix(tail)}"
            )
        say(f"{tag}: built in {time.monotonic() - started:.0f} s")
    return tags


def image_ids(variant: str, tags: dict[str, str] | None = None) -> dict[str, dict[str, str | None]]:
    """{service: {"tag", "id"}} for the manifest; id is None when the image is not built."""
    tags = tags or image_tags(variant)
    ids = {}
    for name, tag in tags.items():
        found = docker_cli("image", "inspect", "--format", "{{.Id}}", tag, timeout_s=30)
        ids[name] = {"tag": tag, "id": found.stdout.strip() if found.returncode == 0 else None}
    return ids


def _remote(registry: str, tag: str) -> str:
    return f"{registry.rstrip('/')}/{tag}"


def push_images(registry: str, variant: str, progress: Progress | None = None) -> list[str]:
    """Tag this checkout's images as <registry>/<tag> and push them (build first)."""
    tags = image_tags(variant)
    missing = [tag for tag in tags.values() if not image_exists(tag)]
    if missing:
        raise LabInputError(f"not built yet: {', '.join(missing)}; fix: run `make build` first")
    pushed = []
    for tag in tags.values():
        remote = _remote(registry, tag)
        subprocess.run(["docker", "tag", tag, remote], check=True)
        code, tail = _stream(["docker", "push", remote], progress, {})
        if code != 0:
            raise LabInputError(
                f"pushing {remote} failed:\n{tail}\nFix: `docker login {registry}` "
                "and check that the registry accepts this repository name"
            )
        pushed.append(remote)
    return pushed


def pull_images(registry: str, variant: str, progress: Progress | None = None) -> list[str]:
    """Pull this checkout's tags from <registry> and tag them locally, so builds are skipped."""
    pulled = []
    for tag in image_tags(variant).values():
        remote = _remote(registry, tag)
        code, tail = _stream(["docker", "pull", remote], progress, {})
        if code != 0:
            raise LabInputError(
                f"pulling {remote} failed:\n{tail}\nFix: someone with this exact "
                "checkout runs `make push REGISTRY=...`, or build locally: `make build`"
            )
        subprocess.run(["docker", "tag", remote, tag], check=True)
        pulled.append(tag)
    return pulled
