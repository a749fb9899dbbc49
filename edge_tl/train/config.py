"""The fine-tune configuration: one frozen dataclass, recorded in the run's manifest.

``FinetuneConfig.to_dict`` is what the manifest's ``training.config`` holds and what
``--resume`` compares against, so every field is plain JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any

from edge_tl.data.cache import CacheMode
from edge_tl.errors import ConfigError
from edge_tl.vocab import TRAIN_PRECISIONS, Device, Precision, accept


class GpuData(str, Enum):
    """Where training images are decoded and augmented with ``--device cuda``. ``auto``: on
    the GPU when every training file is a JPEG and the CPU loader (timed on a few images)
    cannot feed :data:`edge_tl.train.loop.GPU_DATA_MIN_RATE` images/s."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


#: Settings that may change between an interrupted run and its ``--resume`` without
#: changing what is computed (or, for ``epochs`` and ``patience``, only extending it).
#: ``cache`` never changes a pixel; ``gpu_data``, like ``device``, changes only rounding.
RESUMABLE_CHANGES = frozenset({"resume", "quiet", "workers", "epochs", "patience", "device", "cache", "gpu_data"})


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that defines a fine-tune run.

    ``batch_size`` is the *global* batch: under DDP each of ``N`` processes takes
    ``batch_size / N`` images per step, so the optimisation does not depend on ``N``.
    ``lr`` is the head's peak learning rate; the backbone's is ``lr * backbone_lr_mult``.
    The backbone is frozen (weights and BatchNorm statistics) for the first
    ``freeze_epochs`` epochs, during which only the new head learns.
    """

    data: str
    out: str
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"  # "imagenet", "none" or a file path
    val_data: str | None = None
    val_split: float = 0.2
    img_size: int | None = None  # None: the backbone's own input size
    epochs: int = 10
    freeze_epochs: int = 0  # head-only warm-up epochs; opt-in (see docs/training.md)
    batch_size: int = 64
    lr: float = 0.01
    backbone_lr_mult: float = 0.3
    weight_decay: float = 0.01
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    augment: bool = True
    hflip: bool | None = None  # None: the dataset's default (off for digits)
    freeze_bn: bool = False
    sync_bn: bool = False
    patience: int = 0  # 0: no early stopping
    seed: int = 0
    device: Device = Device.AUTO
    precision: Precision = Precision.AUTO
    workers: int | None = None  # None: the cores per process, minus one for the training process
    cache: CacheMode = CacheMode.AUTO  # decoded-image cache (edge_tl.data.cache)
    gpu_data: GpuData = GpuData.AUTO
    resume: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", _enum(Device, self.device, "--device"))
        object.__setattr__(self, "precision", _enum(Precision, self.precision, "--precision", TRAIN_PRECISIONS))
        object.__setattr__(self, "cache", _enum(CacheMode, self.cache, "--cache"))
        object.__setattr__(self, "gpu_data", _enum(GpuData, self.gpu_data, "--gpu-data"))
        object.__setattr__(self, "out", str(self.out))
        object.__setattr__(self, "data", str(self.data))
        _positive_int(self.epochs, "--epochs")
        _positive_int(self.batch_size, "--batch-size")
        if not isinstance(self.freeze_epochs, int) or not 0 <= self.freeze_epochs <= self.epochs:
            raise ConfigError(
                f"--freeze-epochs must be between 0 and --epochs ({self.epochs}), got {self.freeze_epochs!r}"
            )
        if self.img_size is not None and (not isinstance(self.img_size, int) or self.img_size < 16):
            raise ConfigError(f"--img-size must be an integer >= 16, got {self.img_size!r}")
        for name, value in (("--lr", self.lr), ("--backbone-lr-mult", self.backbone_lr_mult)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if not 0 <= self.weight_decay < 1:
            raise ConfigError(f"--weight-decay must be in [0, 1), got {self.weight_decay!r}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"--warmup-epochs must be between 0 and --epochs, got {self.warmup_epochs!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise ConfigError(
                f"--patience must be a non-negative integer (0 disables early stopping), got {self.patience!r}"
            )
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 0):
            raise ConfigError(f"--workers must be a non-negative integer, got {self.workers!r}")
        if self.val_data is None and not 0 < self.val_split < 1:
            raise ConfigError(f"--val-split must be between 0 and 1 (exclusive), got {self.val_split!r}")
        if self.sync_bn and self.freeze_bn:
            raise ConfigError(
                "--sync-bn and --freeze-bn exclude each other: frozen BatchNorm has nothing to synchronise"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["device"] = self.device.value
        data["precision"] = self.precision.value
        data["cache"] = self.cache.value
        data["gpu_data"] = self.gpu_data.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FinetuneConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown fine-tune settings {unknown}; known: {sorted(known)}")
        return cls(**data)

    def differences(self, other: "FinetuneConfig") -> dict[str, tuple[Any, Any]]:
        """Settings (outside :data:`RESUMABLE_CHANGES`) whose values differ: name -> (self, other)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine if k not in RESUMABLE_CHANGES and mine[k] != theirs[k]}


def _enum(cls: type[Enum], value: Any, option: str, allowed: tuple[Enum, ...] | None = None) -> Any:
    return accept(cls, value, allowed, message=lambda v, choices: f"{option} must be one of {choices}, got {v!r}")


def _positive_int(value: Any, option: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{option} must be a positive integer, got {value!r}")
