"""The GPU data path: workers draw what the CPU path draws; batches are decoded and augmented as tensors.

Everything but nvJPEG runs on the CPU here (torchvision decodes a list of JPEGs on either
device); the ``gpu`` tests repeat it on CUDA where one is present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from PIL import Image  # noqa: E402

from edge_tl.data import AugmentConfig, Sample  # noqa: E402
from edge_tl.data.augment import draw_augment, sample_rng  # noqa: E402
from edge_tl.data.gpu import EncodedDataset, GpuAugmenter, collate_encoded, first_non_jpeg  # noqa: E402
from edge_tl.data.torch_dataset import TorchImageDataset  # noqa: E402
from edge_tl.models import Preprocessing  # noqa: E402

PREP = Preprocessing(input_size=48, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bilinear")


def _smooth(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    phase = rng.uniform(0, 6, 3)
    channels = [127 + 100 * np.sin(xx / (17 + 5 * k) + yy / (23 + 3 * k) + phase[k]) for k in range(3)]
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8))


@pytest.fixture
def jpegs(tmp_path: Path) -> list[Sample]:
    samples = []
    for i, size in enumerate([(240, 180), (180, 240), (300, 200), (200, 200)]):
        path = tmp_path / f"{i}.jpg"
        exif = Image.Exif()
        if i == 1:
            exif[0x0112] = 8  # stored sideways: both paths must see it upright
        _smooth(i, size).save(path, quality=95, exif=exif)
        samples.append(Sample(label=i % 2, path=str(path)))
    return samples


def test_workers_draw_what_the_cpu_path_draws(jpegs) -> None:
    config = AugmentConfig()
    dataset = EncodedDataset(jpegs, augment=config, seed=7)
    (data, draws), label = dataset[(2, 1)]
    assert label == 1 and data.dtype == torch.uint8 and bytes(data[:3].tolist()) == b"\xff\xd8\xff"
    upright = (240, 180)  # 180x240 stored, rotated by EXIF orientation 8
    expected = draw_augment(*upright, config, sample_rng(7, 2, 1))
    assert draws.tolist() == [
        *expected.box,
        float(expected.flip),
        expected.brightness,
        expected.contrast,
        expected.saturation,
    ]
    assert dataset[(3, 1)][0][1].tolist() != draws.tolist()


def _gpu_vs_cpu(jpegs, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    config = AugmentConfig()
    encoded = EncodedDataset(jpegs, augment=config, seed=4)
    batch, labels = collate_encoded([encoded[(0, i)] for i in range(len(jpegs))])
    assert labels.tolist() == [s.label for s in jpegs]
    out = GpuAugmenter(PREP, torch.device(device), channels_last=True)(batch)
    cpu = TorchImageDataset(jpegs, PREP, train=True, augment=config, seed=4)
    reference = torch.stack([cpu[(0, i)][0] for i in range(len(jpegs))])
    return out.cpu(), reference


def test_batched_tensor_augmentation_matches_the_cpu_path(jpegs) -> None:
    out, reference = _gpu_vs_cpu(jpegs, "cpu")
    assert out.shape == reference.shape == (4, 3, 48, 48) and out.dtype == torch.float32
    # Same crops, flips and jitter; only the resampling and JPEG decoding scale differ.
    per_image = (out - reference).abs().mean(dim=(1, 2, 3))
    assert per_image.max() < 0.03, per_image  # measured: about 0.01
    # A flip or a crop taken elsewhere is far off on these images (they vary across the frame).
    assert (out.flip(-1) - reference).abs().mean(dim=(1, 2, 3)).min() > 0.2


def test_only_jpeg_files_go_to_the_gpu_decoder(jpegs, tmp_path: Path) -> None:
    assert first_non_jpeg(jpegs) is None
    png = tmp_path / "x.jpg"  # named .jpg, but a PNG inside: the bytes decide
    _smooth(0, (20, 20)).save(png, format="PNG")
    assert first_non_jpeg([*jpegs, Sample(label=0, path=str(png))]) == str(png)
    assert "built-in" in first_non_jpeg([Sample(label=0, index=0, builtin="digits")])


@pytest.mark.gpu
def test_nvjpeg_decoding_and_cuda_augmentation_match_the_cpu_path(jpegs) -> None:
    out, reference = _gpu_vs_cpu(jpegs, "cuda")
    assert (out - reference).abs().mean(dim=(1, 2, 3)).max() < 0.03
