"""A digits run taken through every local stage by the `edge-tl` command, shared by the report tests.

The loopback-device fixtures are the deploy tests' own (tests/deploy/conftest.py), loaded from
there so that a device section is tested against a real deploy, not a hand-written result.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from staging import cli, deploy_fixtures

ssh_lab = deploy_fixtures.ssh_lab


@pytest.fixture(scope="session")
def staged_run(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``digits_run`` + evaluate + export (FP32, FP16) + INT8 quantize + verify on every validation image
    (read-only)."""
    pytest.importorskip("onnxruntime")
    root = Path(shutil.copytree(digits_run, tmp_path_factory.mktemp("report-run") / "run"))
    cli("evaluate", root)
    cli("export", root, "--parity-images", "64", "--quiet")
    cli("quantize", root, "--calib-samples", "64", "--threads", "1", "--quiet")
    cli("verify", root, "--latency-iterations", "30", "--device", "cpu", "--threads", "1", "--quiet")
    return root


@pytest.fixture()
def run_copy(staged_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(staged_run, tmp_path / "run"))
