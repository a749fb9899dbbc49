"""--resume keeps what decides the rest of a run: best top-1, best epoch, the early-stopping count,
the last epoch and the metrics lines, in one process and in a launched (DDP) world.

Fast on purpose (16 px digits, 4 images a class, a test backbone): these tests are what the
mutation run of ``train/loop.py``'s checkpoint and resume code executes for every mutant.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from edge_tl.errors import ConfigError, RunError  # noqa: E402
from edge_tl.models.checkpoint import load_checkpoint  # noqa: E402
from edge_tl.runs import Run  # noqa: E402
from edge_tl.train import FinetuneConfig, finetune  # noqa: E402
from edge_tl.train.loop import TrainingProgress  # noqa: E402

# A learning rate this small cannot move the network and frozen BatchNorm keeps its statistics,
# so validation top-1 is the same every epoch: epoch 1 is the best, every later epoch is a bad
# one, and with patience 3 the run stops after epoch 4. A resume that forgot the best top-1
# would call epoch 3 a new best; one that forgot the count would stop after epoch 5.
PLATEAU = {
    "backbone": "timm:test_efficientnet", "weights": "none", "img_size": 16, "batch_size": 8, "lr": 1e-9,
    "freeze_epochs": 0, "freeze_bn": True, "epochs": 6, "patience": 3, "seed": 7, "workers": 0, "quiet": True,
}  # fmt: skip


#: Timings in metrics.jsonl: they differ between any two runs.
TIMINGS = ("images_per_s", "seconds", "bn_seconds")

# --------------------------------------------------------------------------- the bookkeeping itself


def test_the_first_epoch_is_always_the_first_best_even_at_zero_top1() -> None:
    progress = TrainingProgress()
    assert progress.finish_epoch(1, 0.0, {"val_top1": 0.0}) is True
    assert (progress.epoch, progress.best_top1, progress.best_epoch, progress.bad_epochs) == (1, 0.0, 1, 0)
    assert progress.best_summary == {"val_top1": 0.0}


def test_a_tie_or_a_drop_is_a_bad_epoch_and_a_rise_resets_the_count() -> None:
    progress = TrainingProgress()
    progress.finish_epoch(1, 0.5, {"val_top1": 0.5})
    assert progress.finish_epoch(2, 0.5, {"val_top1": 0.5, "tie": True}) is False  # a tie keeps the earlier best
    assert progress.finish_epoch(3, 0.25, {"val_top1": 0.25}) is False
    assert (progress.epoch, progress.best_top1, progress.best_epoch, progress.bad_epochs) == (3, 0.5, 1, 2)
    assert progress.best_summary == {"val_top1": 0.5}
    assert progress.finish_epoch(4, 0.75, {"val_top1": 0.75}) is True
    assert (progress.epoch, progress.best_top1, progress.best_epoch, progress.bad_epochs) == (4, 0.75, 4, 0)
    assert progress.best_summary == {"val_top1": 0.75}
    assert progress.finish_epoch(5, 0.5, {}) is False and progress.bad_epochs == 1


@pytest.mark.parametrize(
    ("patience", "bad_epochs", "stop"),
    [(0, 0, False), (0, 9, False), (1, 0, False), (1, 1, True), (3, 2, False), (3, 3, True), (3, 4, True)],
)
def test_early_stopping_after_patience_bad_epochs_and_never_at_zero(patience: int, bad_epochs: int, stop: bool) -> None:
    assert TrainingProgress(bad_epochs=bad_epochs).should_stop(patience) is stop


def test_the_checkpoint_record_round_trips_every_field() -> None:
    progress = TrainingProgress(
        epoch=5, best_top1=0.875, best_epoch=3, bad_epochs=2, best_summary={"val_top1": 0.875, "num_val": 8}
    )
    record = progress.to_checkpoint()
    assert record == {"epoch": 5, "best_top1": 0.875, "best_epoch": 3, "bad_epochs": 2,
                      "best_summary": {"val_top1": 0.875, "num_val": 8}}  # fmt: skip
    assert TrainingProgress.from_checkpoint({**record, "model": {}, "rng": {}}) == progress
    # Stored numbers come back as the types the loop computes with (an int top-1 of 1 is 1.0).
    loaded = TrainingProgress.from_checkpoint(
        {**record, "best_top1": 1, "epoch": 5.0, "best_epoch": 3.0, "bad_epochs": 2.0}
    )
    assert [type(v) for v in (loaded.epoch, loaded.best_top1, loaded.best_epoch, loaded.bad_epochs)] == [
        int,
        float,
        int,
        int,
    ]


# --------------------------------------------------------------------------- through finetune


@pytest.fixture
def tiny_digits(digit_folder) -> str:
    return str(digit_folder(per_class=4))


def _curves(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMINGS} for x in lines]


def _interrupt_after(epoch: int, *, keep_last_of: int | None = None, out: Path | None = None):
    """A callback that stops the run after ``epoch``; with ``keep_last_of``, last.pt is then put back
    to what epoch ``keep_last_of`` wrote (a kill between the metrics and the checkpoint writes)."""
    saved: dict[str, Path] = {}

    def callback(record) -> None:
        if out is not None and record.epoch == keep_last_of:
            saved["last"] = out / "last-before.pt"
            shutil.copy2(out / "checkpoints" / "last.pt", saved["last"])
        if record.epoch == epoch:
            if saved:
                shutil.copy2(saved["last"], out / "checkpoints" / "last.pt")
            raise KeyboardInterrupt

    return callback


def _same_outcome(whole: Path, split: Path, whole_result, split_result) -> None:
    assert (
        split_result.best_epoch,
        split_result.best_val_top1,
        split_result.epochs_run,
        split_result.stopped_early,
    ) == (whole_result.best_epoch, whole_result.best_val_top1, whole_result.epochs_run, whole_result.stopped_early)
    a, b = load_checkpoint(whole / "checkpoints" / "last.pt"), load_checkpoint(split / "checkpoints" / "last.pt")
    for key in ("epoch", "best_top1", "best_epoch", "bad_epochs", "best_summary"):
        assert a[key] == b[key], key
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert load_checkpoint(split / "checkpoints" / "best.pt")["epoch"] == a["best_epoch"]
    ta, tb = Run.open(whole).get("training"), Run.open(split).get("training")
    assert (tb["status"], tb["best_epoch"], tb["epochs_run"], tb["stopped_early"]) == (
        "complete",
        ta["best_epoch"],
        ta["epochs_run"],
        ta["stopped_early"],
    )
    assert Run.open(split).get("metrics") == Run.open(whole).get("metrics")
    for name in ("checkpoint-best", "checkpoint-last"):
        ra, rb = Run.open(whole).artifact(name), Run.open(split).artifact(name)
        assert rb.details == ra.details == {"epoch": a["best_epoch"] if name == "checkpoint-best" else a["epoch"],
                                            "backbone": "timm:test_efficientnet"}  # fmt: skip
        assert rb.metrics == ra.metrics and set(rb.metrics) == {"val_top1", "val_top5", "val_loss"}
        # What later stages look the checkpoints up by (reference_artifact, load_run_model).
        assert (rb.kind, rb.stage, rb.precision, rb.path) == (
            "checkpoint",
            "finetune",
            "fp32",
            f"checkpoints/{name[11:]}.pt",
        )
    best = load_checkpoint(split / "checkpoints" / "best.pt")
    assert set(best) == {
        "model",
        "epoch",
        "backbone",
        "classes",
        "format",
        "version",
    }  # save_checkpoint adds the last two
    assert (
        (best["backbone"], best["classes"])
        == (a["backbone"], a["classes"])
        == ("timm:test_efficientnet", Run.open(split).get("classes"))
    )
    for key, value in best["model"].items():
        assert torch.equal(value, load_checkpoint(whole / "checkpoints" / "best.pt")["model"][key]), key
    assert Run.open(split).artifact("checkpoint-best").metrics["val_top1"] == a["best_top1"]
    assert _curves(split) == _curves(whole)


def _plateau_whole(tmp_path: Path, data: str):
    whole = tmp_path / "whole"
    result = finetune(FinetuneConfig(data=data, out=str(whole), **PLATEAU))
    # The scenario the resume tests rely on: best at epoch 1, stopped after 3 bad epochs.
    assert (result.best_epoch, result.epochs_run, result.stopped_early) == (1, 4, True)
    assert len({r.val_top1 for r in result.history}) == 1
    last = load_checkpoint(whole / "checkpoints" / "last.pt")
    assert (last["epoch"], last["best_epoch"], last["bad_epochs"]) == (4, 1, 3)
    assert last["best_summary"]["val_top1"] == result.best_val_top1 == Run.open(whole).get("metrics")["val_top1"]
    return whole, result


def test_resume_keeps_the_best_and_the_early_stopping_count(tmp_path: Path, tiny_digits: str, capsys) -> None:
    whole, whole_result = _plateau_whole(tmp_path, tiny_digits)
    split = tmp_path / "split"
    with pytest.raises(KeyboardInterrupt):
        finetune(FinetuneConfig(data=tiny_digits, out=str(split), **PLATEAU), callbacks=[_interrupt_after(2)])
    stopped = load_checkpoint(split / "checkpoints" / "last.pt")
    assert (stopped["epoch"], stopped["best_epoch"], stopped["bad_epochs"]) == (2, 1, 1)
    assert Run.open(split).get("training")["status"] == "running"
    capsys.readouterr()
    trained: list[int] = []
    resumed = finetune(FinetuneConfig(data=tiny_digits, out=str(split), resume=True, **{**PLATEAU, "quiet": False}),
                       callbacks=[lambda record: trained.append(record.epoch)])  # fmt: skip
    assert trained == [3, 4]  # continued, not started over
    _same_outcome(whole, split, whole_result, resumed)
    assert [r.epoch for r in resumed.history] == [1, 2, 3, 4]
    err = capsys.readouterr().err
    assert f"resuming {split} after epoch 2\n" in err and "epoch 3/6 [full]" in err and "epoch 2/6" not in err


def test_resume_after_a_kill_between_the_metrics_and_the_checkpoint_runs_that_epoch_once(
    tmp_path: Path, tiny_digits: str
) -> None:
    whole, whole_result = _plateau_whole(tmp_path, tiny_digits)
    split = tmp_path / "split"
    # metrics.jsonl has epochs 1-3, last.pt says epoch 2: epoch 3 runs again and is listed once.
    with pytest.raises(KeyboardInterrupt):
        finetune(FinetuneConfig(data=tiny_digits, out=str(split), **PLATEAU),
                 callbacks=[_interrupt_after(3, keep_last_of=2, out=split)])  # fmt: skip
    assert len(_curves(split)) == 3 and load_checkpoint(split / "checkpoints" / "last.pt")["epoch"] == 2
    resumed = finetune(FinetuneConfig(data=tiny_digits, out=str(split), resume=True, **PLATEAU))
    _same_outcome(whole, split, whole_result, resumed)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_resume_in_a_launched_world_keeps_the_best_and_the_count(tmp_path: Path, tiny_digits: str, monkeypatch) -> None:
    # The environment torchrun gives a world of one: the loop joins a gloo process group and
    # trains through the DDP wrapper, the path every multi-process run takes (the two-process
    # kill-and-resume test in test_train_ddp.py runs it for real, in subprocesses).
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    whole, whole_result = _plateau_whole(tmp_path, tiny_digits)
    assert Run.open(whole).get("training")["backend"] == "gloo"
    split = tmp_path / "split"
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    with pytest.raises(KeyboardInterrupt):
        finetune(FinetuneConfig(data=tiny_digits, out=str(split), **PLATEAU), callbacks=[_interrupt_after(2)])
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    trained: list[int] = []
    resumed = finetune(FinetuneConfig(data=tiny_digits, out=str(split), resume=True, **PLATEAU),
                       callbacks=[lambda record: trained.append(record.epoch)])  # fmt: skip
    assert trained == [3, 4]
    assert Run.open(split).get("training")["world_size"] == 1 and Run.open(split).get("training")["backend"] == "gloo"
    _same_outcome(whole, split, whole_result, resumed)


# --------------------------------------------------------------------------- which runs --resume continues


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it_again(tmp_path: Path, tiny_digits: str) -> None:
    settings = dict(PLATEAU, epochs=2, patience=0)
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        finetune(FinetuneConfig(data=tiny_digits, out=str(out), **settings), callbacks=[_interrupt_after(1)])
    (out / "checkpoints" / "last.pt").unlink()  # as if stopped during epoch 1
    with pytest.raises(ConfigError, match=r"already holds a run; pass --resume with the same options to continue it$"):
        finetune(FinetuneConfig(data=tiny_digits, out=str(out), **settings))
    result = finetune(FinetuneConfig(data=tiny_digits, out=str(out), resume=True, **settings))
    assert [r.epoch for r in result.history] == [1, 2] and [r["epoch"] for r in _curves(out)] == [1, 2]
    assert Run.open(out).get("training")["status"] == "complete"


def test_resume_refuses_a_finished_run_without_last_checkpoint_and_keeps_it(tmp_path: Path, tiny_digits: str) -> None:
    settings = dict(PLATEAU, epochs=1, patience=0)
    out = tmp_path / "r"
    finetune(FinetuneConfig(data=tiny_digits, out=str(out), **settings))
    with pytest.raises(ConfigError) as info:
        finetune(FinetuneConfig(data=tiny_digits, out=str(out), **settings))
    assert str(info.value) == f"{str(out)!r} already holds a run; choose another --out"
    with pytest.raises(ConfigError) as info:
        finetune(FinetuneConfig(data=tiny_digits, out=str(out), **{**settings, "lr": 0.5, "resume": True}))
    assert str(info.value) == (
        f"--resume must use the settings the run was started with; these differ (lr: {PLATEAU['lr']!r} -> 0.5). "
        "Repeat the original options, or start a new run with another --out."
    )
    (out / "checkpoints" / "last.pt").unlink()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(
        RunError, match=r"holds no interrupted run \(no checkpoints/last.pt\); drop --resume and choose another --out"
    ):
        finetune(FinetuneConfig(data=tiny_digits, out=str(out), resume=True, **settings))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_new_run_is_never_written_over_someone_elses_files(tmp_path: Path, tiny_digits: str) -> None:
    settings = dict(PLATEAU, epochs=1, patience=0)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    for name in ("split.json", "notes.txt", "a", "b"):
        (theirs / name).write_text(name)
    with pytest.raises(ConfigError) as info:
        finetune(FinetuneConfig(data=tiny_digits, out=str(theirs), **settings))
    assert str(info.value) == (
        f"--out {str(theirs)!r} exists and is not an empty directory (it holds a, b, notes.txt, ...); "
        "give a new one (nothing there is touched)"
    )
    assert {p.name: p.read_text() for p in theirs.iterdir()} == {n: n for n in ("split.json", "notes.txt", "a", "b")}
    (theirs / "a").unlink()
    with pytest.raises(ConfigError, match=r"\(it holds b, notes.txt, split.json\); give a new one"):  # three: no "..."
        finetune(FinetuneConfig(data=tiny_digits, out=str(theirs), **settings))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=r"^--out '.*file' exists and is not an empty directory; give a new one"):
        finetune(FinetuneConfig(data=tiny_digits, out=str(a_file), **settings))
    # An empty folder, or one holding only the launcher's config files, is a new run's place.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".launch-config.node0.json").write_text("{}")
    assert finetune(FinetuneConfig(data=tiny_digits, out=str(empty), **settings)).epochs_run == 1
    # So is one holding only what `edge-tl ship` put there first (its options, a run it moved
    # aside), which the new run leaves as it was; anything else there is still refused.
    shipped = tmp_path / "shipped"
    (shipped / "superseded" / "earlier").mkdir(parents=True)
    (shipped / "superseded" / "earlier" / "manifest.json").write_text("{}")
    (shipped / "ship.toml").write_text("epochs = 1\n")
    assert finetune(FinetuneConfig(data=tiny_digits, out=str(shipped), **settings)).epochs_run == 1
    assert (shipped / "ship.toml").read_text() == "epochs = 1\n"
    assert (shipped / "superseded" / "earlier" / "manifest.json").read_text() == "{}"
    (theirs / "ship.toml").write_text("x")
    with pytest.raises(ConfigError, match=r"\(it holds b, notes.txt, split.json\); give a new one"):
        finetune(FinetuneConfig(data=tiny_digits, out=str(theirs), **settings))


def test_resume_names_what_is_missing(tmp_path: Path, tiny_digits: str) -> None:
    settings = dict(PLATEAU, epochs=1, patience=0, resume=True)
    empty = tmp_path / "empty"
    with pytest.raises(RunError) as info:
        finetune(FinetuneConfig(data=tiny_digits, out=str(empty), **settings))
    assert (
        str(info.value)
        == f"--resume: {str(empty)!r} holds no interrupted run (no manifest); drop --resume to start a new run there"
    )
    finished = tmp_path / "finished"
    finetune(FinetuneConfig(data=tiny_digits, out=str(finished), **{**settings, "resume": False}))
    (finished / "checkpoints" / "last.pt").unlink()
    with pytest.raises(RunError) as info:
        finetune(FinetuneConfig(data=tiny_digits, out=str(finished), **settings))
    assert str(info.value) == (f"--resume: {str(finished)!r} holds no interrupted run (no checkpoints/last.pt); "
                               "drop --resume and choose another --out")  # fmt: skip
    imported = tmp_path / "imported"
    Run.create(imported, backbone={"name": "timm:test_efficientnet"})  # a run finetune did not make
    with pytest.raises(RunError) as info:
        finetune(FinetuneConfig(data=tiny_digits, out=str(imported), **settings))
    assert str(info.value).startswith(
        f"the manifest of {str(imported.resolve())!r} has no 'training' section, which --resume needs."
    )
