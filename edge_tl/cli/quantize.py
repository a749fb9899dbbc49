"""`edge-tl quantize RUN`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edge_tl.cli import options
from edge_tl.vocab import QUANTIZE_PRECISIONS


def quantize_config(
    *,
    precision: str,
    recipe: str | None,
    target: str | None,
    tensorrt: str | None,
    cache_version: int | None,
    calib_method: str | None,
    calib_samples: int | None,
    calib_data: Path | None,
    max_accuracy_drop: float | None,
    max_float_layers: int,
    seed: int,
    threads: int | None,
    max_class_drop: float | None = None,
) -> Any:
    """The quantize flags as a QuantizeConfig, its recipe chosen as quantize_run chooses it (a plain function,
    so that mutation testing, which skips decorated functions, checks that the budget and the recipe choice
    reach quantize_run)."""
    from dataclasses import replace

    from edge_tl.quantize import CalibMethod, QuantizeConfig, QuantPrecision
    from edge_tl.quantize.api import resolve_recipe

    config = QuantizeConfig(
        precision=QuantPrecision(precision),
        recipe=recipe,
        calib_method=CalibMethod(calib_method) if calib_method else None,
        calib_samples=calib_samples,
        calib_data=calib_data,
        seed=seed,
        max_accuracy_drop=max_accuracy_drop,
        max_class_drop=max_class_drop,
        max_float_layers=max_float_layers,
        threads=threads,
        target=target,
        tensorrt=tensorrt,
        cache_version=cache_version,
    )
    return replace(config, recipe=resolve_recipe(config))


@click.command()
@options.run_dir()
@options.precision(
    QUANTIZE_PRECISIONS,
    default="int8",
    help="int8 by a recipe; fp16 reuses export's conversion when export did not already make it.",
)
@click.option(
    "--recipe",
    default=None,
    metavar="NAME|PATH",
    help="Calibration recipe: a shipped name (tensorrt-int8-qdq, tensorrt-int8-cache, onnxruntime-cpu-int8) "
    "or a TOML file. Default: the --target's recipe, else onnxruntime-cpu-int8.",
)
@options.target(help="Device profile: its INT8 recipe is the default, and its TensorRT names the calibration cache.")
@options.tensorrt(help="One of the target's TensorRT releases (default: its default).")
@click.option(
    "--cache-version",
    type=click.IntRange(min=1),
    default=None,
    help="Calibration-cache header version (TensorRT's getInferLibVersion(), e.g. 8502, 100300); "
    "default: from --target.",
)
@click.option(
    "--calib-method",
    type=click.Choice(["minmax", "percentile", "entropy", "mse"]),
    default=None,
    help="Override the recipe's calibration method.",
)
@click.option(
    "--calib-samples",
    type=click.IntRange(min=1),
    default=None,
    help="Calibration images (default: the recipe's, 512), seeded and class-balanced.",
)
@click.option(
    "--calib-data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder of calibration images (default: the run's training split; never its validation split).",
)
@click.option(
    "--max-accuracy-drop",
    type=click.FloatRange(min=0),
    default=None,
    metavar="PTS",
    help="Top-1 points INT8 may lose against the original; over it, the most sensitive layers go back "
    "to float one at a time until it holds.",
)
@click.option(
    "--max-class-drop",
    type=click.FloatRange(min=0),
    default=None,
    metavar="PTS",
    help="Recall points any one class may lose against the original (counted in whole images of that class); "
    "over it, layers go back to float as for --max-accuracy-drop.",
)
@click.option(
    "--max-float-layers",
    type=click.IntRange(min=0),
    default=16,
    show_default=True,
    help="How many layers --max-accuracy-drop may return to float before giving up.",
)
@options.seed(help="Seed of the calibration image choice.")
@options.threads(help="CPU threads for calibration, evaluation and latency (default: the libraries' own).")
@options.quiet()
def quantize(
    run_dir: Path,
    precision: str,
    recipe: str | None,
    target: str | None,
    tensorrt: str | None,
    cache_version: int | None,
    calib_method: str | None,
    calib_samples: int | None,
    calib_data: Path | None,
    max_accuracy_drop: float | None,
    max_class_drop: float | None,
    max_float_layers: int,
    seed: int,
    threads: int | None,
    quiet: bool,
) -> None:
    """Calibrate and quantize RUN's ONNX model to INT8 (or FP16); record the artifacts in the manifest."""
    from edge_tl.quantize import quantize_run

    config = quantize_config(
        precision=precision, recipe=recipe, target=target, tensorrt=tensorrt, cache_version=cache_version,
        calib_method=calib_method, calib_samples=calib_samples, calib_data=calib_data,
        max_accuracy_drop=max_accuracy_drop, max_float_layers=max_float_layers, seed=seed, threads=threads,
        max_class_drop=max_class_drop,
    )  # fmt: skip
    result = quantize_run(run_dir, config=config, progress=None if quiet else lambda m: click.echo(m, err=True))
    for name in result.artifacts:
        click.echo(f"recorded {name}")
    if result.top1 is not None and result.reference_top1 is not None:
        budget = f" (budget {result.budget_points:g} pt)" if result.budget_points is not None else ""
        click.echo(
            f"{result.recipe}: val top-1 {result.top1 * 100:.2f}% vs original {result.reference_top1 * 100:.2f}% "
            f"-> drop {result.drop_points:.2f} pt{budget}"
        )
    if result.float_layers:
        lat = result.latency_p50_ms
        click.echo(
            f"kept in float ({len(result.float_layers)}): {', '.join(result.float_layers)}; "
            f"ONNX Runtime CPU b{result.latency_batch} p50 "
            f"{lat['int8_all_layers']:.2f} -> {lat['int8_final']:.2f} ms (FP32 {lat['fp32']:.2f} ms)"
        )
    elif result.latency_p50_ms:
        lat = result.latency_p50_ms
        click.echo(
            f"ONNX Runtime CPU b{result.latency_batch} p50: INT8 {lat['int8_final']:.2f} ms, FP32 {lat['fp32']:.2f} ms"
        )
    for note in result.notes:
        click.echo(f"note: {note}")
