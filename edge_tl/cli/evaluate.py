"""`edge-tl evaluate RUN`."""

from __future__ import annotations

import click


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option(
    "--checkpoint",
    type=click.Choice(["best", "last"]),
    default=None,
    help="A fine-tuned run's checkpoint (default: the run's reference, which for an ONNX import is its ONNX model).",
)
@click.option("--batch-size", type=int, default=128, show_default=True)
def evaluate(*, run_dir: str, checkpoint: str | None, batch_size: int) -> None:
    """Top-1, top-5, per-class accuracy and confusion matrix of a run on its validation split."""
    from edge_tl.train.evaluate import evaluate_run

    report = evaluate_run(run_dir, checkpoint=f"checkpoint-{checkpoint}" if checkpoint else None, batch_size=batch_size)
    r = report.result
    click.echo(
        f"{r.count} validation images: top-1 {r.top1:.4f}" + (f", top-5 {r.top5:.4f}" if r.top5 is not None else "")
    )
    worst = sorted(((a, c) for c, a in zip(report.classes, r.per_class) if a is not None))[:3]
    click.echo("lowest per-class accuracy: " + ", ".join(f"{c} {a:.3f}" for a, c in worst))
    click.echo(f"metrics: {report.metrics_path}")
    click.echo(f"confusion matrix: {report.confusion_json} and {report.confusion_png}")
