"""The preprocessing contract a backbone carries beside its weights.

Every later stage (calibration, export parity, verification, the evaluation
pack shipped to a device) preprocesses with exactly this contract, read back
from the run's manifest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from edge_tl.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_MEAN = (0.5, 0.5, 0.5)
TF_STD = (0.5, 0.5, 0.5)

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the model's input tensor (NCHW, float32).

    The image is resized so that its shorter side is ``resize_size`` with
    ``interpolation``, centre-cropped to ``input_size`` x ``input_size``, scaled to
    [0, 1], then normalised with ``mean`` and ``std``.

    ``resize`` fixes the resize size when the model's own tool states it: timm evaluates
    at ``floor(input_size / crop_pct)``, torchvision's presets and weights name it outright.
    Left ``None`` (edge-tl's own fine-tuned runs), it is ``round(input_size / crop_pct)``.
    The manifest records ``resize_size`` and every stage reads that number back.
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    resize: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.input_size, int) or self.input_size < 8:
            raise ConfigError(f"input size must be an integer >= 8, got {self.input_size!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}")
        if not 0.1 <= float(self.crop_pct) <= 1.0:
            raise ConfigError(f"crop_pct must be in [0.1, 1.0], got {self.crop_pct!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ConfigError(f"mean and std need three values with std > 0, got {self.mean!r} / {self.std!r}")
        if self.resize is not None and (not isinstance(self.resize, int) or self.resize < self.input_size):
            raise ConfigError(
                f"resize size {self.resize!r} is smaller than the {self.input_size}px crop; give a resize size "
                f">= {self.input_size}"
            )

    @property
    def resize_size(self) -> int:
        return self.resize if self.resize is not None else int(round(self.input_size / self.crop_pct))

    def with_input_size(self, size: int) -> "Preprocessing":
        """The same contract at another input size (the crop ratio is kept, a fixed resize size dropped)."""
        return replace(self, input_size=int(size), resize=None)

    def with_floor_resize(self) -> "Preprocessing":
        """The contract as timm evaluates it: the resize size ``floor(input_size / crop_pct)``."""
        return replace(self, resize=max(self.input_size, math.floor(self.input_size / self.crop_pct)))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["resize"]
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["resize_size"] = self.resize_size
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        try:
            return cls(
                input_size=int(data["input_size"]),
                mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
                interpolation=str(data.get("interpolation", "bilinear")),
                crop_pct=float(data.get("crop_pct", 0.875)),
                resize=_recorded_resize(data),
            )
        except KeyError as exc:
            raise ConfigError(f"preprocessing record lacks field {exc.args[0]!r}: {data!r}") from exc


def _recorded_resize(data: dict[str, Any]) -> int | None:
    """The recorded resize size, kept only where it is not the rounding a contract without one gets."""
    if data.get("resize_size") is None:
        return None
    recorded = int(data["resize_size"])
    default = int(round(int(data["input_size"]) / float(data.get("crop_pct", 0.875))))
    return None if recorded == default else recorded
