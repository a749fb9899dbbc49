"""The decode cache: it changes the speed, never a pixel, and never serves a changed file's old pixels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from edge_tl.data import AugmentConfig, Sample, load_dataset, load_image, preprocess  # noqa: E402
from edge_tl.data import cache as cache_mod  # noqa: E402
from edge_tl.data.cache import BaseSpec, CacheMode, base_image, base_shape, open_cache  # noqa: E402
from edge_tl.data.torch_dataset import BatchNormalizer, TorchImageDataset  # noqa: E402
from edge_tl.errors import DataError  # noqa: E402
from edge_tl.models import Preprocessing  # noqa: E402

PREP = Preprocessing(input_size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bilinear")
AUG = AugmentConfig()


def _photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """A smooth image with detail (gradients plus noise), so resampling differences show."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))


def _write(path: Path, seed: int, size: tuple[int, int], *, orientation: int | None = None) -> Sample:
    image = _photo(seed, size)
    if orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(path, exif=exif)
    return Sample(label=seed % 2, path=str(path))


@pytest.fixture
def mixed(tmp_path: Path) -> list[Sample]:
    """Files that take every branch of the base image: a large JPEG (DCT scaling), a large
    PNG (integer reduction), a rotated JPEG, a small JPEG (kept as it is) and a grey PNG."""
    samples = [
        _write(tmp_path / "big.jpg", 0, (400, 300)),
        _write(tmp_path / "big.png", 1, (200, 150)),
        _write(tmp_path / "rotated.jpg", 2, (320, 200), orientation=6),
        _write(tmp_path / "small.jpg", 3, (40, 30)),
    ]
    Image.fromarray(np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8), mode="L").save(
        tmp_path / "grey.png"
    )
    return samples + [Sample(label=1, path=str(tmp_path / "grey.png"))]


def test_base_image_is_small_and_its_shape_comes_from_the_header(mixed) -> None:
    spec = BaseSpec.for_training(PREP, AUG, train=True)
    assert spec.side == 42  # ceil(32 / sqrt(0.6)): the smallest crop still has 32 px across
    shapes = [np.asarray(base_image(s, spec)).shape for s in mixed]
    assert shapes == [(*base_shape(s, spec), 3) for s in mixed]
    assert shapes[0] == (75, 100, 3)  # 400x300 JPEG decoded at 1/4 scale
    assert shapes[1] == (50, 67, 3)  # 200x150 PNG reduced by 3 (ceil division)
    assert shapes[2] == (80, 50, 3)  # rotated by its EXIF tag: upright is 200 wide, 320 tall; 1/4 scale
    assert shapes[3] == (30, 40, 3)  # smaller than the side: never enlarged
    assert min(shapes[0][:2]) >= spec.side and min(shapes[1][:2]) >= spec.side


@pytest.mark.parametrize("mode", [CacheMode.DISK, CacheMode.RAM])
def test_cached_samples_equal_uncached_ones_bitwise(mixed, tmp_path: Path, mode: CacheMode) -> None:
    for train in (True, False):
        plain = TorchImageDataset(mixed, PREP, train=train, seed=5, dtype="uint8")
        cache = open_cache(mixed, plain.spec, mode, root=tmp_path / "cache")
        assert cache is not None and cache.mode is mode and cache.filled_count() == 0
        cached = TorchImageDataset(mixed, PREP, train=train, seed=5, cache=cache, dtype="uint8")
        for epoch in (0, 1):
            for i in range(len(mixed)):
                assert torch.equal(cached[(epoch, i)][0], plain[(epoch, i)][0]), (train, epoch, i)
        assert cache.filled_count() == len(mixed)


def test_eval_mode_through_the_cache_is_exactly_preprocess(mixed, tmp_path: Path) -> None:
    spec = BaseSpec.for_training(PREP, AUG, train=False)
    dataset = TorchImageDataset(mixed, PREP, train=False, cache=open_cache(mixed, spec, CacheMode.DISK, root=tmp_path))
    for i, sample in enumerate(mixed):
        for _ in range(2):  # computed, then read back
            np.testing.assert_array_equal(dataset[i][0].numpy(), preprocess(load_image(sample), PREP))


