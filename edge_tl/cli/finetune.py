"""`edge-tl finetune`: transfer learning from a pretrained backbone (one process or DDP)."""

from __future__ import annotations

from dataclasses import fields

import click

from edge_tl.cli import options
from edge_tl.data.cache import CacheMode
from edge_tl.train.config import TRAIN_PRECISIONS, Device, FinetuneConfig, GpuData, Precision

_DEFAULTS = {f.name: f.default for f in fields(FinetuneConfig)}


def _default(name: str) -> object:
    return _DEFAULTS[name]


@click.command()
@click.option("--data", required=True, help="Image folder (one subfolder per class) or a built-in set: digits.")
@click.option("--val-data", default=None, help="Separate validation folder (same class subfolders).")
@click.option(
    "--val-split",
    type=float,
    default=_default("val_split"),
    show_default=True,
    help="Stratified validation fraction when there is no --val-data.",
)
@click.option(
    "--backbone",
    default=_default("backbone"),
    show_default=True,
    help="See `edge-tl backbones list`; any timm model as timm:<name>.",
)
@click.option(
    "--weights", default="imagenet", show_default=True, help="'imagenet', or a local state dict / checkpoint file."
)
@click.option("--no-pretrained", is_flag=True, help="Start from random weights.")
@click.option("--img-size", type=int, default=None, help="Input size (default: the backbone's own).")
@click.option("--epochs", type=int, default=_default("epochs"), show_default=True)
@click.option(
    "--freeze-epochs",
    type=int,
    default=_default("freeze_epochs"),
    show_default=True,
    help="Head-only epochs with the backbone frozen.",
)
@click.option(
    "--batch-size",
    type=int,
    default=_default("batch_size"),
    show_default=True,
    help="Global batch (split over DDP processes).",
)
@click.option("--lr", type=float, default=_default("lr"), show_default=True, help="Peak learning rate of the head.")
@click.option(
    "--backbone-lr-mult",
    type=float,
    default=_default("backbone_lr_mult"),
    show_default=True,
    help="Backbone LR = lr x this.",
)
@click.option("--weight-decay", type=float, default=_default("weight_decay"), show_default=True)
@click.option("--warmup-epochs", type=float, default=_default("warmup_epochs"), show_default=True)
@click.option("--label-smoothing", type=float, default=_default("label_smoothing"), show_default=True)
@click.option("--augment/--no-augment", default=True, show_default=True, help="Training augmentation.")
@click.option("--hflip/--no-hflip", default=None, help="Random horizontal flips (default: on, off for digits).")
@click.option("--freeze-bn", is_flag=True, help="Keep BatchNorm statistics fixed (small per-process batches).")
@click.option("--sync-bn", is_flag=True, help="SyncBatchNorm across DDP processes (CUDA).")
@click.option(
    "--patience",
    type=int,
    default=0,
    show_default=True,
    help="Early stop after this many epochs without a better validation top-1 (0: off).",
)
@options.seed()
@options.device()
@options.precision(TRAIN_PRECISIONS, default="auto", help="auto: bf16/fp16 autocast on CUDA, fp32 on the CPU.")
@click.option(
    "--workers", type=int, default=None, help="Data-loader worker processes (default: cores per process minus one)."
)
@click.option(
    "--cache",
    type=click.Choice([c.value for c in CacheMode]),
    default="auto",
    show_default=True,
    help="Decode each image once into a cache (auto: on disk if it fits, else RAM, else off).",
)
@click.option(
    "--gpu-data",
    type=click.Choice([g.value for g in GpuData]),
    default="auto",
    show_default=True,
    help="With CUDA: decode (nvJPEG) and augment on the GPU (auto: when the CPU loader is too slow).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Run directory to create (or continue with --resume).",
)
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out exactly where it stopped.")
@options.quiet("the result (no progress bars or per-epoch lines)")
@click.option("--nproc-per-node", type=int, default=None, help="Launch N DDP processes per node through torchrun.")
@click.option("--nnodes", default="1", show_default=True, help="Number of nodes (torchrun --nnodes).")
@click.option("--node-rank", type=int, default=0, show_default=True, help="This node's rank (torchrun --node-rank).")
@click.option("--rdzv-endpoint", default=None, help="host:port of the c10d rendezvous (multi-node).")
@click.option("--master-addr", default=None, help="Rank 0's address (static multi-node rendezvous).")
@click.option("--master-port", type=int, default=None, help="Rank 0's port (static multi-node rendezvous).")
def finetune(
    *,
    data: str,
    val_data: str | None,
    val_split: float,
    backbone: str,
    weights: str,
    no_pretrained: bool,
    img_size: int | None,
    epochs: int,
    freeze_epochs: int,
    batch_size: int,
    lr: float,
    backbone_lr_mult: float,
    weight_decay: float,
    warmup_epochs: float,
    label_smoothing: float,
    augment: bool,
    hflip: bool | None,
    freeze_bn: bool,
    sync_bn: bool,
    patience: int,
    seed: int,
    device: str,
    precision: str,
    workers: int | None,
    cache: str,
    gpu_data: str,
    out: str,
    resume: bool,
    quiet: bool,
    nproc_per_node: int | None,
    nnodes: str,
    node_rank: int,
    rdzv_endpoint: str | None,
    master_addr: str | None,
    master_port: int | None,
) -> None:
    """Fine-tune a pretrained backbone on your images into the run directory --out.

    Several processes (DDP): add --nproc-per-node N (and --nnodes/--node-rank/--rdzv-endpoint
    on several machines), or start `python -m edge_tl.train.ddp_entry` with these options
    under your own torchrun.
    """
    from edge_tl.errors import ConfigError
    from edge_tl.train.distributed import LaunchConfig, launch, under_launcher

    config = FinetuneConfig(
        data=data,
        out=out,
        backbone=backbone,
        weights="none" if no_pretrained else weights,
        val_data=val_data,
        val_split=val_split,
        img_size=img_size,
        epochs=epochs,
        freeze_epochs=freeze_epochs,
        batch_size=batch_size,
        lr=lr,
        backbone_lr_mult=backbone_lr_mult,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing,
        augment=augment,
        hflip=hflip,
        freeze_bn=freeze_bn,
        sync_bn=sync_bn,
        patience=patience,
        seed=seed,
        device=Device(device),
        precision=Precision(precision),
        workers=workers,
        cache=CacheMode(cache),
        gpu_data=GpuData(gpu_data),
        resume=resume,
        quiet=quiet,
    )
    if nproc_per_node is not None:
        if under_launcher():
            raise ConfigError("already running under torchrun: drop --nproc-per-node (torchrun decides the processes)")
        launch(
            config,
            LaunchConfig(
                nproc_per_node=nproc_per_node,
                nnodes=nnodes,
                node_rank=node_rank,
                rdzv_endpoint=rdzv_endpoint,
                master_addr=master_addr,
                master_port=master_port,
            ),
        )
        _report(config)
        return
    from edge_tl.train import finetune as run_finetune

    run_finetune(config)
    if not under_launcher() or _is_rank0():
        _report(config)


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _report(config: FinetuneConfig) -> None:
    from edge_tl.runs import Run

    if config.quiet or not Run.exists(config.out):
        return
    run = Run.open(config.out)
    metrics = run.get("metrics", {}) or {}
    top1 = metrics.get("val_top1")
    click.echo(f"run: {config.out}")
    if top1 is not None:
        top5 = metrics.get("val_top5")
        click.echo(f"best validation top-1 {top1:.4f}" + (f", top-5 {top5:.4f}" if top5 is not None else ""))
    if run.has_artifact("checkpoint-best"):
        click.echo(f"best checkpoint: {run.artifact_path('checkpoint-best')}")
