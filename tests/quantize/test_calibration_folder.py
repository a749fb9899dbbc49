"""A calibration folder (`--calib-data`, or `ship --data` for an imported model) holding a truncated file or
a decompression bomb: the file is left out, as fine-tuning leaves it out, instead of stopping quantize."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from edge_tl.errors import DataError
from edge_tl.models import Preprocessing
from edge_tl.quantize.calibrate import calibration_samples, image_batches
from edge_tl.runs import Run


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


#: A 30000 x 30000 greyscale PNG header over a few bytes of data: Pillow refuses it as a decompression bomb.
BOMB = (
    b"\x89PNG\r\n\x1a\n"
    + _chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
    + _chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    + _chunk(b"IEND", b"")
)


def _folder(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((16, 16), i * 20, np.uint8)).save(root / c / f"{i}.png")
    good = (root / "a" / "0.png").read_bytes()
    (root / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "b" / "bomb.png").write_bytes(BOMB)
    return root


def test_undecodable_files_of_a_calibration_folder_are_left_out(tmp_path):
    images = _folder(tmp_path / "images")
    run = Run.create(tmp_path / "run", classes=["a", "b"])
    samples = calibration_samples(run, calib_data=images, num_samples=14)
    names = sorted(Path(s.path).name for s in samples)
    assert names == sorted([f"{i}.png" for i in range(6)] * 2)  # all 12 good files; neither bad one
    assert sorted({s.label for s in samples}) == [0, 1]
    prep = Preprocessing(16, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
    assert sum(len(batch) for batch in image_batches(samples, prep, 4)()) == 12
    # A folder of nothing but undecodable files is one line.
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "bomb.png").write_bytes(BOMB)
    with pytest.raises(DataError, match="holds no image that decodes"):
        calibration_samples(run, calib_data=only_bad, num_samples=4)
