"""The training dataset: eval mode is exactly preprocess; augmentation is switchable and reproducible."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from edge_tl.data import AugmentConfig, Sample, load_dataset, load_image, preprocess  # noqa: E402
from edge_tl.data.augment import augment_image, sample_rng  # noqa: E402
from edge_tl.data.torch_dataset import TorchImageDataset  # noqa: E402
from edge_tl.errors import ConfigError  # noqa: E402
from edge_tl.models import Preprocessing  # noqa: E402

PREP = Preprocessing(input_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_eval_mode_is_exactly_preprocess(digits) -> None:
    for dataset in (
        TorchImageDataset(digits.val[:5], PREP, train=False),
        TorchImageDataset(digits.val[:5], PREP, train=True, augment=AugmentConfig(enabled=False)),
    ):
        for i in range(5):
            tensor, label = dataset[i]
            assert tensor.dtype == torch.float32 and label == digits.val[i].label
            np.testing.assert_array_equal(tensor.numpy(), preprocess(load_image(digits.val[i]), PREP))


def test_augmentation_is_reproducible_per_seed_epoch_and_index(digits) -> None:
    dataset = TorchImageDataset(digits.train[:8], PREP, train=True, augment=AugmentConfig.for_source("digits"), seed=3)
    first = [dataset[i][0] for i in range(8)]
    again = [dataset[i][0] for i in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    dataset.set_epoch(1)
    later = [dataset[i][0] for i in range(8)]
    assert not any(torch.equal(a, b) for a, b in zip(first, later))
    other_seed = TorchImageDataset(digits.train[:8], PREP, train=True, seed=4)
    assert not torch.equal(other_seed[0][0], first[0])
    assert not torch.equal(first[0], torch.from_numpy(preprocess(load_image(digits.train[0]), PREP)))


def _asymmetric() -> Image.Image:
    array = np.zeros((16, 16, 3), dtype=np.uint8)
    array[:, :4] = 255  # bright left edge
    return Image.fromarray(array)


def test_horizontal_flip_can_be_disabled() -> None:
    no_crop = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "color_jitter": 0.0}
    image = _asymmetric()
    plain = np.asarray(image.resize((16, 16)))

    def left_bright(config: AugmentConfig, epoch: int) -> bool:
        out = np.asarray(augment_image(image, PREP, config, sample_rng(0, epoch, 0)))
        return out[:, :4].mean() > out[:, -4:].mean()

    off = AugmentConfig(hflip=False, **no_crop)
    assert all(left_bright(off, e) for e in range(30))
    np.testing.assert_array_equal(np.asarray(augment_image(image, PREP, off, sample_rng(0, 0, 0))), plain)
    on = AugmentConfig(hflip=True, **no_crop)
    flips = [not left_bright(on, e) for e in range(30)]
    assert 5 < sum(flips) < 25
    assert AugmentConfig.for_source("digits").hflip is False
    assert AugmentConfig.for_source("/data/flowers").hflip is True


def test_random_resized_crop_changes_scale_even_on_8x8_digits(digits) -> None:
    image = load_image(digits.train[0])
    config = AugmentConfig(hflip=False, color_jitter=0.0, scale=(0.5, 0.5))
    outs = {np.asarray(augment_image(image, PREP, config, sample_rng(0, e, 0))).tobytes() for e in range(10)}
    assert len(outs) == 10  # sub-pixel crop boxes: every draw differs
    assert augment_image(image, PREP, config, sample_rng(0, 0, 0)).size == (16, 16)
    # Half the area is a real zoom: each draw is far from the plain resize (mean |diff| about
    # 50-65 of 255 here); the full area with a square ratio is the plain resize exactly.
    plain = np.asarray(image.resize((16, 16), Image.BILINEAR)).astype(float)

    def distance(config: AugmentConfig, epoch: int) -> float:
        return float(np.abs(np.asarray(augment_image(image, PREP, config, sample_rng(0, epoch, 0))) - plain).mean())

    assert min(distance(config, e) for e in range(10)) > 30
    full = AugmentConfig(hflip=False, color_jitter=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert all(distance(full, e) == 0.0 for e in range(3))


def test_colour_jitter_stays_small() -> None:
    image = Image.new("RGB", (16, 16), (120, 80, 40))
    config = AugmentConfig(hflip=False, scale=(1.0, 1.0), ratio=(1.0, 1.0), color_jitter=0.2)

    def deviation(config: AugmentConfig, epoch: int) -> int:
        out = np.asarray(augment_image(image, PREP, config, sample_rng(0, epoch, 0))).astype(int)
        return int(np.abs(out - [120, 80, 40]).max())

    deviations = [deviation(config, e) for e in range(10)]
    # bounded by 0.2 of each channel, and really applied: every draw moves a channel by
    # several levels and some by 20+ (12-25 here)
    assert max(deviations) <= 60 and min(deviations) >= 5 and max(deviations) >= 20
    off = AugmentConfig(hflip=False, scale=(1.0, 1.0), ratio=(1.0, 1.0), color_jitter=0.0)
    assert [deviation(off, e) for e in range(3)] == [0, 0, 0]


def test_dataloader_batches(digits) -> None:
    dataset = TorchImageDataset(digits.train[:20], PREP, train=True, augment=AugmentConfig.for_source("digits"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=False, num_workers=0)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(8, 3, 16, 16), (8, 3, 16, 16), (4, 3, 16, 16)]
    assert batches[0][1].dtype == torch.int64
    assert batches[0][1].tolist() == [s.label for s in digits.train[:8]]


def test_file_samples_load_in_workers(tmp_path) -> None:
    for i in range(4):
        Image.new("RGB", (20, 10), (i * 60, 0, 0)).save(tmp_path / f"{i}.png")
    samples = [Sample(label=i % 2, path=str(tmp_path / f"{i}.png")) for i in range(4)]
    dataset = TorchImageDataset(samples, PREP, train=True, seed=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    in_workers = torch.cat([x for x, _ in loader])
    in_process = torch.stack([dataset[i][0] for i in range(4)])
    assert torch.equal(in_workers, in_process)  # the same augmentation whatever the worker count


def test_invalid_augment_config() -> None:
    with pytest.raises(ConfigError, match="scale"):
        AugmentConfig(scale=(0.0, 1.0))
    with pytest.raises(ConfigError, match="color_jitter"):
        AugmentConfig(color_jitter=1.5)
    config = AugmentConfig(hflip=False, scale=(0.7, 0.9))
    assert AugmentConfig.from_dict(config.to_dict()) == config
