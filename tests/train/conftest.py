"""Small real image folders for the training tests (scikit-learn digits written as PNG files)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest


def write_digit_folder(root: Path, *, per_class: int, classes: int = 10) -> Path:
    """``root/<digit>/<i>.png``: the first ``per_class`` sklearn digits of each class, 8x8 grey."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    for label in range(classes):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(np.flatnonzero(bunch.target == label)[:per_class]):
            Image.fromarray(images[index], mode="L").save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Build (once per shape) a digits ImageFolder with ``per_class`` images in each class."""
    made: dict[tuple[int, int], Path] = {}

    def build(per_class: int = 10, classes: int = 10) -> Path:
        key = (per_class, classes)
        if key not in made:
            made[key] = write_digit_folder(
                tmp_path_factory.mktemp(f"digits-{per_class}x{classes}"), per_class=per_class, classes=classes
            )
        return made[key]

    return build
