"""`edge-tl import --out RUN (--backbone NAME [--weights FILE | --imagenet] | --onnx | --torchscript |
--exported-program FILE) ...`."""

from __future__ import annotations

from pathlib import Path

import click

from edge_tl.cli import options


def _rgb(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != 3:
        raise click.BadParameter(f"{value!r} is not three comma-separated numbers R,G,B (e.g. 0.485,0.456,0.406)")
    return numbers  # type: ignore[return-value]


@click.command("import")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The new run directory.")
@click.option(
    "--backbone",
    default=None,
    metavar="NAME",
    help="Architecture: a name from `edge-tl backbones list`, or timm:<name>.",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Local weights for --backbone: a state dict, or a timm train.py / torchvision reference / Lightning "
    "checkpoint (read with weights_only=True).",
)
@click.option(
    "--weights-key",
    default=None,
    metavar="KEY",
    help="Which weights of a checkpoint to take (state_dict, state_dict_ema, model, model_ema, "
    "state_dict:<attribute> for Lightning). Default: what the checkpoint's own tool evaluates.",
)
@click.option(
    "--torchscript",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A TorchScript file (torch.jit.save). Needs --img-size --mean --std.",
)
@click.option(
    "--exported-program",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A torch.export program (.pt2, torch.export.save). Needs --img-size --mean --std.",
)
@click.option("--imagenet", is_flag=True, help="Keep --backbone's pretrained 1000-class ImageNet head as it is.")
@click.option(
    "--onnx",
    "onnx_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="An ONNX classifier (float32 or uint8, NCHW or NHWC input); it becomes the reference. Needs --img-size, "
    "and --mean --std or --input-range.",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Class names, one per line in the model's output order.",
)
@click.option(
    "--val-data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Labelled images (one folder per class, named by class name or index) for verify and the accuracy budget.",
)
@click.option(
    "--calib-data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Calibration images for quantize (unlabelled allowed).",
)
@click.option(
    "--img-size", type=click.IntRange(min=8), default=None, help="Input size in pixels (default: the backbone's)."
)
@click.option(
    "--mean", callback=_rgb, default=None, metavar="R,G,B", help="Normalisation mean (default: the backbone's)."
)
@click.option(
    "--std", callback=_rgb, default=None, metavar="R,G,B", help="Normalisation std (default: the backbone's)."
)
@click.option(
    "--interpolation",
    type=click.Choice(["bilinear", "bicubic"]),
    default=None,
    help="Resize interpolation (default: the backbone's; bilinear for ONNX).",
)
@click.option(
    "--crop-pct",
    type=click.FloatRange(0.1, 1.0),
    default=None,
    help="Centre-crop fraction (default: the backbone's; 0.875 for ONNX).",
)
@click.option(
    "--resize-size",
    type=click.IntRange(min=8),
    default=None,
    help="Shorter side before the centre crop (default: as the source tool evaluates: timm floor(size / crop-pct)).",
)
@click.option(
    "--class-order",
    type=click.Choice(["natural", "sorted"]),
    default=None,
    help="How --val-data class folders map to outputs: natural (timm) or sorted (torchvision). Default: the "
    "checkpoint's tool.",
)
@click.option(
    "--accept-low-accuracy",
    is_flag=True,
    help="Import even when the reference scores within 2 points of chance on --val-data.",
)
@click.option(
    "--input-range",
    type=click.Choice(["0-1", "0-255"]),
    default=None,
    help="An ONNX graph that normalises its input itself: feed it pixels in this range instead of giving "
    "--mean/--std (a uint8 input is 0-255).",
)
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="NAME",
    help="A device profile the model must build for (repeatable): an ONNX source above its opset is converted "
    "down, or refused naming the opset to re-export at.",
)
@options.quiet()
def import_(
    out: Path,
    backbone: str | None,
    weights: Path | None,
    weights_key: str | None,
    torchscript: Path | None,
    exported_program: Path | None,
    imagenet: bool,
    onnx_file: Path | None,
    labels: Path | None,
    val_data: Path | None,
    calib_data: Path | None,
    img_size: int | None,
    mean: tuple[float, float, float] | None,
    std: tuple[float, float, float] | None,
    interpolation: str | None,
    crop_pct: float | None,
    resize_size: int | None,
    class_order: str | None,
    accept_low_accuracy: bool,
    input_range: str | None,
    targets: tuple[str, ...],
    quiet: bool,
) -> None:
    """Turn a model trained elsewhere into a run that export, quantize, compile, bundle, deploy, verify and bench
    accept."""
    from edge_tl.importers import ImportRequest, PreprocessingOptions, import_model

    if onnx_file is None and (input_range or targets):
        raise click.UsageError("--input-range and --target describe an --onnx source")
    files = [
        (flag, f)
        for flag, f in (("--onnx", onnx_file), ("--torchscript", torchscript), ("--exported-program", exported_program))
        if f is not None
    ]
    if len(files) > 1:
        raise click.UsageError(f"give one source: {' and '.join(flag for flag, _ in files)} exclude each other")
    if files:
        if backbone or weights or imagenet:
            raise click.UsageError(f"{files[0][0]} stands alone: drop --backbone / --weights / --imagenet")
        kind = {"--onnx": "onnx", "--torchscript": "torchscript", "--exported-program": "exported-program"}[files[0][0]]
    elif backbone is None:
        raise click.UsageError("give --backbone NAME with --weights FILE or --imagenet, or --onnx FILE")
    elif weights is not None and imagenet:
        raise click.UsageError(
            "--weights and --imagenet exclude each other: the weights are either yours or ImageNet's"
        )
    elif weights is not None:
        kind = "pytorch"
    elif imagenet:
        kind = "pretrained"
    else:
        raise click.UsageError(
            f"--backbone {backbone} needs its weights: --weights FILE, or --imagenet for the pretrained model"
        )
    request = ImportRequest(
        kind=kind,
        out=out,
        backbone=backbone,
        weights=weights,
        onnx=onnx_file,
        program=torchscript or exported_program,
        labels=labels,
        val_data=val_data,
        calib_data=calib_data,
        preprocessing=PreprocessingOptions(
            img_size=img_size,
            mean=mean,
            std=std,
            interpolation=interpolation,
            crop_pct=crop_pct,
            resize_size=resize_size,
        ),
        weights_key=weights_key,
        class_order=class_order,
        accept_low_accuracy=accept_low_accuracy,
        targets=targets,
        input_range=input_range,
    )
    result = import_model(request, progress=None if quiet else lambda m: click.echo(m, err=True))
    if not quiet:
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
    click.echo(
        f"run: {result.run_dir} ({result.kind} source, {len(result.classes)} classes, "
        f"{result.num_val} validation images)"
    )
    click.echo(f"reference: {result.reference.name} ({result.reference.path})")
