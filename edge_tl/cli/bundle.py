"""`edge-tl bundle RUN --target T --precision P`."""

from __future__ import annotations

from pathlib import Path

import click

from edge_tl.cli import options


@click.command()
@options.run_dir(exists=True)
@options.target(required=True)
@options.precision(required=True, help="Precision to ship.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Bundle directory (default: RUN/bundle/<target>-<precision>).",
)
@click.option(
    "--eval-images",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Validation images in the evaluation pack.",
)
@options.tensorrt(help="TensorRT release to plan for (one the target lists; default: its default).")
@click.option("--tar", is_flag=True, help="Also write <bundle>.tar.gz.")
@click.option(
    "--triton",
    is_flag=True,
    help="Also write triton/<model>/: a Triton Inference Server model repository (config.pbtxt, labels, model).",
)
def bundle(
    run_dir: Path,
    target: str,
    precision: str,
    out: Path | None,
    eval_images: int,
    tensorrt: str | None,
    tar: bool,
    triton: bool,
) -> None:
    """Pack a run for a device: model, build plan, labels, preprocessing, target profile, evaluation pack."""
    from edge_tl.deploy.bundle import make_bundle

    made = make_bundle(
        run_dir,
        target=target,
        precision=precision,
        out=out,
        eval_images=eval_images,
        tensorrt=tensorrt,
        tar=tar,
        triton=triton,
    )
    files = made.files
    size = sum(s for _, s in files.values())
    click.echo(f"bundle {made.root}: {len(files)} files, {size / 1e6:.1f} MB, digest {made.digest[:16]}")
    click.echo(f"  model {made.model['path']}, evaluation pack of {made.manifest['eval']['num_images']} images")
    if made.build_plan:
        click.echo(f"  on the device: bash {made.build_plan['script']} (TensorRT {made.build_plan['tensorrt']})")
    record = made.manifest.get("triton")
    if record:
        click.echo(
            f"  Triton: {made.root / record['dir']} ({record['platform']}, max_batch_size {record['max_batch_size']}); "
            f"tritonserver --model-repository={made.root / 'triton'}"
            + ("" if record["model"].endswith(".onnx") else f" once the device's engine is at {record['model']}")
        )
    if tar:
        click.echo(f"  archive {made.root.with_name(made.root.name + '.tar.gz')}")
