"""`lab images`: build, check, share the container images, and whether this host can run them. Part of
the command line (`lab.cli` adds the group); the work is in `lab.launchers`."""

from __future__ import annotations

import click
from tabulate import tabulate

from lab.cli_options import handle_errors, progress, variant_option
from lab.launchers.docker_engine import default_variant, require_engine
from lab.launchers.image_check import check_images
from lab.launchers.images import build_images, pull_images, push_images


@click.group()
def images() -> None:
    """Build, check and share the container images (base, one per backend, the collector); can this host run them."""


@images.command("build")
@click.option("--force", is_flag=True, help="Rebuild images whose tags exist.")
@variant_option
@handle_errors
def images_build(force: bool, variant: str | None) -> None:
    """Build the base, hf, vllm and collector images; skip tags that exist."""
    # Running CUDA images needs the NVIDIA runtime; building them does not (CI builds them without a GPU).
    require_engine(gpu=variant is None and default_variant() == "cuda")
    build_images(variant or default_variant(), progress=progress, force=force)


@images.command("check")
@variant_option
@handle_errors
def images_check(variant: str | None) -> None:
    """Run `lab env` in each built image, check its engines against requirements/, print the sizes."""
    rows = check_images(variant or default_variant())
    table = [
        [row["image"], row["tag"], f"{row['size_bytes'] / 1e9:.2f} GB"]
        + [row.get(key) for key in ("torch", "cuda", "transformers", "vllm")]
        for row in rows
    ]
    headers = ["image", "tag", "size", "torch", "CUDA", "transformers", "vLLM"]
    click.echo(tabulate(table, headers=headers, tablefmt="github", disable_numparse=True))


@images.command("preflight")
@variant_option
@handle_errors
def images_preflight(variant: str | None) -> None:
    """Whether this host can run the containers: engine, compose v2, NVIDIA runtime for cuda (exit 2: the fix)."""
    variant = variant or default_variant()
    click.echo(f"{require_engine(gpu=variant == 'cuda')}; {variant} images")


@images.command("push")
@click.option("--registry", required=True, help="e.g. registry.example.com/team")
@handle_errors
def images_push(registry: str) -> None:
    """Tag this checkout's images as REGISTRY/<tag> and push them (build them first)."""
    push_images(registry, default_variant())


@images.command("pull")
@click.option("--registry", required=True, help="e.g. registry.example.com/team")
@handle_errors
def images_pull(registry: str) -> None:
    """Pull this checkout's tags from REGISTRY, so that builds are skipped."""
    pull_images(registry, default_variant())
