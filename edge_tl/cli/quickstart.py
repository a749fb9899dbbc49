"""`edge-tl quickstart`."""

from __future__ import annotations

import click

from edge_tl.cli import options


@click.command()
@click.option(
    "--out",
    default="edge-tl-quickstart",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Run directory to create.",
)
@options.quiet("errors")
def quickstart(*, out: str, quiet: bool) -> None:
    """Fine-tune pretrained EfficientNet-Lite0 on the built-in digits (CPU-sized), evaluate, summarise."""
    from edge_tl.quickstart import run_quickstart

    run_quickstart(out, quiet=quiet, echo=click.echo)
