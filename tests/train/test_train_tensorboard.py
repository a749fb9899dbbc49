"""finetune's TensorBoard curves, read back with TensorBoard's own EventAccumulator and held
against metrics.jsonl; and training without the tensorboard package (torchvision's MobileNetV3,
which has BatchNorm, on the shared digits folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

from edge_tl.train import FinetuneConfig, finetune  # noqa: E402
from edge_tl.train.tensorboard import GAP_TAG, MISSING, SCALARS, TENSORBOARD_DIR  # noqa: E402

SETTINGS = {
    "backbone": "mobilenet_v3_small",
    "weights": "none",
    "img_size": 32,
    "batch_size": 16,
    "augment": False,
    "seed": 2,
}


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_curves_hold_the_values_of_metrics_jsonl(tmp_path: Path, digit_folder) -> None:
    out = tmp_path / "r"
    # One head-only epoch, then one full epoch (the BatchNorm re-estimation and its "before" value).
    finetune(
        FinetuneConfig(
            data=str(digit_folder(per_class=6)), out=str(out), epochs=2, freeze_epochs=1, quiet=True, **SETTINGS
        )
    )
    history = _history(out)
    events = event_accumulator.EventAccumulator(str(out / TENSORBOARD_DIR))
    events.Reload()
    expected_tags = {tag for key, tag in SCALARS.items() if any(line[key] is not None for line in history)}
    assert set(events.Tags()["scalars"]) == expected_tags | {GAP_TAG}
    # The full epoch carries every BatchNorm value; the head-only one has no "before re-estimation".
    assert history[0]["bn_stale_top1"] is None and history[1]["bn_stale_top1"] is not None
    for key, tag in SCALARS.items():
        points = [(e.step, e.value) for e in events.Scalars(tag)] if tag in expected_tags else []
        # TensorBoard stores scalars as float32.
        assert points == [(line["epoch"], float(np.float32(line[key]))) for line in history if line[key] is not None], (
            tag
        )
    assert [(e.step, e.value) for e in events.Scalars(GAP_TAG)] == [
        (line["epoch"], float(np.float32(line["bn_batch_top1"] - line["bn_running_top1"]))) for line in history
    ]
    assert [line["epoch"] for line in history] == [1, 2]


def test_training_without_tensorboard_says_how_to_get_it(tmp_path: Path, digit_folder) -> None:
    out = tmp_path / "r"
    # A None entry in sys.modules makes `import tensorboard` raise ImportError, as on a machine without it.
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["tensorboard"] = None
        from edge_tl.train import FinetuneConfig, finetune
        finetune(FinetuneConfig(data={str(digit_folder(per_class=6))!r}, out={str(out)!r}, epochs=1, **{SETTINGS!r}))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if "tensorboard" in line.lower()] == [MISSING]
    assert "pip install tensorboard" in MISSING
    assert [line["epoch"] for line in _history(out)] == [1]
    assert not (out / TENSORBOARD_DIR).exists()


def test_a_resumed_run_adds_its_epochs_to_the_curves(tmp_path: Path, digit_folder) -> None:
    out = tmp_path / "r"
    settings = dict(SETTINGS, data=str(digit_folder(per_class=6)), out=str(out), epochs=2, quiet=True)

    def stop_after_epoch_1(record) -> None:
        if record.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(FinetuneConfig(**settings), callbacks=[stop_after_epoch_1])
    finetune(FinetuneConfig(resume=True, **settings))
    history = _history(out)
    # One event file per finetune call (each opens its own writer).
    assert len(list((out / TENSORBOARD_DIR).iterdir())) == 2
    events = event_accumulator.EventAccumulator(str(out / TENSORBOARD_DIR))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("top1/val")] == [
        (line["epoch"], float(np.float32(line["val_top1"]))) for line in history
    ]
    assert [e.step for e in events.Scalars("loss/train")] == [1, 2]
