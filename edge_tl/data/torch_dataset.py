"""The training-side view of samples for ``torch.utils.data.DataLoader``.

A map-style dataset (``__len__`` + ``__getitem__``). It does not subclass
``torch.utils.data.Dataset`` (DataLoader needs only the protocol), so importing this module
does not import torch; torch is imported on first use, to turn arrays into tensors.

Evaluation mode (``train=False``, or augmentation disabled) is exactly
:func:`edge_tl.data.preprocess`; training mode applies :mod:`edge_tl.data.augment` to the
sample's base image (:func:`edge_tl.data.cache.base_image`, read from a
:class:`~edge_tl.data.cache.DecodeCache` when one is given).

With ``dtype="uint8"`` the dataset stops before normalisation, and :class:`BatchNormalizer`
scales and normalises whole batches with the same float32 arithmetic as
:func:`~edge_tl.data.preprocess.normalize` (so the bits are the same): on a CUDA device,
after the copy (a quarter of the bytes cross the bus, and the GPU does the arithmetic);
training on the CPU, in the loader workers (:class:`NormalizingCollate`), which run beside
the training process instead of in its way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from edge_tl._lazy import lazy_import
from edge_tl.data.augment import AugmentConfig, augment_image, sample_rng
from edge_tl.data.cache import BaseSpec, DecodeCache, base_image
from edge_tl.data.dataset import Sample
from edge_tl.data.preprocess import normalize
from edge_tl.errors import ConfigError

if TYPE_CHECKING:
    from edge_tl.models.preprocessing import Preprocessing


class TorchImageDataset:
    """``dataset[i] -> (image tensor (3, H, W), label int)``: float32 normalised, or uint8.

    Augmentation is random but reproducible: sample ``i`` in epoch ``e`` is augmented with
    a generator seeded by ``(seed, e, i)``. The key is ``i`` (the epoch set by
    :meth:`set_epoch`) or ``(e, i)``: a sampler that yields pairs carries the epoch to
    persistent loader workers, which keep the dataset object they started with.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        prep: "Preprocessing",
        *,
        train: bool,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        cache: DecodeCache | None = None,
        dtype: str = "float32",
    ) -> None:
        if dtype not in ("float32", "uint8"):
            raise ConfigError(f"dataset dtype must be 'float32' or 'uint8', got {dtype!r}")
        self.samples = tuple(samples)
        self.prep = prep
        self.train = bool(train)
        self.augment = augment if augment is not None else AugmentConfig()
        self.seed = int(seed)
        self.epoch = 0
        self.spec = BaseSpec.for_training(prep, self.augment, train=self.train)
        if cache is not None and cache.spec != self.spec:
            raise ConfigError(f"the decode cache holds {cache.spec}, but this dataset needs {self.spec}")
        self.cache = cache
        self.dtype = dtype

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def pixels(self, index: int, epoch: int | None = None) -> Any:
        """Sample ``index`` as the model will see it before normalisation: a new uint8 HxWx3 array."""
        np = lazy_import("numpy")
        epoch = self.epoch if epoch is None else epoch
        sample = self.samples[index]
        base = self.cache.get(index, sample) if self.cache is not None else base_image(sample, self.spec)
        if not self.spec.crop:
            base = augment_image(base, self.prep, self.augment, sample_rng(self.seed, epoch, index))
        return np.array(base)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        torch = lazy_import("torch", purpose="training")
        epoch, index = key if isinstance(key, tuple) else (None, key)
        pixels = self.pixels(index, epoch)
        label = self.samples[index].label
        if self.dtype == "uint8":
            return torch.from_numpy(pixels).permute(2, 0, 1), label
        return torch.from_numpy(normalize(pixels, self.prep)), label


class BatchNormalizer:
    """uint8 batches (N, 3, H, W) to normalised float32 on ``device``, in the memory format
    the step wants: the last preprocessing step, once per batch instead of once per image."""

    def __init__(self, prep: "Preprocessing", device: Any, *, channels_last: bool) -> None:
        torch = lazy_import("torch", purpose="training")
        self.device = device
        self.channels_last = channels_last
        self.mean = torch.tensor(prep.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        # float32(1) / float32(std), as normalize() computes it, so both give the same bits.
        self.inv_std = (1.0 / torch.tensor(prep.std, dtype=torch.float32)).to(device).view(1, 3, 1, 1)
        self._scale = torch.tensor(1.0 / 255.0, dtype=torch.float32).item()
        self._torch = torch

    def __call__(self, images: Any) -> Any:
        torch = self._torch
        images = images.to(self.device, non_blocking=True)
        if images.dtype != torch.uint8:
            return images  # already normalised in the loader workers
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        out = images.contiguous(memory_format=fmt).float()
        # In place: one float buffer for the batch, three passes over it.
        return out.mul_(self._scale).sub_(self.mean).mul_(self.inv_std)


class NormalizingCollate:
    """``default_collate``, then :class:`BatchNormalizer` on the CPU: the batch leaves the
    worker ready for a CPU training step."""

    def __init__(self, prep: "Preprocessing") -> None:
        self.prep = prep
        self._normalize: BatchNormalizer | None = None

    def __call__(self, items: list[Any]) -> Any:
        torch = lazy_import("torch", purpose="training")
        data = lazy_import("torch.utils.data", purpose="training")
        if self._normalize is None:  # built in the worker, after the fork
            self._normalize = BatchNormalizer(self.prep, torch.device("cpu"), channels_last=False)
        images, labels = data.default_collate(items)
        return self._normalize(images), labels
