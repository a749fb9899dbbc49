"""The fine-tune loop through its library API: learning, exact resume, run-directory contents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from edge_tl.errors import ConfigError, RunError  # noqa: E402
from edge_tl.models import load_run_model  # noqa: E402
from edge_tl.models.checkpoint import load_checkpoint  # noqa: E402
from edge_tl.runs import Run  # noqa: E402
from edge_tl.train import FinetuneConfig, finetune  # noqa: E402

#: Timings in metrics.jsonl: they differ between any two runs.
TIMINGS = ("images_per_s", "seconds", "bn_seconds")

TINY = {
    "backbone": "timm:test_efficientnet",
    "weights": "none",
    "img_size": 32,
    "batch_size": 16,
    "lr": 0.01,
    "quiet": True,
    "seed": 3,
}


def test_short_finetune_learns_digits(digits_run: Path) -> None:
    history = [json.loads(line) for line in (digits_run / "metrics.jsonl").read_text().splitlines()]
    assert [h["phase"] for h in history] == ["head", "full", "full", "full"]
    assert history[-1]["val_top1"] >= 0.9 > 0.1 * 5  # ten classes: chance is 0.1
    assert max(h["val_top1"] for h in history) > history[0]["val_top1"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    run = Run.open(digits_run)
    assert run.get("metrics")["val_top1"] == max(h["val_top1"] for h in history)
    assert run.get("training")["status"] == "complete"
    # The backbone trains with a smaller learning rate than the head once unfrozen.
    assert all(h["lr_backbone"] < h["lr_head"] for h in history if h["lr_head"] > 0)


def test_run_directory_follows_the_contract(digits_run: Path) -> None:
    run = Run.open(digits_run)
    for key in ("backbone", "preprocessing", "classes", "data", "training", "metrics"):
        assert key in run.manifest
    assert run.get("classes") == [str(d) for d in range(10)]
    assert run.get("preprocessing")["input_size"] == 32
    data = run.get("data")
    assert data["source"] == "digits" and data["num_train"] + data["num_val"] == 1797
    assert (digits_run / data["split_file"]).is_file()
    for name in ("checkpoint-best", "checkpoint-last"):
        path = run.artifact_path(name)
        assert load_checkpoint(path)["model"]  # loads with weights_only=True
    model = load_run_model(run)
    assert not model.training
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_interrupted_then_resumed_run_matches_uninterrupted_bitwise(tmp_path: Path, digit_folder) -> None:
    data = str(digit_folder(per_class=10))
    settings = dict(TINY, data=data, epochs=3, freeze_epochs=1, augment=True)
    finetune(FinetuneConfig(out=str(tmp_path / "whole"), **settings))

    def interrupt_after_epoch_2(record) -> None:
        if record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(FinetuneConfig(out=str(tmp_path / "split"), **settings), callbacks=[interrupt_after_epoch_2])
    assert Run.open(tmp_path / "split").get("training")["status"] == "running"
    assert load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["epoch"] == 2
    finetune(FinetuneConfig(out=str(tmp_path / "split"), resume=True, **settings))

    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    resumed = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert whole["epoch"] == resumed["epoch"] == 3
    assert whole["model"].keys() == resumed["model"].keys()
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for index, state in whole["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, resumed["optimizer"]["state"][index][name]), (index, name)
    assert whole["scheduler"] == resumed["scheduler"]

    def curves(run: str) -> list[dict]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k not in TIMINGS} for x in lines]

    assert curves("whole") == curves("split") and len(curves("whole")) == 3


def test_resume_refuses_changed_settings_and_missing_runs(tmp_path: Path, digit_folder) -> None:
    data = str(digit_folder(per_class=10))
    with pytest.raises(RunError, match="no interrupted run"):
        finetune(FinetuneConfig(out=str(tmp_path / "none"), data=data, resume=True, **{**TINY, "quiet": True}))
    out = str(tmp_path / "r")
    finetune(FinetuneConfig(out=out, data=data, epochs=1, freeze_epochs=1, **TINY))
    with pytest.raises(ConfigError, match="already holds a run"):
        finetune(FinetuneConfig(out=out, data=data, epochs=1, freeze_epochs=1, **TINY))
    with pytest.raises(ConfigError, match=r"lr: 0.01 -> 0.5"):
        finetune(FinetuneConfig(out=out, data=data, epochs=2, freeze_epochs=1, resume=True, **{**TINY, "lr": 0.5}))


def test_early_stopping_stops_and_keeps_the_best(tmp_path: Path, digit_folder) -> None:
    data = str(digit_folder(per_class=10))
    # A learning rate this small cannot move a random network: top-1 plateaus at once.
    result = finetune(
        FinetuneConfig(
            out=str(tmp_path / "r"), data=data, epochs=6, freeze_epochs=0, patience=1, **{**TINY, "lr": 1e-9}
        )
    )
    assert result.stopped_early and result.epochs_run < 6
    run = Run.open(tmp_path / "r")
    assert run.get("training")["stopped_early"] is True
    assert run.artifact("checkpoint-best").details["epoch"] == result.best_epoch


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"epochs": 0}, "--epochs"),
        ({"freeze_epochs": 5, "epochs": 2}, "--freeze-epochs"),
        ({"lr": -1.0}, "--lr"),
        ({"device": "tpu"}, "--device must be one of"),
        ({"img_size": 4}, "--img-size"),
        ({"val_split": 1.0}, "--val-split"),
    ],
)
def test_config_rejects_bad_values(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig(data="digits", out="x", **override)


def test_cuda_only_settings_are_refused_on_the_cpu(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        finetune(FinetuneConfig(data="digits", out=str(tmp_path / "r"), device="cpu", precision="fp16"))
    with pytest.raises(ConfigError, match="--sync-bn needs CUDA"):
        finetune(FinetuneConfig(data="digits", out=str(tmp_path / "r"), device="cpu", sync_bn=True))
    assert not (tmp_path / "r").exists()