def test_batches_normalised_on_the_device_equal_per_image_normalisation(mixed) -> None:
    as_uint8 = TorchImageDataset(mixed, PREP, train=True, seed=1, dtype="uint8")
    as_float = TorchImageDataset(mixed, PREP, train=True, seed=1)
    batch = torch.stack([as_uint8[i][0] for i in range(len(mixed))])
    assert batch.dtype == torch.uint8 and batch.shape == (len(mixed), 3, 32, 32)
    expected = torch.stack([as_float[i][0] for i in range(len(mixed))])
    out = BatchNormalizer(PREP, torch.device("cpu"), channels_last=False)(batch)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert torch.equal(out, expected)
    assert BatchNormalizer(PREP, torch.device("cpu"), channels_last=True)(batch).is_contiguous(
        memory_format=torch.channels_last
    )


def test_a_changed_file_is_decoded_again_not_read_from_the_cache(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    samples = [_write(folder / f"{i}.bmp", i, (90, 60)) for i in range(3)]  # uncompressed: the size stays
    spec = BaseSpec.for_training(PREP, AUG, train=True)
    first = open_cache(samples, spec, CacheMode.DISK, root=tmp_path / "cache")
    old = [np.array(first.get(i, s)) for i, s in enumerate(samples)]
    size_before = os.path.getsize(samples[1].path)
    # Same format, same dimensions, same byte count: only the pixels (and the modification time) differ.
    Image.fromarray(255 - np.asarray(Image.open(samples[1].path))).save(samples[1].path)
    os.utime(samples[1].path, ns=(os.stat(samples[1].path).st_atime_ns, os.stat(samples[1].path).st_mtime_ns + 1000))
    assert os.path.getsize(samples[1].path) == size_before
    second = open_cache(samples, spec, CacheMode.DISK, root=tmp_path / "cache")
    assert second.folder == first.folder and second.filled_count() == 2  # the unchanged entries are kept
    np.testing.assert_array_equal(np.asarray(second.get(0, samples[0])), old[0])
    fresh = np.asarray(second.get(1, samples[1]))
    np.testing.assert_array_equal(fresh, np.asarray(base_image(samples[1], spec)))
    assert not np.array_equal(fresh, old[1])
    third = open_cache(samples, spec, CacheMode.DISK, root=tmp_path / "cache")
    assert third.filled_count() == 3  # what a run filled is there for the next one


def test_a_file_gone_unreadable_after_the_split_is_a_data_error(tmp_path: Path) -> None:
    sample = _write(tmp_path / "a.jpg", 0, (90, 60))
    Path(sample.path).write_bytes(b"not an image at all")
    spec = BaseSpec.for_training(PREP, AUG, train=True)
    with pytest.raises(DataError, match="a.jpg"):
        open_cache([sample], spec, CacheMode.DISK, root=tmp_path / "cache")


def test_auto_takes_disk_then_ram_then_off(mixed, tmp_path: Path, monkeypatch) -> None:
    spec = BaseSpec.for_training(PREP, AUG, train=True)
    need = sum(h * w * 3 for h, w in (base_shape(s, spec) for s in mixed))

    class Usage:
        free = 2 * need

    monkeypatch.setattr("shutil.disk_usage", lambda _path: Usage)
    monkeypatch.setattr(cache_mod, "_available_memory", lambda: 4 * need)
    assert open_cache(mixed, spec, CacheMode.AUTO, root=tmp_path).mode is CacheMode.DISK
    Usage.free = 2 * need - 2
    assert open_cache(mixed, spec, CacheMode.AUTO, root=tmp_path).mode is CacheMode.RAM
    assert open_cache(mixed, spec, CacheMode.AUTO, root=tmp_path, world_size=2) is None  # a RAM cache per rank: no
    monkeypatch.setattr(cache_mod, "_available_memory", lambda: 4 * need - 4)
    assert open_cache(mixed, spec, CacheMode.AUTO, root=tmp_path) is None
    assert open_cache(mixed, spec, CacheMode.OFF, root=tmp_path) is None


def test_builtin_digits_are_cached_too(tmp_path: Path) -> None:
    digits = load_dataset("digits", seed=0)
    plain = TorchImageDataset(digits.train[:6], PREP, train=True, dtype="uint8")
    cache = open_cache(digits.train[:6], plain.spec, CacheMode.DISK, root=tmp_path)
    cached = TorchImageDataset(digits.train[:6], PREP, train=True, cache=cache, dtype="uint8")
    assert all(torch.equal(cached[i][0], plain[i][0]) for i in range(6))
