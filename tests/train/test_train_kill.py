"""Kills at the worst moments of the loop, in a real process, and the way out of each."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from edge_tl.models.checkpoint import load_checkpoint  # noqa: E402
from edge_tl.runs import Run  # noqa: E402
from edge_tl.train import FinetuneConfig, finetune  # noqa: E402

TINY = {"backbone": "timm:test_efficientnet", "weights": "none", "img_size": 32, "batch_size": 16, "lr": 0.01,
        "quiet": True, "seed": 3, "epochs": 2, "freeze_epochs": 1}  # fmt: skip

# SIGKILLs its own process at the second checkpoint write of epoch 1 (which always improves
# on "no best yet", so both best.pt and last.pt are written): the two files are never
# written as one, and a power cut or OOM kill can fall between them.
_KILL_BETWEEN_WRITES = textwrap.dedent(
    """
    import os, signal, sys
    import edge_tl.models.checkpoint as checkpoint
    from edge_tl.train import FinetuneConfig, finetune

    real, writes = checkpoint.save_checkpoint, []

    def save_then_die(path, payload):
        writes.append(str(path))
        if len(writes) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, payload)

    checkpoint.save_checkpoint = save_then_die
    finetune(FinetuneConfig(**__import__("json").loads(sys.argv[1])))
    """
)


def test_kill_between_checkpoint_writes_leaves_a_consistent_run_and_resume_finishes_it(
    tmp_path: Path, digit_folder
) -> None:
    import json

    settings = dict(TINY, data=str(digit_folder(per_class=10)))
    out = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-c", _KILL_BETWEEN_WRITES, json.dumps({**settings, "out": str(out)})],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    last, best = out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt"
    # Whatever last.pt says is best, best.pt holds: the best checkpoint is written first.
    if last.is_file():
        assert best.is_file() and load_checkpoint(best)["epoch"] == load_checkpoint(last)["best_epoch"]
    assert load_checkpoint(best)["epoch"] == 1 and not last.exists()
    assert Run.open(out).get("training")["status"] == "running"

    # Killed in epoch 1, before last.pt: plain finetune points at --resume, and --resume starts it again.
    from edge_tl.errors import ConfigError

    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        finetune(FinetuneConfig(out=str(out), **settings))
    result = finetune(FinetuneConfig(out=str(out), resume=True, **settings))
    whole = finetune(FinetuneConfig(out=str(tmp_path / "whole"), **settings))
    # Started again from epoch 0: the same curve as a run never killed.
    assert result.epochs_run == 2
    assert [(r.train_loss, r.val_top1) for r in result.history] == [(r.train_loss, r.val_top1) for r in whole.history]
    run = Run.open(out)
    assert run.get("training")["status"] == "complete"
    assert load_checkpoint(last)["epoch"] == 2
    assert run.artifact("checkpoint-best").details["epoch"] == load_checkpoint(best)["epoch"] == whole.best_epoch


def test_resume_keeps_the_best_checkpoint_state_and_the_early_stopping_count(tmp_path: Path, digit_folder) -> None:
    """Best top-1, best epoch and the epochs-without-improvement count all survive an interruption."""
    # A learning rate this small cannot move a random network: the best epoch is the first,
    # and every later epoch counts towards early stopping, across the interruption.
    settings = dict(TINY, data=str(digit_folder(per_class=10)), epochs=5, freeze_epochs=0, patience=3, lr=1e-9)
    whole = finetune(FinetuneConfig(out=str(tmp_path / "whole"), **settings))
    assert whole.best_epoch == 1 and whole.stopped_early and whole.epochs_run == 4  # the scenario this test needs

    def interrupt_after_epoch_2(record) -> None:
        if record.epoch == 2:
            raise KeyboardInterrupt

    split = tmp_path / "split"
    with pytest.raises(KeyboardInterrupt):
        finetune(FinetuneConfig(out=str(split), **settings), callbacks=[interrupt_after_epoch_2])
    resumed = finetune(FinetuneConfig(out=str(split), resume=True, **settings))
    # Losing best top-1 would make epoch 3 "best"; losing the count would run epoch 5.
    assert (resumed.best_epoch, resumed.best_val_top1, resumed.epochs_run, resumed.stopped_early) == (
        whole.best_epoch,
        whole.best_val_top1,
        whole.epochs_run,
        whole.stopped_early,
    )
    a, b = (
        load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt"),
        load_checkpoint(split / "checkpoints" / "last.pt"),
    )
    assert (
        (a["best_top1"], a["best_epoch"], a["bad_epochs"])
        == (b["best_top1"], b["best_epoch"], b["bad_epochs"])
        == (whole.best_val_top1, 1, 3)
    )
    assert load_checkpoint(split / "checkpoints" / "best.pt")["epoch"] == 1
    run = Run.open(split)
    assert run.artifact("checkpoint-best").details["epoch"] == 1
    assert run.get("training")["best_epoch"] == 1 and run.get("metrics") == Run.open(tmp_path / "whole").get("metrics")
