"""A trained digits run with its FP32 ONNX export, shared by the quantize tests (read-only)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def exported_run(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``digits_run`` plus ``onnx-fp32`` (no FP16): copy it before writing into it."""
    pytest.importorskip("onnxruntime")
    from edge_tl.export import ExportConfig, Precision, export_run

    root = Path(shutil.copytree(digits_run, tmp_path_factory.mktemp("quantize") / "run"))
    export_run(root, config=ExportConfig(precisions=(Precision.FP32,), parity_images=64))
    return root


@pytest.fixture()
def run_copy(exported_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported_run, tmp_path / "run"))
