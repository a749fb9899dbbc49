"""Shared test configuration.

Tests marked ``gpu``, ``tensorrt`` or ``ssh`` are skipped with a reason where
the thing they need is missing, so the same suite runs here and on a device.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest


def _has_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


_REQUIREMENTS = {
    "gpu": (_has_cuda, "needs a CUDA GPU"),
    "tensorrt": (_has_tensorrt, "needs TensorRT's Python package (import tensorrt)"),
    "ssh": (
        lambda: shutil.which("sshd") is not None or os.path.exists("/usr/sbin/sshd"),
        "needs OpenSSH's sshd (apt install openssh-server)",
    ),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cache: dict[str, bool] = {}
    for item in items:
        for marker, (check, reason) in _REQUIREMENTS.items():
            if marker in item.keywords:
                if marker not in cache:
                    cache[marker] = check()
                if not cache[marker]:
                    item.add_marker(pytest.mark.skip(reason=reason))


# --------------------------------------------------------------------------- a trained run

#: Settings of the shared digits run: efficientnet_lite0 (bundled ImageNet weights) at
#: 32 px, one head-only epoch then three full ones; validation top-1 about 0.98.
DIGITS_RUN_SETTINGS = {
    "backbone": "efficientnet_lite0",
    "img_size": 32,
    "epochs": 4,
    "freeze_epochs": 1,
    "batch_size": 64,
    "lr": 0.01,
    "backbone_lr_mult": 0.3,
    "augment": False,
    "seed": 0,
}


def _finetuned_digits(tmp_path_factory: pytest.TempPathFactory, folder: str, settings: dict) -> Path:
    """A digits run fine-tuned with ``settings`` in a new folder (shared by the session's run fixtures)."""
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    from edge_tl.train import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp(folder) / "run"
    finetune(FinetuneConfig(data="digits", out=str(out), quiet=True, **settings))
    return out


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory):
    """A small fine-tuned digits run directory (read-only: copy it before writing into it)."""
    return _finetuned_digits(tmp_path_factory, "digits-run", DIGITS_RUN_SETTINGS)


@pytest.fixture(scope="session", autouse=True)
def _decode_cache_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory):
    """Fine-tunes cache decoded images (edge_tl.data.cache); tests keep that out of ~/.cache.
    Set in os.environ so that edge-tl processes the tests start inherit it."""
    saved = os.environ.get("EDGE_TL_CACHE_DIR")
    os.environ["EDGE_TL_CACHE_DIR"] = str(tmp_path_factory.mktemp("decode-cache"))
    yield
    if saved is None:
        os.environ.pop("EDGE_TL_CACHE_DIR", None)
    else:
        os.environ["EDGE_TL_CACHE_DIR"] = saved


#: Settings of the tiny digits run: timm's 0.1M-parameter test_efficientnet from scratch at
#: 16 px, two epochs on scikit-learn digits (about 2 s once torch is imported); validation
#: top-1 about 0.98. For tests that run the export and quantize stages many times over
#: (mutation testing runs them once per mutant).
TINY_DIGITS_RUN_SETTINGS = {
    "backbone": "timm:test_efficientnet",
    "weights": "none",
    "img_size": 16,
    "epochs": 2,
    "batch_size": 64,
    "lr": 0.05,
    "augment": False,
    "workers": 0,
    "seed": 0,
}


@pytest.fixture(scope="session")
def tiny_digits_run(tmp_path_factory: pytest.TempPathFactory):
    """A tiny fine-tuned digits run directory (read-only: copy it before writing into it)."""
    return _finetuned_digits(tmp_path_factory, "tiny-digits-run", TINY_DIGITS_RUN_SETTINGS)


@pytest.fixture(scope="session")
def tiny_digits_folder(tmp_path_factory: pytest.TempPathFactory):
    """``<digit>/<k>.png``: three scikit-learn digits of each class as 8x8 grey images (read-only)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("tiny-digits-folder")
    digits = load_digits()
    for label in range(10):
        (root / str(label)).mkdir()
        for k, index in enumerate(np.flatnonzero(digits.target == label)[-3:]):
            Image.fromarray(np.rint(digits.images[index] * (255 / 16)).astype(np.uint8), mode="L").save(
                root / str(label) / f"{k}.png"
            )
    return root


# --------------------------------------------------------------------------- an untrained run


def _build_untrained_run(root: Path, *, seed: int = 0) -> Path:
    """A digits run at 16 px: a randomly initialised test backbone as its best checkpoint, exported
    to ONNX FP32. Its accuracy is chance; the CLI tests pin what the commands decide, not learning."""
    from edge_tl.data import load_dataset, save_split
    from edge_tl.export import ExportConfig, Precision, export_run
    from edge_tl.models import Weights, WeightsSource, build_model, get_backbone
    from edge_tl.models.checkpoint import save_checkpoint
    from edge_tl.runs import Run
    from edge_tl.train.state import seed_everything

    backbone = "timm:test_efficientnet"
    split = load_dataset("digits", val_split=0.2, seed=0)
    prep = get_backbone(backbone).preprocessing.with_input_size(16)
    run = Run.create(root, backbone={"name": backbone}, preprocessing=prep.to_dict(), classes=list(split.classes),
                     data={"source": "digits", "split_file": "split.json"})  # fmt: skip
    save_split(split, root / "split.json")
    seed_everything(seed)
    model = build_model(backbone, len(split.classes), weights=Weights(WeightsSource.NONE))
    save_checkpoint(root / "checkpoints" / "best.pt", {"model": model.state_dict()})
    run.add_artifact("checkpoint-best", kind="checkpoint", path=root / "checkpoints" / "best.pt", stage="finetune")
    export_run(root, config=ExportConfig(precisions=(Precision.FP32,), parity_images=16))
    return root


@pytest.fixture(scope="session")
def untrained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported run in seconds, for tests of what commands decide (read-only: copy it first)."""
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    pytest.importorskip("onnxruntime")
    return _build_untrained_run(tmp_path_factory.mktemp("cli-run") / "run")
