"""`edge-tl finetune` / `edge-tl evaluate` as a user runs them, and their errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from edge_tl.cli.main import main  # noqa: E402
from edge_tl.runs import Run  # noqa: E402


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_finetune_mobilenet_v3_large_from_scratch_runs(tmp_path: Path, digit_folder, capsys) -> None:
    out = tmp_path / "r"
    code, stdout, err = _cli(
        capsys,
        "finetune",
        "--data",
        str(digit_folder(per_class=10)),
        "--backbone",
        "mobilenet_v3_large",
        "--no-pretrained",
        "--epochs",
        "1",
        "--freeze-epochs",
        "0",
        "--img-size",
        "32",
        "--batch-size",
        "20",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert "epoch 1/1 [full]" in err and "img/s" in err  # progress and per-epoch lines go to stderr
    assert f"run: {out}" in stdout
    run = Run.open(out)
    assert run.get("backbone")["name"] == "mobilenet_v3_large" and run.get("backbone")["weights"] == "none"
    assert run.get("training")["config"]["hflip"] is None
    # The recorded top-1 is the epoch's, the printed one is the recorded one, and it counts whole images.
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    top1, n_val = run.get("metrics")["val_top1"], run.get("data")["num_val"]
    assert len(history) == 1 and top1 == history[0]["val_top1"] and f"best validation top-1 {top1:.4f}" in stdout
    assert top1 * n_val == pytest.approx(round(top1 * n_val)) and 0 <= round(top1 * n_val) <= n_val
    assert run.has_artifact("checkpoint-best") and run.has_artifact("checkpoint-last")


def test_quiet_prints_nothing(tmp_path: Path, digit_folder, capsys) -> None:
    code, stdout, err = _cli(
        capsys,
        "finetune",
        "--data",
        str(digit_folder(per_class=10)),
        "--backbone",
        "timm:test_efficientnet",
        "--no-pretrained",
        "--epochs",
        "1",
        "--img-size",
        "32",
        "--out",
        str(tmp_path / "r"),
        "--quiet",
    )
    assert code == 0 and stdout == "" and "img/s" not in err


def test_evaluate_writes_metrics_and_confusion_matrix(digits_run: Path, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(digits_run, run_dir)
    code, stdout, err = _cli(capsys, "evaluate", str(run_dir))
    assert code == 0, err
    assert "top-1" in stdout and "top-5" in stdout
    run = Run.open(run_dir)
    evaluation = run.get("evaluation")
    metrics = json.loads((run_dir / evaluation["metrics"]).read_text())
    matrix = json.loads((run_dir / evaluation["confusion_matrix"]).read_text())
    n_val = run.get("data")["num_val"]
    assert metrics["num_val"] == n_val == sum(map(sum, matrix["matrix"]))
    assert matrix["classes"] == run.get("classes")
    diagonal = sum(matrix["matrix"][i][i] for i in range(10))
    assert metrics["top1"] == pytest.approx(diagonal / n_val)
    # The same preprocessing and weights as the validation during training (batching may
    # change the last bits of a logit, so allow one image of difference).
    assert abs(metrics["top1"] - run.get("metrics")["val_top1"]) <= 1 / n_val
    assert metrics["top5"] >= metrics["top1"] >= 0.9
    for digit, accuracy in metrics["per_class_accuracy"].items():
        row = matrix["matrix"][int(digit)]
        assert accuracy == pytest.approx(row[int(digit)] / sum(row))
    png = (run_dir / evaluation["confusion_matrix_png"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_evaluate_omits_top5_below_five_classes(tmp_path: Path, digit_folder) -> None:
    from edge_tl.train import FinetuneConfig, evaluate_run, finetune

    out = tmp_path / "r"
    finetune(
        FinetuneConfig(
            data=str(digit_folder(per_class=10, classes=3)),
            out=str(out),
            backbone="timm:test_efficientnet",
            weights="none",
            img_size=32,
            epochs=1,
            quiet=True,
        )
    )
    assert Run.open(out).get("metrics")["val_top5"] is None
    report = evaluate_run(out)
    assert report.result.top5 is None and len(report.result.per_class) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--data", "digits", "--backbone", "efficientnet_lite00"],
            "unknown backbone 'efficientnet_lite00'. Did you mean: efficientnet_lite0",
        ),
        (["--data", "/nonexistent/images"], "data directory '/nonexistent/images' does not exist"),
        (
            ["--data", "digits", "--freeze-epochs", "9", "--epochs", "2"],
            "--freeze-epochs must be between 0 and --epochs (2)",
        ),
        (["--data", "digits", "--weights", "/nonexistent/w.pt"], "--weights '/nonexistent/w.pt' is neither"),
    ],
)
def test_finetune_errors_are_one_clear_line(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    code, _, err = _cli(capsys, "finetune", "--out", str(tmp_path / "r"), "--quiet", *args)
    assert code == 1
    assert err.startswith("Error: ") and message in err and "Traceback" not in err


def test_evaluate_error_on_a_non_run(tmp_path: Path, capsys) -> None:
    code, _, err = _cli(capsys, "evaluate", str(tmp_path))
    assert code == 1 and "not an edge-tl run directory" in err


def test_issue_done_when_command_reaches_095(tmp_path: Path, capsys) -> None:
    # The foundation issue's acceptance command, verbatim (about 20 s on 2 idle cores).
    out = tmp_path / "R"
    code, _, err = _cli(
        capsys,
        "finetune",
        "--data",
        "digits",
        "--backbone",
        "efficientnet_lite0",
        "--epochs",
        "2",
        "--img-size",
        "64",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["metrics"]["val_top1"] >= 0.95


def test_finetune_refuses_to_overwrite_an_existing_run(tmp_path: Path, capsys) -> None:
    """The CLI's safety default: an --out that holds a run is never written over (--resume must be asked for)."""
    out = tmp_path / "r"
    run = Run.create(out, classes=["a", "b"], training={"config": {}, "status": "complete"})
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "best.pt").write_bytes(b"hours of work")
    before = (out / "manifest.json").read_bytes()
    code, _, err = _cli(capsys, "finetune", "--data", "digits", "--out", str(out), "--quiet", "--epochs", "1",
                        "--freeze-epochs", "0", "--backbone", "timm:test_efficientnet", "--no-pretrained")  # fmt: skip
    assert code == 1 and "already holds a run; choose another --out" in err and "Traceback" not in err
    assert (out / "manifest.json").read_bytes() == before
    assert (out / "checkpoints" / "best.pt").read_bytes() == b"hours of work" and run.get("classes") == ["a", "b"]
