"""A run directory given relative to the working directory, as `edge-tl quickstart` does by default."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_finetune_into_a_relative_out_records_its_checkpoints(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("timm")
    from edge_tl.runs import Run
    from edge_tl.train import FinetuneConfig, finetune

    monkeypatch.chdir(tmp_path)
    finetune(
        FinetuneConfig(
            data="digits",
            out="runs/rel",
            backbone="timm:test_efficientnet",
            weights="none",
            img_size=16,
            epochs=1,
            augment=False,
            workers=0,
            quiet=True,
        )
    )
    run = Run.open(tmp_path / "runs" / "rel")
    for name, path in (("checkpoint-best", "checkpoints/best.pt"), ("checkpoint-last", "checkpoints/last.pt")):
        assert run.artifact(name).path == path
        assert run.artifact_path(name) == tmp_path / "runs" / "rel" / path
