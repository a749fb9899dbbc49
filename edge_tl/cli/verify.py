"""`edge-tl verify RUN`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edge_tl.cli import options


def verify_config(
    *,
    max_accuracy_drop: float | None,
    gate: str,
    significance_level: float,
    min_agreement: float | None,
    artifacts: tuple[str, ...],
    reference: str | None,
    batch_size: int,
    max_images: int | None,
    device: str,
    threads: int | None,
    latency_iterations: int,
    no_latency: bool,
    max_class_drop: float | None = None,
) -> Any:
    """The verify flags as a VerifyConfig (a plain function, so that mutation testing, which skips
    decorated functions, checks that the gates reach the check)."""
    from edge_tl.bench import BenchConfig, Budget
    from edge_tl.runtime import Device
    from edge_tl.significance import Gate
    from edge_tl.verify import VerifyConfig

    return VerifyConfig(
        reference=reference,
        artifacts=artifacts or None,
        batch_size=batch_size,
        max_images=max_images,
        device=Device(device),
        threads=threads,
        measure_latency=not no_latency,
        latency=BenchConfig(
            batch_sizes=(1,), warmup=Budget(iterations=10), measure=Budget(iterations=latency_iterations)
        ),
        max_accuracy_drop=max_accuracy_drop,
        max_class_drop=max_class_drop,
        min_agreement=min_agreement,
        gate=Gate(gate),
        significance_level=significance_level,
    )


@click.command()
@options.run_dir()
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=None,
    metavar="PTS",
    help="Fail if an artifact's top-1 is more than PTS points below the original's.",
)
@click.option(
    "--max-class-drop",
    type=float,
    default=None,
    metavar="PTS",
    help="Fail if any class's recall is more than PTS points below the original's (counted in whole images).",
)
@click.option(
    "--gate",
    type=click.Choice(["point", "significant"]),
    default="point",
    show_default=True,
    help="point: fail when the top-1 drop is over --max-accuracy-drop; significant: only when it is also "
    "distinguishable from noise (exact McNemar test at --significance-level).",
)
@click.option(
    "--significance-level",
    type=float,
    default=0.05,
    show_default=True,
    metavar="ALPHA",
    help="Level of the significance test; intervals are at 1 - ALPHA.",
)
@click.option(
    "--min-agreement",
    type=float,
    default=None,
    metavar="FRACTION",
    help="Fail if an artifact agrees with the original's top-1 on less than this share of images (e.g. 0.99).",
)
@click.option(
    "--artifact",
    "artifacts",
    multiple=True,
    help="Verify only these artifacts (repeatable; default: every onnx/engine).",
)
@click.option(
    "--reference",
    default=None,
    help="The artifact to compare with (default: the run's original model, checkpoint-best or an imported ONNX).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="Use at most this many validation images.")
@options.device()
@options.threads(help="Intra-op CPU threads for every runner.")
@click.option(
    "--latency-iterations",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Timed iterations at batch 1 per model (after 10 warm-up ones).",
)
@click.option("--no-latency", is_flag=True, help="Skip the latency measurement.")
@options.quiet("the table")
def verify(
    run_dir: Path,
    max_accuracy_drop: float | None,
    max_class_drop: float | None,
    gate: str,
    significance_level: float,
    min_agreement: float | None,
    artifacts: tuple[str, ...],
    reference: str | None,
    batch_size: int,
    max_images: int | None,
    device: str,
    threads: int | None,
    latency_iterations: int,
    no_latency: bool,
    quiet: bool,
) -> None:
    """Compare every ONNX model and engine of RUN with the original model; write verify/report.*."""
    from edge_tl.verify import verify_run

    config = verify_config(
        max_accuracy_drop=max_accuracy_drop, gate=gate, significance_level=significance_level,
        min_agreement=min_agreement,
        artifacts=artifacts, reference=reference, batch_size=batch_size, max_images=max_images, device=device,
        threads=threads, latency_iterations=latency_iterations, no_latency=no_latency, max_class_drop=max_class_drop,
    )  # fmt: skip
    report = verify_run(
        run_dir, config=config, progress=None if quiet else lambda m: click.echo(m, err=True), check=False
    )
    click.echo(report.table())
    if not quiet:
        click.echo(
            f"wrote {report.paths['markdown']}, {report.paths['json'].name}, {report.paths['png'].name}", err=True
        )
    report.raise_for_gates()
