"""One real `edge-tl ship` run on digits images to a loopback sshd, shared by the ship tests."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest
from shiplab import LATER, TRAIN, Shipped, deploy_fixtures, run_ship, write_digits

ssh_lab = deploy_fixtures.ssh_lab
sshd = deploy_fixtures.sshd
edge_tl_wheel = deploy_fixtures.edge_tl_wheel


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sklearn")
    return write_digits(tmp_path_factory.mktemp("ship-data") / "images")


@pytest.fixture(scope="session")
def shipped(digits_folder, sshd, ssh_lab, edge_tl_wheel, tmp_path_factory) -> Shipped:
    """`edge-tl ship --data IMAGES --target x86-64 --out RUN --host <loopback sshd> --max-accuracy-drop 1`
    (read-only)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("ship-run")
    args = (
        "--data", str(digits_folder), "--target", "x86-64", "--host", sshd.alias, "--max-accuracy-drop", "1",
        *TRAIN, *LATER, "--ssh-config", str(ssh_lab.client_config), "--remote-dir", str(root / "device"),
        "--wheel", str(edge_tl_wheel), "--remote-python", sys.executable,
    )  # fmt: skip
    started = time.perf_counter()
    done = run_ship(*args, "--out", root / "run")
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stdout + done.stderr
    return Shipped(digits_folder, root / "run", args, seconds, done.stdout, done.stderr)


@pytest.fixture
def run_copy(shipped: Shipped, tmp_path: Path) -> Path:
    return Path(shutil.copytree(shipped.run, tmp_path / "run"))
