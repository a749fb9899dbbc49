"""`edge-tl targets list` and `edge-tl targets show NAME|PATH`."""

from __future__ import annotations

import json

import click

from edge_tl.cli import options


@click.group()
def targets() -> None:
    """Device target profiles (targets/*.toml; a path to your own TOML works wherever a name does)."""


@targets.command("list")
@options.as_json()
def list_cmd(as_json: bool) -> None:
    """List the shipped target profiles."""
    from edge_tl.targets import list_targets

    profiles = list_targets()
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in profiles], indent=2))
        return
    click.echo(f"{'name':<22} {'kind':<7} {'sm':<5} {'DLA':>3} {'TensorRT':<9} {'opset':>5} {'precisions':<24} recipe")
    for t in profiles:
        sm = t.gpu.sm if t.gpu else "-"
        dla = t.gpu.dla_cores if t.gpu else 0
        trt = str(t.default_tensorrt) if t.default_tensorrt else "-"
        precisions = ",".join(p.value for p in t.fast_precisions)
        click.echo(
            f"{t.name:<22} {t.kind.value:<7} {sm:<5} {dla:>3} {trt:<9} {t.max_opset:>5} {precisions:<24} "
            f"{t.calibration_recipe.value}"
        )


@targets.command("show")
@click.argument("name")
@options.as_json(help="Print JSON.")
def show_cmd(name: str, as_json: bool) -> None:
    """Show one profile: NAME of a shipped profile or the PATH of a TOML."""
    from edge_tl.targets import format_target, load_target

    target = load_target(name)
    click.echo(json.dumps(target.to_dict(), indent=2) if as_json else format_target(target))
