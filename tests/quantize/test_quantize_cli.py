"""`edge-tl quantize`: help, the default CPU recipe end to end, FP16 through the same command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from edge_tl.runs import Run


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    # One OpenMP thread: on a shared CI machine PyTorch's spin-waiting threads (export's
    # parity reference) are many times slower than one.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "edge_tl", "quantize", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )


def test_help_lists_the_options() -> None:
    out = _cli("--help")
    assert out.returncode == 0
    for option in (
        "--precision",
        "--recipe",
        "--target",
        "--calib-method",
        "--calib-samples",
        "--calib-data",
        "--max-accuracy-drop",
        "--threads",
    ):
        assert option in out.stdout


def test_default_cpu_recipe_keeps_accuracy(run_copy: Path) -> None:
    out = _cli(str(run_copy), "--calib-samples", "128", "--threads", "1")
    assert out.returncode == 0, out.stderr
    assert "recorded onnx-int8-onnxruntime-cpu-int8" in out.stdout
    assert "recorded calib-table-onnxruntime-cpu-int8" in out.stdout
    run = Run.open(run_copy)
    record = run.artifact("onnx-int8-onnxruntime-cpu-int8")
    assert record.path == "quantize/onnxruntime-cpu-int8/model.int8.onnx" and record.precision == "int8"
    assert record.metrics["accuracy_drop_points"] <= 0.5  # the done-when bound of the CPU recipe
    assert record.details["recipe"]["activations"]["dtype"] == "uint8"
    assert record.details["calibration"]["num_samples"] == 128
    table = json.loads(run.artifact_path("calib-table-onnxruntime-cpu-int8").read_text())
    assert table["calibration"]["method"] == "minmax" and "input" in table["tensors"]
    # ONNX Runtime's own Q/DQ breaks TensorRT's rules, and the rule checker says so.
    onnx = pytest.importorskip("onnx")
    from edge_tl.quantize.qdq_tensorrt import check_tensorrt_qdq

    problems = check_tensorrt_qdq(onnx.load(str(run.artifact_path(record.name))))
    assert any("zero point" in p for p in problems)  # uint8 activations with a zero point
    assert any("bias" in p for p in problems) and any("feeds" in p for p in problems)


def test_calib_data_folder_and_user_errors(run_copy: Path, tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "calib"
    for label in ("3", "7"):
        (folder / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), color=(i * 40, 0, 255 - i * 40)).save(folder / label / f"{i}.png")
    out = _cli(
        str(run_copy),
        "--recipe",
        "tensorrt-int8-cache",
        "--calib-data",
        str(folder),
        "--calib-samples",
        "4",
        "--threads",
        "1",
    )
    assert out.returncode == 0, out.stderr
    table = json.loads(Run.open(run_copy).artifact_path("calib-table-tensorrt-int8-cache").read_text())
    assert table["calibration"]["data"] == str(folder) and table["calibration"]["num_samples"] == 4
    bad = _cli(str(run_copy), "--recipe", "no-such-recipe")
    assert bad.returncode == 1 and "unknown recipe 'no-such-recipe'" in bad.stderr


def test_fp16_through_quantize_when_export_did_not_make_it(run_copy: Path) -> None:
    assert not Run.open(run_copy).has_artifact("onnx-fp16")
    out = _cli(str(run_copy), "--precision", "fp16", "--quiet")
    assert out.returncode == 0, out.stderr
    run = Run.open(run_copy)
    record = run.artifact("onnx-fp16")
    assert record.stage == "export" and record.precision == "fp16"
    again = _cli(str(run_copy), "--precision", "fp16")
    assert again.returncode == 0 and "already" in again.stdout + again.stderr


def test_target_without_fast_int8_is_refused_before_any_work(run_copy: Path) -> None:
    out = _cli(str(run_copy), "--target", "jetson-nano")
    assert out.returncode == 1 and "no fast INT8" in out.stderr and "fp16" in out.stderr
    assert not (run_copy / "quantize").exists()
