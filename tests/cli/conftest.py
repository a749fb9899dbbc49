"""A trained run for the CLI tests whose outcome depends on accuracy (quantize's budget)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test backbone at 16 px, two epochs on digits (about 0.9 top-1), exported to ONNX FP32:
    a model that INT8 can measurably hurt, in well under a minute (read-only: copy it first)."""
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    pytest.importorskip("onnxruntime")
    from edge_tl.export import ExportConfig, Precision, export_run
    from edge_tl.train import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("cli-trained") / "run"
    finetune(
        FinetuneConfig(
            data="digits",
            out=str(out),
            backbone="timm:test_efficientnet",
            weights="none",
            img_size=16,
            batch_size=64,
            epochs=2,
            freeze_epochs=0,
            lr=0.03,
            seed=1,
            workers=0,
            quiet=True,
        )
    )
    export_run(out, config=ExportConfig(precisions=(Precision.FP32,), parity_images=16))
    return out


@pytest.fixture
def run_copy(untrained_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(untrained_run, tmp_path / "run"))
