"""The one evaluation preprocessing: hand-computed values, torchvision parity, no torch needed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_tl.data import preprocess
from edge_tl.models import Preprocessing, get_backbone


def test_crop_and_normalisation_match_hand_computed_values() -> None:
    # 16 wide x 32 tall; input 8 at crop_pct 0.5 -> shorter side already 16, so no resampling:
    # the crop starts at column round((16-8)/2)=4 and row round((32-8)/2)=12.
    rows, cols = np.mgrid[0:32, 0:16]
    array = np.stack([rows * 7 % 256, cols * 13 % 256, (rows + cols) * 5 % 256], axis=-1).astype(np.uint8)
    prep = Preprocessing(
        input_size=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125), interpolation="bicubic", crop_pct=0.5
    )
    x = preprocess(Image.fromarray(array), prep)
    assert x.shape == (3, 8, 8) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    # Pixel (row 12+2, col 4+5) = (14*7, 9*13, 23*5) = (98, 117, 115).
    expected = [(98 / 255 - 0.1) / 0.5, (117 / 255 - 0.2) / 0.25, (115 / 255 - 0.3) / 0.125]
    np.testing.assert_allclose(x[:, 2, 5], expected, rtol=1e-6)
    manual = (array[12:20, 4:12].astype(np.float64) / 255 - [0.1, 0.2, 0.3]) / [0.5, 0.25, 0.125]
    np.testing.assert_allclose(x, manual.transpose(2, 0, 1), rtol=1e-5, atol=1e-6)


def test_resize_uses_the_shorter_side_and_interpolation() -> None:
    # A 20x10 image to shorter side 16 (crop_pct 0.5 of input 8): 32x16, then an 8x8 centre crop.
    array = np.zeros((10, 20, 3), dtype=np.uint8)
    array[:, 10:] = 255
    prep = Preprocessing(input_size=8, mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest", crop_pct=0.5)
    x = preprocess(Image.fromarray(array), prep)
    # Columns 12..19 of the 32-wide resize: its left half is black up to column 15.
    np.testing.assert_array_equal(x[0, 0], [0, 0, 0, 0, 1, 1, 1, 1])


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0", "mobilenet_v3_small"])
def test_matches_torchvision_transforms(backbone: str) -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    prep = get_backbone(backbone).preprocessing.with_input_size(40)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (53, 71, 3), dtype=np.uint8))
    mode = {"bilinear": transforms.InterpolationMode.BILINEAR, "bicubic": transforms.InterpolationMode.BICUBIC}[
        prep.interpolation
    ]
    reference = transforms.Compose(
        [
            transforms.Resize(prep.resize_size, interpolation=mode),
            transforms.CenterCrop(prep.input_size),
            transforms.ToTensor(),
            transforms.Normalize(prep.mean, prep.std),
        ]
    )(image).numpy()
    np.testing.assert_allclose(preprocess(image, prep), reference, rtol=0, atol=1e-5)


def test_accepts_any_mode() -> None:
    prep = Preprocessing(input_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    for image in (Image.new("L", (9, 9), 255), Image.new("RGBA", (9, 9), (0, 0, 0, 0)), Image.new("CMYK", (9, 9))):
        x = preprocess(image, prep)
        assert x.shape == (3, 8, 8)
    np.testing.assert_allclose(preprocess(Image.new("RGBA", (9, 9), (0, 0, 0, 0)), prep), 1.0)  # white


def test_data_path_runs_without_torch_or_sklearn(tmp_path: Path) -> None:
    """preprocess, load_dataset and iter_batches on a device that has only numpy and Pillow."""
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new("RGB", (12, 10), (i * 90, 10, 200)).save(tmp_path / c / f"{i}.png")
    code = textwrap.dedent(
        f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('torch', 'torchvision', 'timm', 'sklearn', 'onnxruntime'):
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        from edge_tl.data import load_dataset, iter_batches
        from edge_tl.data.torch_dataset import TorchImageDataset
        from edge_tl.models import Preprocessing
        split = load_dataset({str(tmp_path)!r}, val_split=0.5)
        prep = Preprocessing(input_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
        shapes = [x.shape for x, _ in iter_batches(split.train + split.val, prep, 3)]
        assert 'torch' not in sys.modules, 'torch was imported'
        print(shapes)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[(3, 3, 8, 8), (1, 3, 8, 8)]"
