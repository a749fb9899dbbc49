"""Real image files, good and broken, written on the fly for the data tests."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, *, seed: int = 0, size: tuple[int, int] = (16, 12), mode: str = "RGB") -> Path:
    """A small noisy image (distinct per seed) saved in the format its suffix names."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    full = path.with_name(path.stem + ".full.tmp")
    write_image(full.with_suffix(".jpg"), size=(64, 48))
    data = full.with_suffix(".jpg").read_bytes()
    full.with_suffix(".jpg").unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Callable[..., Path]:
    """Build an ImageFolder tree: ``{class: n_images}``, alternating PNG and JPEG files."""

    def build(counts: dict[str, int], *, name: str = "data", seed: int = 0) -> Path:
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        for c, n in counts.items():
            (root / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                suffix = ".png" if i % 2 else ".jpg"
                write_image(root / c / f"img{i:03d}{suffix}", seed=seed * 100_000 + sum(map(ord, c)) * 100 + i)
        return root

    return build


@pytest.fixture
def make_image() -> Callable[..., Path]:
    """The :func:`write_image` helper, as a fixture (test modules here are not a package)."""
    return write_image


@pytest.fixture
def make_truncated_jpeg() -> Callable[[Path], Path]:
    return write_truncated_jpeg
