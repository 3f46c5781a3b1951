"""`lab models`: list the synthetic models and build one (or check a local/hub model). Part of the
command line (`lab.cli` adds the group); the work is in `lab.models`."""

from __future__ import annotations

from pathlib import Path

import click
from tabulate import tabulate

from lab.cli_options import cache_dir_option, handle_errors, progress
from lab.models.build import build_model
from lab.models.resolve import resolve_model
from lab.models.shapes import SYNTHETIC


@click.group()
def models() -> None:
    """Build and list local models."""


@models.command("list")
def models_list() -> None:
    """The built-in synthetic models and their shapes."""
    rows = [
        [
            name,
            s.architecture,
            s.num_layers,
            s.hidden_size,
            s.num_heads,
            s.num_kv_heads,
            s.head_dim,
            s.vocab_size,
            s.max_position_embeddings,
            s.dtype,
        ]
        for name, s in SYNTHETIC.items()
    ]
    click.echo(
        tabulate(
            rows,
            headers=[
                "name",
                "architecture",
                "layers",
                "hidden",
                "heads",
                "kv heads",
                "head_dim",
                "vocab",
                "context",
                "dtype",
            ],
            tablefmt="github",
        )
    )


@models.command("build")
@click.argument("name")
@cache_dir_option
@click.option("--no-weights", is_flag=True, help="Config and tokenizer only; backends then use random init.")
@click.option("--force", is_flag=True, help="Rebuild even if the model is in the cache.")
@handle_errors
def models_build(name: str, cache_dir: Path | None, no_weights: bool, force: bool) -> None:
    """Build a synthetic model (config, seeded weights, tokenizer) or check a local/hub model; print its path."""
    if name.startswith("synthetic:"):
        path = build_model(name, cache_dir, weights=False if no_weights else None, force=force, progress=progress)
    else:
        path = resolve_model(name, cache_dir, progress=progress)
    click.echo(str(path))
