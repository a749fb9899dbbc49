"""Training images decoded and augmented on the GPU, for loaders the CPU cannot keep fed.

Loader workers only read each JPEG's bytes and draw its augmentation (the same draws, in
the same order, as the CPU path: :func:`edge_tl.data.augment.draw_augment` on the upright
image's size, seeded by ``(seed, epoch, index)``). The training process then, per batch:

* decodes every file with ``torchvision.io.decode_jpeg(..., device="cuda")`` (nvJPEG,
  EXIF orientation applied);
* crops and resizes each image with ``torchvision.ops.roi_align`` (bilinear, sub-pixel
  boxes, ``sampling_ratio=-1`` averages ``ceil(box / output)`` samples per output pixel,
  so a large reduction is antialiased as Pillow's resize is);
* flips, applies the colour jitter as one affine map per image, clamps to 0..255 and
  normalises, all as batched tensor operations.

The draws match the CPU path's; the pixels match only up to resampling (roi_align is not
Pillow's filter), so a run keeps one path from start to end where it can.
Sources: torchvision ``io/image.py`` (``decode_jpeg`` accepts a list and ``device``) and
``ops/roi_align.py`` (box format ``(batch index, x1, y1, x2, y2)``, ``aligned=True`` for
pixel-centre alignment), https://github.com/pytorch/vision.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

from edge_tl._lazy import lazy_import
from edge_tl.data.augment import LUMA, AugmentConfig, draw_augment, sample_rng
from edge_tl.data.dataset import Sample
from edge_tl.errors import DataError

if TYPE_CHECKING:
    from edge_tl.models.preprocessing import Preprocessing

_JPEG_MAGIC = b"\xff\xd8\xff"


def first_non_jpeg(samples: Sequence[Sample]) -> str | None:
    """The first sample that ``decode_jpeg`` cannot take (a built-in image or another format)."""
    for sample in samples:
        if sample.path is None:
            return f"built-in {sample.builtin} image {sample.index}"
        try:
            with open(sample.path, "rb") as fh:
                if fh.read(3) != _JPEG_MAGIC:
                    return sample.path
        except OSError as exc:
            raise DataError(f"cannot read {sample.path!r}: {exc.strerror or exc}") from exc
    return None


def _upright_size(path: str) -> tuple[int, int]:
    Image = lazy_import("PIL.Image", purpose="reading image headers")
    try:
        with Image.open(path) as im:
            width, height = im.size
            try:
                orientation = int(im.getexif().get(0x0112, 1))
            except Exception:  # noqa: BLE001 - as open_image: an unreadable EXIF block means upright
                orientation = 1
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read {path!r}: {exc}") from exc
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


class EncodedDataset:
    """``dataset[(epoch, i)] -> ((jpeg bytes uint8 tensor, draws float64 (8,)), label)``.

    The draws are ``(x0, y0, x1, y1)`` as fractions of the upright image, the flip (0/1)
    and the brightness, contrast and saturation factors.
    """

    def __init__(self, samples: Sequence[Sample], *, augment: AugmentConfig, seed: int) -> None:
        self.samples = tuple(samples)
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[tuple[Any, Any], int]:
        torch = lazy_import("torch", purpose="training")
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        sample = self.samples[index]
        path = os.fspath(sample.path)
        width, height = _upright_size(path)
        draw = draw_augment(width, height, self.augment, sample_rng(self.seed, epoch, index))
        with open(path, "rb") as fh:
            data = torch.frombuffer(bytearray(fh.read()), dtype=torch.uint8)
        draws = torch.tensor(
            [*draw.box, float(draw.flip), draw.brightness, draw.contrast, draw.saturation], dtype=torch.float64
        )
        return (data, draws), sample.label


def collate_encoded(items: list[tuple[tuple[Any, Any], int]]) -> tuple[tuple[list[Any], Any], Any]:
    """A batch of files stays a list (sizes differ); draws and labels are stacked."""
    torch = lazy_import("torch", purpose="training")
    files = [data for (data, _), _ in items]
    draws = torch.stack([d for (_, d), _ in items])
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return (files, draws), labels


class GpuAugmenter:
    """Encoded batches to normalised float32 images on ``device`` (see the module docstring).

    Runs on any device torchvision's decoder supports; on the CPU it is what the tests check.
    """

    def __init__(self, prep: "Preprocessing", device: Any, *, channels_last: bool) -> None:
        torch = lazy_import("torch", purpose="training")
        self.size = prep.input_size
        self.device = device
        self.channels_last = channels_last
        self.mean = torch.tensor(prep.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
        self.inv_std = (1.0 / (torch.tensor(prep.std, dtype=torch.float32) * 255.0)).to(device).view(1, 3, 1, 1)
        self.luma = torch.tensor(LUMA, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._torch = torch

    def decode(self, files: list[Any]) -> list[Any]:
        io = lazy_import("torchvision.io", purpose="decoding JPEGs on the GPU")
        return io.decode_jpeg(files, mode=io.ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)

    def __call__(self, batch: tuple[list[Any], Any]) -> Any:
        torch = self._torch
        ops = lazy_import("torchvision.ops", purpose="augmenting on the GPU")
        files, draws = batch
        draws = draws.to(self.device, non_blocking=True)
        images = self.decode(files)
        crops = []
        for i, image in enumerate(images):
            height, width = image.shape[-2:]
            scale = torch.tensor([width, height, width, height], dtype=torch.float64, device=self.device)
            box = torch.cat([torch.zeros(1, dtype=torch.float64, device=self.device), draws[i, :4] * scale])
            # roi_align's pixel centres sit at +0.5 with aligned=True, as Pillow's box coordinates do.
            crops.append(
                ops.roi_align(
                    image[None].float(), box[None].float(), output_size=self.size, sampling_ratio=-1, aligned=True
                )
            )
        x = torch.cat(crops)
        flip = draws[:, 4].bool().view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
        b, c, s = (draws[:, k].float().view(-1, 1, 1, 1) for k in (5, 6, 7))
        grey = (x * self.luma).sum(dim=1, keepdim=True)
        mean_grey = grey.mean(dim=(2, 3), keepdim=True)
        x = c * b * (s * x + (1.0 - s) * grey) + (1.0 - c) * b * mean_grey
        x = (x.clamp_(0.0, 255.0) - self.mean) * self.inv_std
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)
