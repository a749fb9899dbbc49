"""Training augmentation: cheap PIL operations, deterministic per (seed, epoch, sample).

Random-resized crop with a mild scale range, an optional horizontal flip (off for digits
and text, where a mirrored sample is a different or no class), and a small colour jitter.
The crop and the resize are one PIL call; brightness, contrast and saturation together are
one affine colour transform (one pass over the pixels, rounded once).
Each sample's randomness comes from its own generator seeded with ``(seed, epoch, index)``,
so a resumed run sees the same augmented images as an uninterrupted one, whatever the
number of loader workers.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from edge_tl._lazy import lazy_import
from edge_tl.data.images import to_rgb
from edge_tl.data.preprocess import normalize, resample_filter
from edge_tl.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image as PILImage

    from edge_tl.models.preprocessing import Preprocessing

#: Built-in datasets whose classes change (or vanish) when mirrored.
_NO_FLIP_SOURCES = frozenset({"digits"})


@dataclass(frozen=True)
class AugmentConfig:
    """Switchable training augmentation.

    ``enabled=False`` trains on exactly the evaluation preprocessing. ``scale`` is the
    range of the crop's area as a fraction of the image, ``ratio`` the range of its aspect
    ratio, ``color_jitter`` the largest relative change of brightness, contrast and saturation.
    """

    enabled: bool = True
    hflip: bool = True
    scale: tuple[float, float] = (0.6, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    color_jitter: float = 0.2

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"augmentation scale must satisfy 0 < min <= max <= 1, got {self.scale!r}")
        rlo, rhi = self.ratio
        if not 0.0 < rlo <= rhi:
            raise ConfigError(f"augmentation ratio must satisfy 0 < min <= max, got {self.ratio!r}")
        if not 0.0 <= self.color_jitter < 1.0:
            raise ConfigError(f"color_jitter must be in [0, 1), got {self.color_jitter!r}")

    @classmethod
    def for_source(cls, source: str, **overrides: Any) -> "AugmentConfig":
        """The default augmentation for a dataset: no horizontal flip for built-in digits."""
        if source in _NO_FLIP_SOURCES:
            overrides.setdefault("hflip", False)
        return cls(**overrides)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scale"] = list(self.scale)
        data["ratio"] = list(self.ratio)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AugmentConfig":
        return cls(
            enabled=bool(data.get("enabled", True)),
            hflip=bool(data.get("hflip", True)),
            scale=tuple(float(v) for v in data.get("scale", (0.6, 1.0))),  # type: ignore[arg-type]
            ratio=tuple(float(v) for v in data.get("ratio", (3 / 4, 4 / 3))),  # type: ignore[arg-type]
            color_jitter=float(data.get("color_jitter", 0.2)),
        )


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The generator of one sample's augmentation in one epoch."""
    return random.Random(f"edge-tl:{seed}:{epoch}:{index}")


def _crop_box(width: int, height: int, config: AugmentConfig, rng: random.Random) -> tuple[float, float, float, float]:
    """A random crop in (sub-)pixel coordinates, so even an 8x8 image gets a real scale change."""
    area = width * height
    log_lo, log_hi = math.log(config.ratio[0]), math.log(config.ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*config.scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = math.sqrt(target * aspect)
        h = math.sqrt(target / aspect)
        if w <= width and h <= height:
            x0 = rng.uniform(0.0, width - w)
            y0 = rng.uniform(0.0, height - h)
            return (x0, y0, x0 + w, y0 + h)
    # The sampled aspect ratios do not fit this image: take the whole of it.
    return (0.0, 0.0, float(width), float(height))


#: ITU-R 601-2 luma weights, the grey Pillow's ``convert("L")`` computes.
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class SampleAugment:
    """One sample's draws: a crop box as fractions of the image, a flip, and jitter factors."""

    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) / (width, height)
    flip: bool
    brightness: float
    contrast: float
    saturation: float


def draw_augment(width: int, height: int, config: AugmentConfig, rng: random.Random) -> SampleAugment:
    """The random choices for one ``width`` x ``height`` image, always drawn in the same order."""
    x0, y0, x1, y1 = _crop_box(width, height, config, rng)
    flip = config.hflip and rng.random() < 0.5
    j = config.color_jitter
    b, c, s = (rng.uniform(1.0 - j, 1.0 + j) for _ in range(3)) if j > 0 else (1.0, 1.0, 1.0)
    return SampleAugment((x0 / width, y0 / height, x1 / width, y1 / height), bool(flip), b, c, s)


def jitter_matrix(draw: SampleAugment, mean_grey: float) -> tuple[float, ...]:
    """Brightness, then contrast (towards the mean grey), then saturation (towards each
    pixel's grey), composed into one affine map ``out = M @ rgb + t`` (Pillow's 12-tuple).

    With brightness ``b``, contrast ``c``, saturation ``s`` and luma weights ``w``:
    ``out = c*b*(s*I + (1-s)*1 w^T) @ rgb + (1-c)*b*mean_grey`` (the grey of a grey pixel
    is itself, since the weights sum to one).
    """
    b, c, s = draw.brightness, draw.contrast, draw.saturation
    offset = (1.0 - c) * b * mean_grey
    rows = []
    for r in range(3):
        rows.extend(c * b * ((s if k == r else 0.0) + (1.0 - s) * LUMA[k]) for k in range(3))
        rows.append(offset)
    return tuple(rows)


def augment_image(
    image: "PILImage.Image", prep: "Preprocessing", config: AugmentConfig, rng: random.Random
) -> "PILImage.Image":
    """One augmented ``input_size`` x ``input_size`` RGB view of ``image``."""
    Image = lazy_import("PIL.Image", purpose="training augmentation")
    image = to_rgb(image)
    draw = draw_augment(image.width, image.height, config, rng)
    x0, y0, x1, y1 = draw.box
    box = (x0 * image.width, y0 * image.height, x1 * image.width, y1 * image.height)
    size = prep.input_size
    out = image.resize((size, size), resample_filter(prep.interpolation), box=box)
    if draw.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if config.color_jitter > 0:
        ImageStat = lazy_import("PIL.ImageStat", purpose="training augmentation")
        r, g, b = ImageStat.Stat(out).mean
        out = out.convert("RGB", jitter_matrix(draw, LUMA[0] * r + LUMA[1] * g + LUMA[2] * b))
    return out


def augmented_array(
    image: "PILImage.Image", prep: "Preprocessing", config: AugmentConfig, rng: random.Random
) -> "np.ndarray":
    """``augment_image`` followed by the same scaling and normalisation as evaluation."""
    return normalize(augment_image(image, prep, config, rng), prep)
