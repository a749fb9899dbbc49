"""The training-side view of samples for ``torch.utils.data.DataLoader``.

A map-style dataset (``__len__`` + ``__getitem__``). It does not subclass
``torch.utils.data.Dataset`` (DataLoader needs only the protocol), so importing this module
does not import torch; torch is imported on first use, to turn arrays into tensors.

Evaluation mode (``train=False``, or augmentation disabled) is exactly
:func:`edge_tl.data.preprocess`; training mode applies :mod:`edge_tl.data.augment`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from edge_tl._lazy import lazy_import
from edge_tl.data.augment import AugmentConfig, augmented_array, sample_rng
from edge_tl.data.dataset import Sample, load_image
from edge_tl.data.preprocess import preprocess

if TYPE_CHECKING:
    from edge_tl.models.preprocessing import Preprocessing


class TorchImageDataset:
    """``dataset[i] -> (image tensor (3, H, W) float32, label int)``.

    Augmentation is random but reproducible: sample ``i`` in epoch ``e`` is augmented with
    a generator seeded by ``(seed, e, i)``. Call :meth:`set_epoch` before each epoch's
    loader iterator is created (with ``persistent_workers=False``, the default, workers
    receive the dataset as it is at that moment).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        prep: "Preprocessing",
        *,
        train: bool,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.samples = tuple(samples)
        self.prep = prep
        self.train = bool(train)
        self.augment = augment if augment is not None else AugmentConfig()
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        torch = lazy_import("torch", purpose="training")
        sample = self.samples[index]
        image = load_image(sample)
        if self.train and self.augment.enabled:
            array = augmented_array(image, self.prep, self.augment, sample_rng(self.seed, self.epoch, index))
        else:
            array = preprocess(image, self.prep)
        return torch.from_numpy(array), sample.label
