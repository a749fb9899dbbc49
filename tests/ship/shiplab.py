"""Helpers of the ship tests: digits images as PNG folders, `edge-tl ship` as a user runs it,
and the deploy tests' loopback sshd lab (tests/deploy/conftest.py), loaded from there."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

if "deploy_fixtures" in sys.modules:
    deploy_fixtures = sys.modules["deploy_fixtures"]
else:
    _spec = importlib.util.spec_from_file_location(
        "deploy_fixtures", Path(__file__).parents[1] / "deploy" / "conftest.py"
    )
    deploy_fixtures = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
    sys.modules["deploy_fixtures"] = deploy_fixtures  # its dataclasses look their module up there
    _spec.loader.exec_module(deploy_fixtures)  # type: ignore[union-attr]

CLASSES = (0, 1, 2)
PER_CLASS = 40

#: Small enough for a loaded 2-core machine: 32 px, one head-only epoch then two full ones.
TRAIN = ["--img-size", "32", "--epochs", "3", "--freeze-epochs", "1", "--batch-size", "32", "--lr", "0.01",
         "--no-augment", "--workers", "0", "--seed", "0"]  # fmt: skip
#: One CPU thread for calibration and evaluation, so quantize gives the same bytes every time.
LATER = ["--threads", "1", "--calib-samples", "48", "--parity-images", "24", "--eval-images", "24",
         "--latency-iterations", "5", "--iterations", "10", "--warmup", "2"]  # fmt: skip


def write_digits(root: Path, classes=CLASSES, per_class: int = PER_CLASS) -> Path:
    """scikit-learn's digits as PNG files, one folder per class."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in classes:
        folder = root / f"digit{label}"
        folder.mkdir(parents=True)
        for i in np.flatnonzero(digits.target == label)[:per_class]:
            pixels = (digits.images[i] * 16).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    return root


def run_ship(*args: object, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_tl", "ship", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def stage_records(run: Path) -> dict:
    return manifest(run).get("stages", {})


@dataclass(frozen=True)
class Shipped:
    data: Path
    run: Path
    args: tuple[str, ...]  # everything but --out
    seconds: float
    stdout: str
    stderr: str

    def args_with(self, **changes: str) -> list[str]:
        args = list(self.args)
        for key, value in changes.items():
            option = "--" + key.replace("_", "-")
            args[args.index(option) + 1] = value
        return args
