"""`edge-tl backbones`."""

from __future__ import annotations

import json

import click

from edge_tl.cli import options


@click.group()
def backbones() -> None:
    """Backbones edge-tl can fine-tune (any timm model also works as timm:<name>)."""


@backbones.command("list")
@options.as_json()
def list_cmd(as_json: bool) -> None:
    """List registered backbones with their preprocessing contract."""
    from edge_tl.models import list_backbones

    specs = list_backbones()
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in specs], indent=2))
        return
    click.echo(f"{'name':<22} {'source':<12} {'input':>5} {'interp':<8} {'mean':<20} description")
    for s in specs:
        p = s.preprocessing
        mean = ",".join(f"{m:.3f}" for m in p.mean)
        click.echo(f"{s.name:<22} {s.source:<12} {p.input_size:>5} {p.interpolation:<8} {mean:<20} {s.description}")
    click.echo("\nAny timm model: timm:<name>  (e.g. timm:mobilenetv4_conv_small)")
