"""THE evaluation preprocessing: one function, numpy + PIL only.

Training evaluation, export parity, calibration, verification and the evaluation pack run
on a device all call :func:`preprocess`, so a model is always measured on exactly the
input it was trained to see. It needs no torch, so it also runs on a device without it.

Geometry follows torchvision's ``Resize(int)`` + ``CenterCrop`` on PIL images (the
transforms timm and torchvision weights were evaluated with): the longer side is
truncated after scaling, and the crop offset is rounded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_tl._lazy import lazy_import
from edge_tl.data.images import to_rgb

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image as PILImage

    from edge_tl.models.preprocessing import Preprocessing


def resample_filter(interpolation: str) -> int:
    """The Pillow resampling filter for a :class:`Preprocessing` interpolation name."""
    Image = lazy_import("PIL.Image", purpose="image preprocessing")
    return {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
    }[interpolation]


def resize_shorter(image: "PILImage.Image", size: int, interpolation: str) -> "PILImage.Image":
    """Resize so that the shorter side is ``size`` (aspect ratio kept, longer side truncated)."""
    width, height = image.size
    if width <= height:
        new = (size, max(1, int(size * height / width)))
    else:
        new = (max(1, int(size * width / height)), size)
    if new == image.size:
        return image
    return image.resize(new, resample_filter(interpolation))


def center_crop(image: "PILImage.Image", size: int) -> "PILImage.Image":
    width, height = image.size
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def normalize(image: "PILImage.Image", prep: "Preprocessing") -> "np.ndarray":
    """An RGB image (PIL, or a uint8 HxWx3 array) as float32 CHW, scaled to [0, 1] then normalised with the
    contract's mean/std."""
    np = lazy_import("numpy")
    array = np.asarray(image, dtype=np.float32) * np.float32(1.0 / 255.0)
    mean = np.asarray(prep.mean, dtype=np.float32)
    inv_std = np.float32(1.0) / np.asarray(prep.std, dtype=np.float32)
    array = (array - mean) * inv_std
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def preprocess(image: "PILImage.Image", prep: "Preprocessing") -> "np.ndarray":
    """Turn one image into the model input (float32, shape ``(3, input_size, input_size)``).

    RGB conversion (:func:`~edge_tl.data.images.to_rgb`), resize of the shorter side to
    ``prep.resize_size`` with ``prep.interpolation``, centre crop to ``prep.input_size``,
    scaling to [0, 1], normalisation with ``prep.mean`` / ``prep.std``.
    """
    image = to_rgb(image)
    image = resize_shorter(image, prep.resize_size, prep.interpolation)
    image = center_crop(image, prep.input_size)
    return normalize(image, prep)
