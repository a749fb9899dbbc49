"""export_run on the shared trained digits run: records, parity numbers, refusal, static batch, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edge_tl.cli.main import main
from edge_tl.errors import ToleranceError
from edge_tl.export import ExportConfig, ParityTolerance, Precision, export_run
from edge_tl.runs import Run, sha256_file
from edge_tl.runtime import Device, RunnerOptions, open_runner

PARITY_IMAGES = 48


@pytest.fixture()
def run_dir(digits_run, tmp_path) -> Path:
    return Path(shutil.copytree(digits_run, tmp_path / "run"))


def _size(run_dir: Path) -> int:
    return Run.open(run_dir).get("preprocessing")["input_size"]


def _onnx_records(run_dir: Path) -> dict:
    return {k: v for k, v in Run.open(run_dir).manifest["artifacts"].items() if v["kind"] == "onnx"}


def test_export_records_both_precisions_with_parity(run_dir: Path) -> None:
    result = export_run(run_dir, config=ExportConfig(parity_images=PARITY_IMAGES))
    assert result.static_padding_layers == 5
    run = Run.open(run_dir)
    fp32, fp16 = run.artifact("onnx-fp32"), run.artifact("onnx-fp16")
    assert (fp32.path, fp16.path) == ("export/model.fp32.onnx", "export/model.fp16.onnx")
    assert fp32.sha256 == sha256_file(run_dir / fp32.path)
    for art, precision in ((fp32, "fp32"), (fp16, "fp16")):
        assert art.kind == "onnx" and art.stage == "export" and art.precision == precision
        d = art.details
        assert (d["input_name"], d["output_name"], d["opset"], d["dynamic_batch"]) == ("input", "logits", 17, True)
        assert d["input_shape"] == ["batch", 3, _size(run_dir), _size(run_dir)]
        assert d["input_dtype"] == "float32" and d["output_dtype"] == "float32"
        assert set(d["ops"]) <= {"Conv", "Clip", "Add", "GlobalAveragePool", "Flatten", "Gemm", "Cast"}
        assert art.metrics["parity_num_images"] == PARITY_IMAGES
    assert fp32.details["source"] == "checkpoint-best" and fp16.details["source"] == "onnx-fp32"
    assert fp32.metrics["parity_max_abs_diff"] <= 1e-4
    assert fp32.metrics["parity_top1_agreement"] == 1.0
    assert fp16.metrics["parity_top1_agreement"] >= 0.98
    assert fp16.metrics["parity_tolerance"] == {"atol": None, "rtol": 0.0, "min_agreement": 0.98}
    assert fp32.metrics["parity_val_top1"] >= 0.9  # the trained digits model
    # no temporary files left behind
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["model.fp16.onnx", "model.fp32.onnx"]


def test_failed_parity_writes_and_records_nothing(run_dir: Path) -> None:
    impossible = ParityTolerance(atol=1e-12, rtol=0.0, min_agreement=1.0)
    config = ExportConfig(precisions=(Precision.FP32,), parity_images=16, fp32_tolerance=impossible)
    with pytest.raises(ToleranceError, match=r"onnx-fp32.*max abs diff .*agreement"):
        export_run(run_dir, config=config)
    assert _onnx_records(run_dir) == {}
    assert list((run_dir / "export").iterdir()) == []


def test_a_refused_fp16_keeps_the_good_fp32(run_dir: Path) -> None:
    strict16 = ParityTolerance(atol=1e-9, rtol=0.0, min_agreement=0.0)
    with pytest.raises(ToleranceError, match="refused onnx-fp16") as info:
        export_run(run_dir, config=ExportConfig(parity_images=16, fp16_tolerance=strict16))
    assert "Recorded: onnx-fp32" in str(info.value)
    assert set(_onnx_records(run_dir)) == {"onnx-fp32"}
    assert not (run_dir / "export" / "model.fp16.onnx").exists()


def test_static_batch_export_runs_in_fixed_chunks(run_dir: Path) -> None:
    export_run(
        run_dir, config=ExportConfig(precisions=(Precision.FP32,), dynamic_batch=False, batch_size=4, parity_images=10)
    )
    art = Run.open(run_dir).artifact("onnx-fp32")
    size = _size(run_dir)
    assert art.details["input_shape"] == [4, 3, size, size] and art.details["dynamic_batch"] is False
    assert art.metrics["parity_num_images"] == 10  # 10 images through a batch-4 model: padded last chunk
    with open_runner(run_dir, artifact="onnx-fp32", options=RunnerOptions(device=Device.CPU)) as runner:
        assert runner.input_spec.batch == 4
        assert runner.run(np.zeros((3, 3, size, size), dtype=np.float32)).shape == (3, 10)


def test_cli_export_and_its_refusal(run_dir: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(run_dir), "--precision", "fp32", "--parity-images", "16", "--quiet"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "onnx-fp32" in out and "top-1 agreement 100.00%" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(run_dir), "--precision", "fp16", "--parity-images", "16", "--min-agreement-fp16", "1.5"])
    assert exit_info.value.code == 1
    assert "min_agreement" in capsys.readouterr().err
    record = json.loads((run_dir / "manifest.json").read_text())["artifacts"]
    assert set(k for k, v in record.items() if v["kind"] == "onnx") == {"onnx-fp32"}
