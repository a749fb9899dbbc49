"""Fine-tuning with the decode cache: exact resume with it on or off, and no stale pixels
when the data folder changes between runs (real JPEG and PNG files, timm's tiny test model)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from PIL import Image  # noqa: E402

from edge_tl.models.checkpoint import load_checkpoint  # noqa: E402
from edge_tl.train import FinetuneConfig, finetune  # noqa: E402

TINY = {
    "backbone": "timm:test_efficientnet",
    "weights": "none",
    "img_size": 32,
    "batch_size": 8,
    "lr": 0.01,
    "quiet": True,
    "seed": 1,
    "val_split": 0.25,
}


def _photo_folder(root: Path) -> Path:
    """Two classes of 8 small photos-like files: 400x300 JPEGs (decoded at a reduced DCT
    scale) and 200x150 PNGs (reduced by an integer factor)."""
    rng = np.random.default_rng(0)
    for label in range(2):
        (root / str(label)).mkdir(parents=True)
        for i in range(8):
            w, h = (400, 300) if i % 2 else (200, 150)
            yy, xx = np.mgrid[0:h, 0:w]
            tint = np.array([200, 60, 60]) if label else np.array([60, 60, 200])
            pixels = np.clip(
                tint + 40 * np.sin(xx[..., None] / (7 + i) + yy[..., None] / 11) + rng.normal(0, 15, (h, w, 3)), 0, 255
            )
            Image.fromarray(pixels.astype(np.uint8)).save(root / str(label) / (f"{i}.jpg" if i % 2 else f"{i}.png"))
    return root


def _weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _photo_folder(tmp_path_factory.mktemp("photos") / "data")


@pytest.fixture(scope="module")
def uncached_run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uncached") / "run"
    finetune(FinetuneConfig(data=str(photos), out=str(out), epochs=2, cache="off", **TINY))
    return out


@pytest.mark.parametrize("first,then", [("off", "off"), ("disk", "disk"), ("ram", "off")])
def test_resume_is_bitwise_with_the_cache_on_and_off(
    photos: Path, uncached_run: Path, tmp_path: Path, first: str, then: str
) -> None:
    def stop_after_epoch_1(record) -> None:
        if record.epoch == 1:
            raise KeyboardInterrupt

    out = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        finetune(
            FinetuneConfig(data=str(photos), out=out, epochs=2, cache=first, **TINY), callbacks=[stop_after_epoch_1]
        )
    finetune(FinetuneConfig(data=str(photos), out=out, epochs=2, cache=then, resume=True, **TINY))
    # The cache changes no pixel, so every combination ends where the uncached, uninterrupted run does.
    assert _equal(_weights(Path(out)), _weights(uncached_run))


def test_a_changed_data_folder_is_never_read_from_a_stale_cache(tmp_path: Path, monkeypatch) -> None:
    data = _photo_folder(tmp_path / "data")
    monkeypatch.setenv("EDGE_TL_CACHE_DIR", str(tmp_path / "cache"))
    finetune(FinetuneConfig(data=str(data), out=str(tmp_path / "before"), epochs=1, cache="disk", **TINY))
    assert any((tmp_path / "cache").rglob("pixels.u8"))
    # Every file rewritten with other pixels (same names, same sizes on screen).
    for path in sorted(data.rglob("*.*")):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        Image.fromarray(np.ascontiguousarray(pixels[::-1, ::-1])).save(path)
        stat = os.stat(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
    finetune(FinetuneConfig(data=str(data), out=str(tmp_path / "cached"), epochs=1, cache="disk", **TINY))
    finetune(FinetuneConfig(data=str(data), out=str(tmp_path / "fresh"), epochs=1, cache="off", **TINY))
    assert _equal(_weights(tmp_path / "cached"), _weights(tmp_path / "fresh"))
    assert not _equal(_weights(tmp_path / "cached"), _weights(tmp_path / "before"))


def test_gpu_data_on_is_refused_without_cuda(photos: Path, tmp_path: Path) -> None:
    from edge_tl.errors import ConfigError

    with pytest.raises(ConfigError, match="--gpu-data on"):
        finetune(
            FinetuneConfig(data=str(photos), out=str(tmp_path / "r"), epochs=1, device="cpu", gpu_data="on", **TINY)
        )


@pytest.mark.gpu
def test_fine_tune_decoding_on_the_gpu_learns_and_resumes(tmp_path: Path) -> None:
    import json

    data = tmp_path / "data"
    _photo_folder(data)
    for png in list(data.rglob("*.png")):  # the GPU decoder takes JPEGs only
        Image.open(png).convert("RGB").save(png.with_suffix(".jpg"))
        png.unlink()
    settings = dict(TINY, data=str(data), device="cuda", gpu_data="on", epochs=3, lr=0.05)

    def stop_after_epoch_2(record) -> None:
        if record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(FinetuneConfig(out=str(tmp_path / "run"), **settings), callbacks=[stop_after_epoch_2])
    result = finetune(FinetuneConfig(out=str(tmp_path / "run"), resume=True, **settings))
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3] and result.epochs_run == 3
    # Two colour casts: the loss falls when the decoded, augmented pixels arrive intact.
    assert history[-1]["train_loss"] < history[0]["train_loss"]
