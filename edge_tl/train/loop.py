"""The transfer-learning loop.

Two phases: for ``freeze_epochs`` epochs only the new head learns (backbone weights frozen
and its BatchNorm layers in inference mode, so ImageNet statistics are not disturbed by a
randomly initialised head's gradients); then everything trains, the backbone with a smaller
learning rate than the head. AdamW, linear warm-up then cosine decay per step, label
smoothing, reproducible augmentation.

The same code runs one process or many under torchrun: the data order comes from a
``DistributedSampler`` (also with one process, so the order does not depend on the number
of processes), validation is sharded and its sums all-reduced, and only rank 0 writes.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Sequence

import edge_tl.train.distributed as dist_util
from edge_tl._lazy import lazy_import
from edge_tl.errors import ConfigError, RunError
from edge_tl.runs import PRE_RUN_NAMES, RUN_LOCK_NAME, Run, atomic_write_text, run_writer
from edge_tl.train.batchnorm import (
    BN_BATCHES,
    GAP_BATCHES,
    GAP_WARN,
    gap_cause,
    reestimate,
    statistics_gap,
)
from edge_tl.train.config import Device, FinetuneConfig, Precision
from edge_tl.train.evaluate import evaluate_model
from edge_tl.train.state import capture_rng, restore_rng, seed_everything, warmup_cosine
from edge_tl.train.tensorboard import TensorBoardLog

METRICS_FILE = "metrics.jsonl"
BEST_PATH = "checkpoints/best.pt"
LAST_PATH = "checkpoints/last.pt"
STAGE = "finetune"


class Phase(str, Enum):
    HEAD = "head"  # backbone frozen
    FULL = "full"  # everything trains


@dataclass(frozen=True)
class EpochRecord:
    """One line of ``metrics.jsonl``."""

    epoch: int  # 1-based
    phase: str
    train_loss: float
    train_top1: float
    val_loss: float
    val_top1: float
    val_top5: float | None
    lr_head: float
    lr_backbone: float
    images_per_s: float
    seconds: float
    # BatchNorm (edge_tl.train.batchnorm): whether the running statistics were re-estimated
    # before this validation, how long that took, and top-1 on a few validation batches with
    # batch and with running statistics (None: no BatchNorm), the latter also as training left
    # them, before the re-estimation (None: not re-estimated). Defaults read older metrics files.
    bn_reestimated: bool = False
    bn_seconds: float = 0.0
    bn_batch_top1: float | None = None
    bn_running_top1: float | None = None
    bn_stale_top1: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class FinetuneResult:
    run_dir: Path
    best_epoch: int
    best_val_top1: float
    epochs_run: int
    stopped_early: bool
    history: tuple[EpochRecord, ...] = field(default_factory=tuple)


@dataclass
class TrainingProgress:
    """Where a run stands after its last finished epoch, besides the weights and optimiser:
    ``last.pt`` records it, and ``--resume`` restores it so that the continued run picks the
    same best checkpoint and stops at the same epoch as an uninterrupted one would."""

    epoch: int = 0  # epochs finished
    best_top1: float = -1.0  # below any top-1: the first epoch is always the first best
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one, for early stopping
    best_summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> TrainingProgress:
        return cls(
            epoch=int(state["epoch"]),
            best_top1=float(state["best_top1"]),
            best_epoch=int(state["best_epoch"]),
            bad_epochs=int(state["bad_epochs"]),
            best_summary=dict(state["best_summary"]),
        )

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "best_summary": self.best_summary,
        }

    def finish_epoch(self, epoch: int, val_top1: float, summary: dict[str, Any]) -> bool:
        """Record epoch ``epoch`` (1-based); whether it is the new best (a tie is not)."""
        self.epoch = epoch
        improved = val_top1 > self.best_top1
        if improved:
            self.best_top1, self.best_epoch, self.bad_epochs = val_top1, epoch, 0
            self.best_summary = summary
        else:
            self.bad_epochs += 1
        return improved

    def should_stop(self, patience: int) -> bool:
        """Early stopping: ``patience`` epochs without a new best (0: never)."""
        return patience > 0 and self.bad_epochs >= patience


#: Called on every rank after each epoch's checkpoint is written; raising stops the run
#: (as an interruption would) with everything saved so far kept.
EpochCallback = Callable[[EpochRecord], None]


# --------------------------------------------------------------------------- device and precision


@dataclass(frozen=True)
class Hardware:
    device: Any  # torch.device
    amp_dtype: Any  # torch dtype or None (fp32)
    use_scaler: bool
    channels_last: bool

    @property
    def precision(self) -> str:
        if self.amp_dtype is None:
            return "fp32"
        return "bf16" if "bfloat16" in str(self.amp_dtype) else "fp16"


def resolve_hardware(device: Device, precision: Precision, *, local_rank: int = 0) -> Hardware:
    torch = lazy_import("torch")
    cuda_ok = torch.cuda.is_available()
    if device is Device.CUDA and not cuda_ok:
        raise ConfigError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    on_cuda = device is Device.CUDA or (device is Device.AUTO and cuda_ok)
    if not on_cuda:
        if precision is Precision.FP16:
            raise ConfigError("--precision fp16 needs a CUDA GPU; on the CPU use fp32 (or bf16)")
        dtype = torch.bfloat16 if precision is Precision.BF16 else None
        return Hardware(torch.device("cpu"), dtype, False, False)
    dev = torch.device("cuda", local_rank)
    if precision is Precision.AUTO:
        precision = Precision.BF16 if torch.cuda.is_bf16_supported() else Precision.FP16
    dtype = {Precision.FP32: None, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}[precision]
    return Hardware(dev, dtype, precision is Precision.FP16, True)


# --------------------------------------------------------------------------- model pieces


def head_prefix(model: Any) -> str:
    from edge_tl.models.registry import classifier_name

    return classifier_name(model) + "."


def param_groups(model: Any, *, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict[str, Any]]:
    """Backbone and head groups, each split so that biases and norm scales get no weight decay."""
    head = head_prefix(model)
    groups: dict[tuple[str, bool], list[Any]] = {}
    for name, param in model.named_parameters():
        part = "head" if name.startswith(head) else "backbone"
        groups.setdefault((part, param.ndim > 1), []).append(param)
    out = []
    for (part, decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "lr": lr if part == "head" else lr * backbone_lr_mult,
                "weight_decay": weight_decay if decay else 0.0,
                "part": part,
            }
        )
    return out


def set_phase(model: Any, phase: Phase, *, freeze_bn: bool) -> None:
    """Trainable parameters and train/eval modes for ``phase`` (call at every epoch start)."""
    nn = lazy_import("torch.nn")
    head = head_prefix(model)
    frozen = phase is Phase.HEAD
    for name, param in model.named_parameters():
        param.requires_grad_(not frozen or name.startswith(head))
    if frozen:
        model.eval()
        model.get_submodule(head[:-1]).train()
    else:
        model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


# --------------------------------------------------------------------------- data


#: ``--gpu-data auto`` decodes on the GPU when the CPU loader, timed on a few images, is
#: slower than this: about half the step rate of a compact backbone at 224 px on one
#: workstation GPU (EfficientNet-Lite0, bf16, channels-last: 5,203 img/s on an H200).
GPU_DATA_MIN_RATE = 2500.0


def default_workers(world_size: int) -> int:
    """Loader workers per process: the cores each process gets, less one for the process itself."""
    return max(0, _cpu_count() // max(1, world_size) - 1)


class EpochSampler:
    """Yields ``(epoch, index)``: persistent workers keep their copy of the dataset, so the
    epoch that seeds each sample's augmentation travels with the index instead."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Any:
        epoch = self.epoch
        return ((epoch, index) for index in self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def make_loader(
    dataset: Any,
    *,
    batch_size: int,
    train: bool,
    seed: int,
    ctx: dist_util.DistContext,
    workers: int,
    pin_memory: bool,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> Any:
    """The one place loaders are built.

    Training: a ``DistributedSampler`` even for one process, so the permutation of epoch
    ``e`` is a function of ``(seed, e)`` only and each rank takes every ``world_size``-th
    index of it: 1 process x batch B and N processes x batch B/N see the same global batches.
    Validation: an unpadded shard per rank (a padded sampler would count images twice).
    Workers persist across epochs (no re-fork, no re-import per epoch) and keep four
    batches each in flight: uint8 batches are small, and a deeper queue absorbs slow files.
    """
    torch = lazy_import("torch")
    data = lazy_import("torch.utils.data")
    if train:
        sampler: Any = EpochSampler(
            data.DistributedSampler(
                dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=False
            )
        )
    else:
        sampler = list(range(ctx.rank, len(dataset), ctx.world_size))
    extra = {"persistent_workers": True, "prefetch_factor": 4} if workers > 0 else {}
    return data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=False,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate_fn,
        **extra,
    )


def cpu_loader_rate(dataset: Any, workers: int, *, probes: int = 8) -> float:
    """Images/s the CPU loader would deliver: one process's time per image (first-epoch
    decoding, uncached) on up to ``probes`` images, times the workers."""
    count = min(probes, len(dataset))
    started = time.perf_counter()
    for index in range(count):
        dataset.pixels(index, 0)
    per_image = (time.perf_counter() - started) / max(1, count)
    return max(1, workers) / max(per_image, 1e-9)


# --------------------------------------------------------------------------- the training step


class TrainStep:
    """One optimisation step, with running sums kept on the device (no host sync per step)."""

    def __init__(
        self, *, model: Any, optimizer: Any, scheduler: Any, scaler: Any, criterion: Any, hardware: Hardware
    ) -> None:
        torch = lazy_import("torch")
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.criterion = criterion
        self.device = hardware.device
        self.amp_dtype = hardware.amp_dtype
        self.use_scaler = hardware.use_scaler
        self.channels_last = hardware.channels_last
        self._torch = torch
        self.reset()

    def reset(self) -> None:
        torch = self._torch
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.count = 0

    def __call__(self, images: Any, labels: Any) -> None:
        torch = self._torch
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model(images)
            loss = self.criterion(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.use_scaler:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            self.loss_sum += loss.detach().double() * labels.shape[0]
            self.correct += (logits.argmax(dim=1) == labels).sum()
        self.count += labels.shape[0]

    def totals(self, ctx: dist_util.DistContext) -> tuple[float, float]:
        """Mean training loss and top-1 over the epoch, over all processes (one host sync)."""
        torch = self._torch
        sums = torch.stack(
            [
                self.loss_sum,
                self.correct.double(),
                torch.tensor(float(self.count), dtype=torch.float64, device=self.device),
            ]
        )
        dist_util.all_reduce_sum(sums, ctx)
        loss_sum, correct, count = sums.tolist()
        return (loss_sum / count, correct / count) if count else (0.0, 0.0)


# --------------------------------------------------------------------------- the loop


def finetune(config: FinetuneConfig, *, callbacks: Sequence[EpochCallback] = ()) -> FinetuneResult:
    """Fine-tune ``config.backbone`` on ``config.data`` into the run directory ``config.out``.

    Run it directly (one process) or in every worker of a torchrun job; see
    :func:`edge_tl.train.distributed.launch`.
    """
    lazy_import("torch", purpose="fine-tuning")
    hardware_probe = resolve_hardware(config.device, config.precision)
    ctx = dist_util.init_from_env(hardware_probe.device.type)
    try:
        trainer = _Trainer(config, ctx, callbacks)
        if dist_util.under_launcher():  # the launching process holds the run's lock for its workers
            return trainer.run()
        # What refuses the run comes before its lock file, so a refused --out is left as it was
        # (run() checks the same again under the lock, where a second finetune may have written).
        trainer.check_not_foreign()
        trainer.check_settings()
        with run_writer(config.out, "finetune"):  # one finetune per run at a time
            return trainer.run()
    finally:
        dist_util.shutdown(ctx)


@dataclass(frozen=True)
class _Fit:
    """What the epochs work on: the model, its data and its optimisation."""

    model: Any
    classes: tuple[str, ...]
    train_ds: Any
    train_loader: Any
    val_loader: Any
    bn_loader: Any  # training images without augmentation, for the BatchNorm statistics
    gap_loader: Any  # the first validation batches, for the batch- vs running-statistics gap
    optimizer: Any
    scheduler: Any
    scaler: Any
    criterion: Any


class _Trainer:
    def __init__(self, config: FinetuneConfig, ctx: dist_util.DistContext, callbacks: Sequence[EpochCallback]) -> None:
        self.config = config
        self.ctx = ctx
        self.callbacks = tuple(callbacks)
        self.hw = resolve_hardware(config.device, config.precision, local_rank=ctx.local_rank)
        self.out = Path(config.out)
        self.show = ctx.is_main and not config.quiet

    # ---- output

    def say(self, text: str) -> None:
        if self.show:
            tqdm = lazy_import("tqdm")
            tqdm.tqdm.write(text, file=sys.stderr)

    # ---- run directory

    def _check_out(self) -> bool:
        """Whether this run continues an interrupted one (False: it starts from epoch 0)."""
        exists = Run.exists(self.out)
        if self.config.resume:
            if not exists:
                raise RunError(
                    f"--resume: {str(self.out)!r} holds no interrupted run (no manifest); "
                    "drop --resume to start a new run there"
                )
            training = Run.open(self.out).require("training", stage="--resume")
            stored = FinetuneConfig.from_dict(training["config"])
            diff = stored.differences(self.config)
            if diff:
                listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
                raise ConfigError(
                    f"--resume must use the settings the run was started with; these differ ({listed}). "
                    "Repeat the original options, or start a new run with another --out."
                )
            if not (self.out / LAST_PATH).is_file():
                if training.get("status") != "running":
                    raise RunError(
                        f"--resume: {str(self.out)!r} holds no interrupted run (no {LAST_PATH}); "
                        "drop --resume and choose another --out"
                    )
                # Stopped during epoch 1, before any checkpoint: nothing to continue, and nothing
                # but what finetune itself wrote there. Start the same run again from epoch 0.
                self.say(f"{self.out} was stopped before its first checkpoint: starting it again")
                return False
            return True
        if exists:
            hint = (
                "pass --resume with the same options to continue it"
                if (Run.open(self.out).get("training") or {}).get("status") == "running"
                else "choose another --out"
            )
            raise ConfigError(f"{str(self.out)!r} already holds a run; {hint}")
        self.check_not_foreign()
        return False

    def check_settings(self) -> None:
        """The refusals that read nothing but the settings and the run's own records, made before the
        run's lock file would be: a refused --out is left as it was. Where the lock file is there
        already, a finetune may be writing the run now: its records are judged under the lock (so a
        second finetune hears that the first one is running)."""
        self._check_world()
        if not (self.out / RUN_LOCK_NAME).exists():
            self._check_out()

    def check_not_foreign(self) -> None:
        """Refuse an --out that holds files edge-tl did not put there (before anything, the run's lock included)."""
        # A new run writes split.json, manifest.json, checkpoints/ there: never over the user's files.
        # The launcher's own .launch-config files are written there before the workers start, and
        # `edge-tl ship` its ship.toml (and superseded/, a run it moved aside) before fine-tuning.
        if self.out.exists() and not Run.exists(self.out):
            foreign = (
                []
                if not self.out.is_dir()
                else sorted(
                    p.name
                    for p in self.out.iterdir()
                    if not p.name.startswith(".launch-config.") and p.name not in PRE_RUN_NAMES
                )
            )
            if not self.out.is_dir() or foreign:
                listed = f" (it holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})" if foreign else ""
                raise ConfigError(
                    f"--out {str(self.out)!r} exists and is not an empty directory{listed}; give a new one "
                    "(nothing there is touched)"
                )

    # ---- main

    def run(self) -> FinetuneResult:
        from edge_tl.models import Weights, get_backbone

        config = self.config
        self._check_world()
        resuming = self._check_out()
        spec = get_backbone(config.backbone)
        prep = spec.preprocessing.with_input_size(config.img_size or spec.preprocessing.input_size)
        weights = Weights.parse(config.weights, pretrained=config.weights != "none")
        dist_util.barrier(self.ctx)  # every rank has checked the output before rank 0 writes into it
        split, run = self._split_and_run(resuming, spec=spec, prep=prep, weights=weights)
        model = self._build_model(len(split.classes), weights)
        fit = self._fit(model, split, prep)
        progress, history = TrainingProgress(), []
        if resuming:
            progress, history = self._restore(model, fit.optimizer, fit.scheduler, fit.scaler)
        start_epoch = progress.epoch
        stopped_early = self._train_epochs(fit, run, progress, history)
        epochs_run = history[-1].epoch if history else start_epoch
        if run is not None:
            self._record_completion(
                run, progress, epochs_run=epochs_run, stopped_early=stopped_early, steps_per_epoch=len(fit.train_loader)
            )
        return FinetuneResult(
            run_dir=self.out,
            best_epoch=progress.best_epoch,
            best_val_top1=progress.best_top1,
            epochs_run=epochs_run,
            stopped_early=stopped_early,
            history=tuple(history),
        )

    # ---- the steps of a run, in order

    def _check_world(self) -> None:
        """Settings the processes and the device must agree with, refused before anything is read."""
        config, ctx = self.config, self.ctx
        if config.batch_size % ctx.world_size:
            raise ConfigError(
                f"--batch-size {config.batch_size} (the global batch) must be divisible by the "
                f"{ctx.world_size} processes"
            )
        if config.sync_bn and self.hw.device.type != "cuda":
            raise ConfigError(
                "--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); use --freeze-bn on the CPU"
            )

    def _split_and_run(self, resuming: bool, *, spec: Any, prep: Any, weights: Any) -> tuple[Any, Run | None]:
        """The data split every rank trains on, and (on rank 0) the run directory it is recorded in.

        Rank 0 checks the images and writes split.json; the others read that file, so every
        process trains on exactly the recorded split.
        """
        from edge_tl.data import load_dataset, load_split, save_split

        config, ctx = self.config, self.ctx
        split_path = self.out / "split.json"
        if resuming:
            split = load_split(split_path)
        else:
            if ctx.is_main:
                split = load_dataset(
                    config.data, val_source=config.val_data, val_split=config.val_split, seed=config.seed
                )
        run: Run | None = None
        if ctx.is_main and not resuming:
            self.out.mkdir(parents=True, exist_ok=True)
            save_split(split, split_path)
            run = Run.create(
                self.out,
                backbone={**spec.to_dict(), "weights": weights.describe()},
                preprocessing=prep.to_dict(),
                classes=list(split.classes),
                data=split.manifest_section(split_file=split_path.name),
                training={"config": config.to_dict(), "status": "running"},
            )
        elif ctx.is_main:
            run = Run.open(self.out)
        dist_util.barrier(ctx)
        if not ctx.is_main and not resuming:
            split = load_split(split_path)
        return split, run

    def _build_model(self, num_classes: int, weights: Any) -> Any:
        """The seeded model on the device (SyncBatchNorm across processes when asked)."""
        torch = lazy_import("torch")
        nn = lazy_import("torch.nn")
        from edge_tl.models import build_model

        config, hw = self.config, self.hw
        seed_everything(config.seed)
        model = build_model(config.backbone, num_classes, weights=weights)
        if config.sync_bn and self.ctx.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model.to(hw.device, memory_format=torch.channels_last if hw.channels_last else torch.preserve_format)

    def _fit(self, model: Any, split: Any, prep: Any) -> _Fit:
        """The loaders, optimiser, schedule, gradient scaler and loss the epochs use."""
        torch = lazy_import("torch")
        nn = lazy_import("torch.nn")
        from edge_tl.data import AugmentConfig
        from edge_tl.data.cache import BaseSpec, open_cache
        from edge_tl.data.torch_dataset import TorchImageDataset

        config, ctx, hw = self.config, self.ctx, self.hw
        hflip = config.hflip
        augment = AugmentConfig.for_source(
            split.source, enabled=config.augment, **({} if hflip is None else {"hflip": hflip})
        )
        workers = config.workers if config.workers is not None else default_workers(ctx.world_size)
        local_batch = config.batch_size // ctx.world_size
        pin = hw.device.type == "cuda"
        train_ds, self.batch_input, collate = self._train_data(split.train, prep, augment, workers)
        val_cache = open_cache(
            split.val, BaseSpec.for_training(prep, augment, train=False), config.cache, world_size=ctx.world_size
        )
        val_ds = TorchImageDataset(split.val, prep, train=False, cache=val_cache)
        train_loader = make_loader(
            train_ds,
            batch_size=local_batch,
            train=True,
            seed=config.seed,
            ctx=ctx,
            workers=workers,
            pin_memory=pin,
            collate_fn=collate,
        )
        val_loader = make_loader(
            val_ds, batch_size=local_batch, train=False, seed=config.seed, ctx=ctx, workers=workers, pin_memory=pin
        )
        # The splits are shuffled, so their first images are a fixed random subset (the same
        # at every epoch and after --resume). They are decoded in this process: a few batches.
        bn_samples = split.train[: _even_share(len(split.train), BN_BATCHES, config.batch_size, ctx.world_size)]
        bn_ds = TorchImageDataset(
            bn_samples,
            prep,
            train=False,
            cache=open_cache(
                bn_samples, BaseSpec.for_training(prep, augment, train=False), config.cache, world_size=ctx.world_size
            ),
        )
        bn_loader = make_loader(
            bn_ds, batch_size=local_batch, train=False, seed=config.seed, ctx=ctx, workers=0, pin_memory=pin
        )
        gap_samples = split.val[: _even_share(len(split.val), GAP_BATCHES, config.batch_size, ctx.world_size)]
        gap_ds = TorchImageDataset(gap_samples, prep, train=False, cache=val_cache)
        gap_loader = make_loader(
            gap_ds, batch_size=local_batch, train=False, seed=config.seed, ctx=ctx, workers=0, pin_memory=pin
        )

        optimizer = torch.optim.AdamW(
            param_groups(
                model, lr=config.lr, backbone_lr_mult=config.backbone_lr_mult, weight_decay=config.weight_decay
            )
        )
        steps_per_epoch = len(train_loader)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            warmup_cosine(config.epochs * steps_per_epoch, int(round(config.warmup_epochs * steps_per_epoch))),
        )
        return _Fit(
            model=model,
            classes=tuple(split.classes),
            train_ds=train_ds,
            train_loader=train_loader,
            val_loader=val_loader,
            bn_loader=bn_loader,
            gap_loader=gap_loader,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=torch.amp.GradScaler("cuda", enabled=hw.use_scaler),
            criterion=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
        )

    def _train_epochs(self, fit: _Fit, run: Run | None, progress: TrainingProgress, history: list[EpochRecord]) -> bool:
        """Train from ``progress.epoch`` to the last epoch; whether validation stopped it early."""
        curves = None if run is None else TensorBoardLog.open(self.out, say=self.say)
        try:
            return self._epochs(fit, run, progress, history, curves)
        finally:
            if curves is not None:
                curves.close()

    def _epochs(
        self,
        fit: _Fit,
        run: Run | None,
        progress: TrainingProgress,
        history: list[EpochRecord],
        curves: TensorBoardLog | None,
    ) -> bool:
        config = self.config
        step: TrainStep | None = None
        phase: Phase | None = None
        for epoch in range(progress.epoch, config.epochs):
            new_phase = Phase.HEAD if epoch < config.freeze_epochs else Phase.FULL
            set_phase(fit.model, new_phase, freeze_bn=config.freeze_bn)
            if new_phase is not phase:
                # DDP registers gradient hooks for the parameters that require grad when it is
                # built, so unfreezing the backbone means building a new wrapper.
                step = None  # drop the old wrapper (and its hooks) first
                step = self._train_step(fit)
                phase = new_phase
            record, val = self._run_epoch(fit, step, phase, epoch)
            history.append(record)
            improved = progress.finish_epoch(epoch + 1, val.top1, val.summary())
            stop = progress.should_stop(config.patience)
            self._say_epoch(record, improved=improved)
            if run is not None:
                self._record_epoch(run, fit, progress, history, improved=improved)
            if curves is not None:  # after the checkpoint: a resumed run starts after the last one written
                curves.epoch(record)
            dist_util.barrier(self.ctx)
            for callback in self.callbacks:
                callback(record)
            if stop:
                self.say(f"early stop: validation top-1 has not improved for {config.patience} epochs")
                return True
        return False

    def _train_step(self, fit: _Fit) -> TrainStep:
        return TrainStep(
            model=self._wrap(fit.model),
            optimizer=fit.optimizer,
            scheduler=fit.scheduler,
            scaler=fit.scaler,
            criterion=fit.criterion,
            hardware=self.hw,
        )

    def _run_epoch(self, fit: _Fit, step: TrainStep, phase: Phase, epoch: int) -> tuple[EpochRecord, Any]:
        """One epoch of training and its validation: the epoch's record and the validation result."""
        ctx, hw = self.ctx, self.hw
        step.reset()
        fit.train_ds.set_epoch(epoch)
        fit.train_loader.sampler.set_epoch(epoch)
        started = time.perf_counter()
        self._train_epoch(step, fit.train_loader, epoch, phase)
        train_seconds = time.perf_counter() - started
        train_loss, train_top1 = step.totals(ctx)
        on_device = {"device": hw.device, "ctx": ctx, "amp_dtype": hw.amp_dtype, "channels_last": hw.channels_last}
        # In a head-only epoch the backbone's BatchNorm stayed in eval mode, and with --freeze-bn
        # all of it: the statistics the model trained with are the running ones already.
        stale = None
        bn_seconds = 0.0
        reestimated = phase is Phase.FULL and not self.config.freeze_bn and len(fit.bn_loader.dataset) > 0
        if reestimated:
            stale = statistics_gap(fit.model, fit.gap_loader, **on_device)
            bn_started = time.perf_counter()
            reestimated = reestimate(fit.model, (images for images, _ in fit.bn_loader), **on_device)
            bn_seconds = time.perf_counter() - bn_started
        gap = statistics_gap(fit.model, fit.gap_loader, **on_device)
        if gap is not None and gap.gap > GAP_WARN:
            cause = gap_cause(
                freeze_bn=self.config.freeze_bn, head_phase=phase is Phase.HEAD, images=len(fit.bn_loader.dataset)
            )
            self.say(
                f"warning: epoch {epoch + 1}: on {gap.count} validation images, top-1 with BatchNorm's running "
                f"statistics ({gap.running_top1:.4f}) is {100 * gap.gap:.1f} pt below the same with batch "
                f"statistics ({gap.batch_top1:.4f}): {cause}"
            )
        val = evaluate_model(
            fit.model,
            fit.val_loader,
            num_classes=len(fit.classes),
            device=hw.device,
            ctx=ctx,
            amp_dtype=hw.amp_dtype,
            channels_last=hw.channels_last,
        )
        lrs = {g["part"]: g["lr"] for g in fit.optimizer.param_groups}
        record = EpochRecord(
            epoch=epoch + 1,
            phase=phase.value,
            train_loss=train_loss,
            train_top1=train_top1,
            val_loss=val.loss,
            val_top1=val.top1,
            val_top5=val.top5,
            lr_head=lrs.get("head", 0.0),
            lr_backbone=lrs.get("backbone", 0.0),
            images_per_s=step.count * ctx.world_size / max(train_seconds, 1e-9),
            seconds=time.perf_counter() - started,
            bn_reestimated=reestimated,
            bn_seconds=bn_seconds,
            bn_batch_top1=None if gap is None else gap.batch_top1,
            bn_running_top1=None if gap is None else gap.running_top1,
            bn_stale_top1=None if stale is None else stale.running_top1,
        )
        return record, val

    def _say_epoch(self, record: EpochRecord, *, improved: bool) -> None:
        self.say(
            f"epoch {record.epoch}/{self.config.epochs} [{record.phase}] train loss {record.train_loss:.4f} "
            f"top-1 {record.train_top1:.4f} | val loss {record.val_loss:.4f} top-1 {record.val_top1:.4f}"
            + (f" top-5 {record.val_top5:.4f}" if record.val_top5 is not None else "")
            + (" *" if improved else "")
            + (
                ""
                if record.bn_batch_top1 is None
                else f" | BN batch-stat top-1 {record.bn_batch_top1:.4f} "
                f"(gap {100 * (record.bn_batch_top1 - record.bn_running_top1):+.1f} pt"
                + ("" if record.bn_stale_top1 is None else f"; before re-estimation {record.bn_stale_top1:.4f}")
                + ")"
            )
            + f" | {record.images_per_s:.0f} img/s"
        )

    def _record_epoch(
        self, run: Run, fit: _Fit, progress: TrainingProgress, history: list[EpochRecord], *, improved: bool
    ) -> None:
        """Rank 0: the metrics file and the checkpoints (best when it improved) after each epoch."""
        atomic_write_text(self.out / METRICS_FILE, "".join(json.dumps(r.to_dict()) + "\n" for r in history))
        payload = self._payload(fit.model, fit.optimizer, fit.scheduler, fit.scaler, progress, list(fit.classes))
        self._save(run, payload, best=improved, record=history[-1])

    def _record_completion(
        self, run: Run, progress: TrainingProgress, *, epochs_run: int, stopped_early: bool, steps_per_epoch: int
    ) -> None:
        config, ctx, hw = self.config, self.ctx, self.hw
        run.update(
            training={
                "config": config.to_dict(),
                "status": "complete",
                "epochs_run": epochs_run,
                "best_epoch": progress.best_epoch,
                "stopped_early": stopped_early,
                "device": str(hw.device.type),
                "precision": hw.precision,
                "channels_last": hw.channels_last,
                "world_size": ctx.world_size,
                "backend": ctx.backend,
                "steps_per_epoch": steps_per_epoch,
                "metrics_file": METRICS_FILE,
            },
            metrics={k: progress.best_summary.get(k) for k in ("val_top1", "val_top5", "val_loss")},
        )
        self.say(
            f"best validation top-1 {progress.best_top1:.4f} at epoch {progress.best_epoch}; run directory: {self.out}"
        )

    def _train_data(self, samples: Sequence[Any], prep: Any, augment: Any, workers: int) -> tuple[Any, Any, Any]:
        """The training dataset, the per-batch step that finishes its batches on the device,
        and the collate function: CPU decoding (through the cache) or GPU decoding."""
        from edge_tl.data.cache import open_cache
        from edge_tl.data.gpu import EncodedDataset, GpuAugmenter, collate_encoded, first_non_jpeg
        from edge_tl.data.torch_dataset import BatchNormalizer, NormalizingCollate, TorchImageDataset
        from edge_tl.train.config import GpuData

        config, hw = self.config, self.hw
        cpu_ds = TorchImageDataset(samples, prep, train=True, augment=augment, seed=config.seed, dtype="uint8")
        if config.gpu_data is GpuData.ON and hw.device.type != "cuda":
            raise ConfigError(
                "--gpu-data on decodes on a CUDA GPU, and this run trains on the CPU; use --gpu-data off or auto"
            )
        if config.gpu_data is GpuData.ON and not augment.enabled:
            raise ConfigError(
                "--gpu-data on augments on the GPU, and --no-augment turns augmentation off; use --gpu-data off or auto"
            )
        on_gpu = False
        if hw.device.type == "cuda" and config.gpu_data is not GpuData.OFF and augment.enabled:
            other = first_non_jpeg(samples)
            if config.gpu_data is GpuData.ON:
                if other is not None:
                    raise ConfigError(
                        f"--gpu-data on decodes JPEG files only, and {other!r} is not one; use --gpu-data off or auto"
                    )
                on_gpu = True
            elif other is None:
                rate = cpu_loader_rate(cpu_ds, workers)
                on_gpu = rate < GPU_DATA_MIN_RATE
                self.say(
                    f"CPU loader: about {rate:.0f} img/s with {workers} workers; "
                    f"decoding on the {'GPU' if on_gpu else 'CPU'}"
                )
        if on_gpu:
            dataset = EncodedDataset(samples, augment=augment, seed=config.seed)
            return dataset, GpuAugmenter(prep, hw.device, channels_last=hw.channels_last), collate_encoded
        cache = open_cache(samples, cpu_ds.spec, config.cache, world_size=self.ctx.world_size)
        dataset = TorchImageDataset(
            samples, prep, train=True, augment=augment, seed=config.seed, cache=cache, dtype="uint8"
        )
        collate = NormalizingCollate(prep) if hw.device.type == "cpu" and workers > 0 else None
        return dataset, BatchNormalizer(prep, hw.device, channels_last=hw.channels_last), collate

    def _wrap(self, module: Any) -> Any:
        if not self.ctx.distributed:
            return module
        parallel = lazy_import("torch.nn.parallel")
        device_ids = [self.ctx.local_rank] if self.hw.device.type == "cuda" else None
        return parallel.DistributedDataParallel(module, device_ids=device_ids)

    def _train_epoch(self, step: TrainStep, loader: Any, epoch: int, phase: Phase) -> None:
        tqdm = lazy_import("tqdm")
        world = self.ctx.world_size
        with tqdm.tqdm(
            total=len(loader.sampler) * world,
            unit="img",
            unit_scale=True,
            dynamic_ncols=True,
            leave=False,
            desc=f"epoch {epoch + 1}/{self.config.epochs} [{phase.value}]",
            disable=not self.show,
            file=sys.stderr,
        ) as bar:
            for images, labels in loader:
                step(self.batch_input(images), labels)
                bar.update(labels.shape[0] * world)

    def _restore(
        self, model: Any, optimizer: Any, scheduler: Any, scaler: Any
    ) -> tuple[TrainingProgress, list[EpochRecord]]:
        """Load ``last.pt`` into the training objects; the progress and the metrics lines up to its epoch."""
        from edge_tl.models.checkpoint import load_checkpoint

        state = load_checkpoint(self.out / LAST_PATH)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        progress = TrainingProgress.from_checkpoint(state)
        # Lines past last.pt's epoch come from the epoch that was interrupted: it runs again.
        history = [r for r in _read_history(self.out / METRICS_FILE) if r.epoch <= progress.epoch]
        restore_rng(state["rng"])
        self.say(f"resuming {self.out} after epoch {progress.epoch}")
        return progress, history

    def _payload(
        self,
        module: Any,
        optimizer: Any,
        scheduler: Any,
        scaler: Any,
        progress: TrainingProgress,
        classes: Sequence[str],
    ) -> dict[str, Any]:
        """What ``last.pt`` holds: everything ``_restore`` needs to continue exactly."""
        return {
            "model": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            **progress.to_checkpoint(),
            "rng": capture_rng(),
            "backbone": self.config.backbone,
            "classes": list(classes),
        }

    def _save(self, run: Run, payload: dict[str, Any], *, best: bool, record: EpochRecord) -> None:
        from edge_tl.models.checkpoint import BEST, LAST, save_checkpoint

        details = {"epoch": record.epoch, "backbone": self.config.backbone}
        metrics = {"val_top1": record.val_top1, "val_top5": record.val_top5, "val_loss": record.val_loss}
        # best.pt before last.pt: --resume trusts last.pt's best epoch, so a kill between the
        # two writes must leave a best.pt at least as new as last.pt says (the epoch is then
        # run again from the older last.pt, and writes the same best.pt).
        if best:
            # The best checkpoint holds the weights only: it is what later stages load.
            save_checkpoint(
                self.out / BEST_PATH,
                {
                    "model": payload["model"],
                    "epoch": record.epoch,
                    "backbone": payload["backbone"],
                    "classes": payload["classes"],
                },
            )
            # Paths relative to the run: self.out may be relative to the working directory.
            run.add_artifact(
                BEST, kind="checkpoint", path=BEST_PATH, stage=STAGE, precision="fp32", details=details, metrics=metrics
            )
        save_checkpoint(self.out / LAST_PATH, payload)
        run.add_artifact(
            LAST, kind="checkpoint", path=LAST_PATH, stage=STAGE, precision="fp32", details=details, metrics=metrics
        )


def _even_share(available: int, batches: int, batch_size: int, world_size: int) -> int:
    """How many images to take for ``batches`` global batches so that every process gets the
    same number of batches: whole global batches, or with fewer images than one, a multiple of
    the processes. SyncBatchNorm in training mode all-reduces at every forward, so a process
    with one batch more would wait for the others forever."""
    wanted = min(available, batches * batch_size)
    whole = wanted // batch_size * batch_size
    return whole if whole else wanted // world_size * world_size


def _read_history(path: Path) -> list[EpochRecord]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            records.append(EpochRecord(**json.loads(line)))
    return records


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
