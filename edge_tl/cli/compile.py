"""`edge-tl compile RUN --target T --precision P`."""

from __future__ import annotations

from pathlib import Path

import click

from edge_tl.cli import options


@click.command()
@options.run_dir()
@options.target(required=True)
@options.precision(required=True, help="Engine precision.")
@click.option(
    "--dla/--no-dla",
    default=False,
    show_default=True,
    help="Run on a DLA core with GPU fallback (Xavier, Orin NX/AGX).",
)
@click.option("--dla-core", type=click.IntRange(min=0), default=0, show_default=True, help="Which DLA core with --dla.")
@click.option(
    "--workspace",
    "workspace_mib",
    type=click.IntRange(min=16),
    default=None,
    help="Builder workspace in MiB (default: the target's workspace_mib).",
)
@click.option("--batch", default=None, help="Dynamic batch profile MIN,OPT,MAX (default 1,1,8), or one size.")
@options.tensorrt(help="Plan for another TensorRT release the target lists (e.g. 8.5).")
@click.option(
    "--via",
    type=click.Choice(["onnx", "torch-tensorrt"]),
    default="onnx",
    show_default=True,
    help="Build from the run's ONNX, or compile the PyTorch model with torch-tensorrt (local GPU only).",
)
@click.option(
    "--version-compatible",
    is_flag=True,
    default=False,
    help="Build an engine that later TensorRT releases also run (TensorRT 8.6+).",
)
@click.option(
    "--builder-optimization-level",
    type=click.IntRange(0, 5),
    default=None,
    help="TensorRT's builder optimization level, 0-5 (TensorRT 8.6+; default 3): lower builds faster.",
)
@click.option(
    "--build-only",
    is_flag=True,
    default=False,
    help="trtexec builds the engine and exits without timing it (saves device time; deploy times it apart).",
)
@click.option("--plan-only", "mode", flag_value="plan", help="Only write the on-device build plan.")
@click.option(
    "--build", "mode", flag_value="build", help="Build here or fail (default: build when possible, else plan)."
)
@options.quiet()
def compile(
    run_dir: Path,
    target: str,
    precision: str,
    dla: bool,
    dla_core: int,
    workspace_mib: int | None,
    batch: str | None,
    tensorrt: str | None,
    version_compatible: bool,
    builder_optimization_level: int | None,
    build_only: bool,
    via: str,
    mode: str | None,
    quiet: bool,
) -> None:
    """Build a TensorRT engine for TARGET from RUN, or write the exact on-device build plan."""
    from edge_tl.compile import BatchRange, BuildMode, CompileRequest, Via, compile_run
    from edge_tl.targets import Precision

    request = CompileRequest(
        precision=Precision(precision),
        dla=dla,
        dla_core=dla_core,
        workspace_mib=workspace_mib,
        batch=BatchRange.parse(batch) if batch else None,
        tensorrt=tensorrt,
        version_compatible=version_compatible,
        builder_optimization_level=builder_optimization_level,
        build_only=build_only,
    )
    result = compile_run(
        run_dir,
        target=target,
        request=request,
        via=Via(via),
        mode=BuildMode(mode or "auto"),
        progress=None if quiet else lambda m: click.echo(m, err=True),
    )
    if result.plan is not None and result.plan_artifact is not None:
        click.echo(f"plan: {run_dir / result.plan_artifact.path}")
        click.echo(f"trtexec ({result.plan.release.describe()}): {result.plan_artifact.details['trtexec']}")
    if result.engine_artifact is not None:
        click.echo(f"engine: {run_dir / result.engine_artifact.path}")
