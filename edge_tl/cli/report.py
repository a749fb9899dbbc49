"""`edge-tl report RUN`."""

from __future__ import annotations

from pathlib import Path

import click

from edge_tl.cli import options


@click.command()
@options.run_dir()
@click.option(
    "--tensorboard",
    is_flag=True,
    help="Also add the verify table to RUN/tensorboard/ as a text summary (needs torch and tensorboard).",
)
def report(run_dir: Path, tensorboard: bool) -> None:
    """Write RUN/report/index.html: training, every artifact against the original, devices, fleet.

    One self-contained file (images inline, no network, no scripts). Once it exists, every
    edge-tl stage that finishes on RUN refreshes it.
    """
    from edge_tl.report import write_report

    result = write_report(run_dir)
    click.echo(f"report: {result.index}")
    if result.fleet is not None:
        click.echo(f"fleet:  {result.fleet}")
    if tensorboard:
        from edge_tl.train.tensorboard import VERIFY_TAG, add_verify_table

        folder = add_verify_table(run_dir, say=lambda line: click.echo(line, err=True))
        if folder is not None:
            click.echo(f"tensorboard: {folder} (text {VERIFY_TAG})")
