"""`edge-tl bench ARTIFACT-or-RUN`."""

from __future__ import annotations

from pathlib import Path

import click

from edge_tl.cli import options


def _batch_sizes(values: tuple[str, ...]) -> tuple[int, ...]:
    sizes: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or int(part) < 1:
                raise click.BadParameter(
                    f"{part!r} is not a batch size (a whole number >= 1)", param_hint="--batch-size"
                )
            sizes.append(int(part))
    return tuple(dict.fromkeys(sizes)) or (1,)


@click.command()
@click.argument("target", metavar="ARTIFACT-or-RUN", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--artifact",
    default=None,
    help="With a run directory: the artifact to time (default: the original model, checkpoint-best or an "
    "imported ONNX).",
)
@click.option(
    "--backend",
    default=None,
    help="Backend (default by the model's kind: torch, onnxruntime, tensorrt). 'trtexec' times an engine "
    "with NVIDIA's trtexec instead (with --cuda-graph: --useCudaGraph), to compare with our runner.",
)
@options.device()
@click.option(
    "--batch-size",
    "batch_sizes",
    multiple=True,
    default=("1",),
    show_default=True,
    help="Batch size(s): repeat or comma-separate for a sweep (e.g. 1,8,32).",
)
@click.option(
    "--warmup", default="10", show_default=True, help="Warm-up, never counted: iterations (20) or seconds (1s)."
)
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Measure this many iterations.")
@click.option("--duration", type=click.FloatRange(min=0), default=None, help="Measure this many seconds (default 2).")
@click.option(
    "--min-iterations",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="With --duration: at least this many iterations.",
)
@options.threads(help="Intra-op CPU threads.")
@click.option("--fp16", is_flag=True, help="PyTorch on CUDA: half precision.")
@click.option("--channels-last", is_flag=True, help="PyTorch on CUDA: channels-last memory format.")
@click.option("--cuda-graph", is_flag=True, help="PyTorch on CUDA: capture once, replay a CUDA graph.")
@options.seed(help="Seed of the random input batch.")
@options.json_file()
def bench(
    target: Path,
    artifact: str | None,
    backend: str | None,
    device: str,
    batch_sizes: tuple[str, ...],
    warmup: str,
    iterations: int | None,
    duration: float | None,
    min_iterations: int,
    threads: int | None,
    fp16: bool,
    channels_last: bool,
    cuda_graph: bool,
    seed: int,
    json_path: Path | None,
) -> None:
    """Measure latency and throughput of a model file or a run's artifact."""
    from edge_tl.bench import BenchConfig, Budget, bench_target
    from edge_tl.runtime import Device, RunnerOptions

    if iterations is None and duration is None:
        duration = 2.0
    measure = Budget(
        iterations=iterations, seconds=duration, min_iterations=min_iterations if duration is not None else 0
    )
    config = BenchConfig(batch_sizes=_batch_sizes(batch_sizes), warmup=Budget.parse(warmup), measure=measure, seed=seed)
    options = RunnerOptions(
        device=Device(device), threads=threads, fp16=fp16, channels_last=channels_last, cuda_graph=cuda_graph
    )
    report = bench_target(target, artifact=artifact, backend=backend, options=options, config=config)
    click.echo(report.table())
    if json_path is not None:
        report.write_json(json_path)
        click.echo(f"wrote {json_path}")
