"""`edge-tl export RUN`."""

from __future__ import annotations

from pathlib import Path

import click

from edge_tl.cli import options
from edge_tl.vocab import EXPORT_PRECISIONS


@click.command()
@options.run_dir()
@options.precision(
    EXPORT_PRECISIONS,
    dest="precisions",
    multiple=True,
    default=("fp32", "fp16"),
    help="Precision(s) to write; repeat the option for several.",
)
@click.option(
    "--opset",
    type=int,
    default=None,
    help="ONNX opset (default 17, which parses in TensorRT 8.5 / JetPack 5). An imported ONNX model is kept at its "
    "own opset, and converted down to a lower --opset by ONNX's version converter, parity-checked.",
)
@click.option(
    "--dynamic-batch/--static-batch",
    default=True,
    show_default=True,
    help="Named 'batch' first dimension, or a fixed one.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="The fixed batch size of --static-batch.",
)
@click.option(
    "--exporter",
    type=click.Choice(["torchscript", "dynamo"]),
    default="torchscript",
    show_default=True,
    help="torch exporter; dynamo only writes opset >= 18.",
)
@click.option("--fp16-io", is_flag=True, help="Give the FP16 model float16 inputs/outputs (default: float32 kept).")
@click.option("--checkpoint", default="checkpoint-best", show_default=True, help="Checkpoint artifact to export.")
@click.option(
    "--parity-images",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Validation images used for the parity check (at most).",
)
@click.option("--atol", type=float, default=1e-4, show_default=True, help="FP32 parity: absolute logit tolerance.")
@click.option("--rtol", type=float, default=1e-3, show_default=True, help="FP32 parity: relative logit tolerance.")
@click.option(
    "--min-agreement-fp16",
    type=float,
    default=0.98,
    show_default=True,
    help="FP16 parity: minimum share of images with the same top-1 class.",
)
@options.quiet()
def export(
    run_dir: Path,
    precisions: tuple[str, ...],
    opset: int | None,
    dynamic_batch: bool,
    batch_size: int,
    exporter: str,
    fp16_io: bool,
    checkpoint: str,
    parity_images: int,
    atol: float,
    rtol: float,
    min_agreement_fp16: float,
    quiet: bool,
) -> None:
    """Export RUN's fine-tuned model to ONNX, check parity on validation images, record it in the manifest."""
    from edge_tl.export import (
        FP16_TOLERANCE,
        FP32_TOLERANCE,
        ExportConfig,
        Exporter,
        ParityTolerance,
        Precision,
        export_run,
    )

    config = ExportConfig(
        precisions=tuple(Precision(p) for p in dict.fromkeys(precisions)),
        opset=opset,
        dynamic_batch=dynamic_batch,
        batch_size=batch_size,
        exporter=Exporter(exporter),
        fp16_io=fp16_io,
        checkpoint=checkpoint,
        parity_images=parity_images,
        fp32_tolerance=ParityTolerance(atol=atol, rtol=rtol, min_agreement=FP32_TOLERANCE.min_agreement),
        fp16_tolerance=ParityTolerance(
            atol=FP16_TOLERANCE.atol, rtol=FP16_TOLERANCE.rtol, min_agreement=min_agreement_fp16
        ),
    )
    result = export_run(run_dir, config=config, progress=None if quiet else lambda m: click.echo(m, err=True))
    if result.static_padding_layers and not quiet:
        click.echo(f"made {result.static_padding_layers} TF-style 'same' padding layer(s) static", err=True)
    for m in result.models:
        click.echo(
            f"{m.name}: {m.path}  max|Δlogit| {m.parity.max_abs_diff:.2e}  mean {m.parity.mean_abs_diff:.2e}  "
            f"top-1 agreement {m.parity.top1_agreement * 100:.2f}% on {m.parity.num_images} images"
            + (f"  val top-1 {m.accuracy.top1 * 100:.2f}%" if m.accuracy.num_images else "  (unlabelled images)")
        )
