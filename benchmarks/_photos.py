"""A folder of real JPEG photos for the data benchmarks, made from scikit-image's photographs.

Random 4:3 crops of the colour photographs that ship with scikit-image, resized to the
requested size (500x375: web photos; 4000x3000: a 12 MP camera) and saved as JPEG at
quality 90, one class per source photograph. Upscaled crops are smoother than a camera's
output, so a little sensor-like noise is added before encoding: JPEG decoding time depends
on how much detail the file holds, and a noiseless upscale would decode unrealistically fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: scikit-image photographs (colour, natural scenes); one class each.
SOURCES = ("astronaut", "chelsea", "coffee", "rocket")


def make_photo_folder(root: Path, *, size: tuple[int, int], count: int, seed: int = 0) -> Path:
    """``root/<photo>/<i>.jpg``, ``count`` files over the classes; kept if already complete."""
    from skimage import data

    marker = root / f".complete-{size[0]}x{size[1]}-{count}-{seed}"
    if marker.is_file():
        return root
    rng = np.random.default_rng(seed)
    width, height = size
    for k in range(count):
        name = SOURCES[k % len(SOURCES)]
        photo = getattr(data, name)()
        ph, pw = photo.shape[:2]
        crop_w = int(min(pw, ph * 4 / 3) * rng.uniform(0.7, 1.0))
        crop_h = int(crop_w * 3 / 4)
        x0, y0 = int(rng.integers(0, pw - crop_w + 1)), int(rng.integers(0, ph - crop_h + 1))
        image = Image.fromarray(photo[y0 : y0 + crop_h, x0 : x0 + crop_w]).resize(
            (width, height), Image.Resampling.BICUBIC
        )
        pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 3, (height, width, 1)).astype(np.int16)
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{k:04d}.jpg", quality=90)
    marker.write_text("ok\n")
    return root
