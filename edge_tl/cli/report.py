"""`edge-tl report RUN`."""

from __future__ import annotations

from pathlib import Path

import click

from edge_tl.cli import options


@click.command()
@options.run_dir()
def report(run_dir: Path) -> None:
    """Write RUN/report/index.html: training, every artifact against the original, devices, fleet.

    One self-contained file (images inline, no network, no scripts). Once it exists, every
    edge-tl stage that finishes on RUN refreshes it.
    """
    from edge_tl.report import write_report

    result = write_report(run_dir)
    click.echo(f"report: {result.index}")
    if result.fleet is not None:
        click.echo(f"fleet:  {result.fleet}")
