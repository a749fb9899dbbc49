"""verify_run: rows for the original and every onnx/engine artifact, reports, gates, deploy rows, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

from edge_tl.bench import BenchConfig, Budget
from edge_tl.cli.main import main
from edge_tl.errors import ConfigError, ToleranceError
from edge_tl.export import ExportConfig, export_run
from edge_tl.runs import Run
from edge_tl.verify import AccuracyAccumulator, AgreementAccumulator, VerifyConfig, verify_run

IMAGES = 40
QUICK = BenchConfig(batch_sizes=(1,), warmup=Budget(iterations=2), measure=Budget(iterations=10))


@pytest.fixture(scope="module")
def exported_run(digits_run, tmp_path_factory) -> Path:
    root = Path(shutil.copytree(digits_run, tmp_path_factory.mktemp("verify-run") / "run"))
    export_run(root, config=ExportConfig(parity_images=32))
    return root


@pytest.fixture()
def run_dir(exported_run, tmp_path) -> Path:
    return Path(shutil.copytree(exported_run, tmp_path / "run"))


def test_metrics_accumulators_on_known_logits() -> None:
    acc = AccuracyAccumulator()
    logits = np.array([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    acc.update(logits[:1], np.array([0]))
    acc.update(logits[1:], np.array([0]))  # label ranked last
    result = acc.result()
    assert (result.num_images, result.top1, result.top5) == (2, 0.5, 0.5)
    agree = AgreementAccumulator(atol=0.1, rtol=0.0)
    agree.update(logits, logits + np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 2.0]]))
    a = agree.result()
    assert a.top1_agreement == 1.0 and a.max_abs_diff == 2.0 and a.num_outside_tolerance == 1
    assert a.mean_abs_diff == pytest.approx(2.0 / 12)
    assert a.mean_kl > 0
    same = AgreementAccumulator()
    same.update(logits, logits)
    assert same.result().mean_kl == 0.0 and same.result().max_abs_diff == 0.0
    assert AccuracyAccumulator().result().num_images == 0
    three = AccuracyAccumulator()
    three.update(np.eye(3), np.arange(3))
    assert three.result().top5 is None  # fewer than five classes


def test_verify_lists_original_and_both_onnx_with_every_column(run_dir: Path) -> None:
    report = verify_run(run_dir, config=VerifyConfig(max_images=IMAGES, latency=QUICK, device="cpu", threads=1))
    assert [r.name for r in report.rows] == ["checkpoint-best", "onnx-fp32", "onnx-fp16"]
    ref = report.row("checkpoint-best")
    # the shared digits model reaches about 0.98; 40 images of 10 classes
    assert ref.top1 >= 0.9
    for r in report.rows:
        assert r.num_images == IMAGES and r.skipped is None and r.latency_batch == 1
        assert r.top1 == pytest.approx(ref.top1 + r.delta_top1_pts / 100) and r.top1 <= r.top5 <= 1.0
        assert 0 < r.latency_p50_ms <= r.latency_p99_ms
        assert r.speedup == pytest.approx(ref.latency_p50_ms / r.latency_p50_ms)
        assert r.size_bytes > 100_000  # efficientnet_lite0's weights, in FP16 or FP32
    assert (ref.delta_top1_pts, ref.top1_agreement, ref.mean_kl, ref.max_abs_diff, ref.speedup) == (
        0.0,
        1.0,
        0.0,
        0.0,
        1.0,
    )
    fp32, fp16 = report.row("onnx-fp32"), report.row("onnx-fp16")
    assert fp32.max_abs_diff <= 1e-4 and fp32.top1_agreement == 1.0 and fp32.delta_top1_pts == 0.0
    assert 0 <= fp32.mean_kl < 1e-8  # the same model up to float rounding
    assert fp16.top1_agreement >= 0.95 and 0 < fp16.max_abs_diff < 0.5 and 0 <= fp16.mean_kl < 1e-3
    assert fp16.size_bytes < 0.6 * fp32.size_bytes  # half-precision weights
    assert fp32.size_bytes == (run_dir / Run.open(run_dir).artifact("onnx-fp32").path).stat().st_size
    for name in ("report.md", "report.json", "report.png"):
        assert (run_dir / "verify" / name).stat().st_size > 0
    assert (run_dir / "verify" / "report.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((run_dir / "verify" / "report.json").read_text())
    assert data["passed"] is True and len(data["rows"]) == 3 and data["environment"]["cpu_model"]
    md = (run_dir / "verify" / "report.md").read_text()
    assert "| onnx-fp16 |" in md and "Δ top-1 pts" in md
    assert Run.open(run_dir).artifact("verify-report").path == "verify/report.json"


def test_new_kinds_plug_in_and_gates_name_the_failing_artifact(run_dir: Path) -> None:
    """An INT8-named ONNX (another model, so it disagrees) runs by kind; an engine without TensorRT is skipped."""
    import torch

    from edge_tl.export.onnx_export import export_torch_to_onnx
    from edge_tl.export.static_padding import make_same_padding_static
    from edge_tl.models import Weights, WeightsSource, build_model

    size = Run.open(run_dir).get("preprocessing")["input_size"]
    torch.manual_seed(123)
    other = build_model("efficientnet_lite0", 10, weights=Weights(WeightsSource.NONE)).eval()
    make_same_padding_static(other, size)
    int8 = run_dir / "quantize" / "demo" / "model.int8.onnx"
    int8.parent.mkdir(parents=True)
    export_torch_to_onnx(other, int8, input_size=size)
    run = Run.open(run_dir)
    run.add_artifact("onnx-int8-demo", kind="onnx", path=int8, stage="quantize", precision="int8")
    engine = run_dir / "compile" / "orin-int8" / "model.engine"
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"not a real engine")
    run.add_artifact("engine-orin-int8", kind="engine", path=engine, stage="compile", precision="int8")

    config = VerifyConfig(max_images=IMAGES, measure_latency=False, min_agreement=0.95, max_accuracy_drop=100.0)
    with pytest.raises(ToleranceError) as info:
        verify_run(run_dir, config=config)
    message = str(info.value)
    assert "onnx-int8-demo: top-1 agreement" in message
    assert "onnx-fp32" not in message
    data = json.loads((run_dir / "verify" / "report.json").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert rows["onnx-int8-demo"]["top1_agreement"] < 0.95 and rows["onnx-int8-demo"]["precision"] == "int8"
    assert rows["engine-orin-int8"]["skipped"]
    assert data["passed"] is False


def test_an_engine_whose_layers_are_not_its_precision_warns_and_fails_the_gate(run_dir: Path) -> None:
    """The engine's own layer report (compile's layer_report) is judged: noted without a gate, failed with one."""
    engine = run_dir / "compile" / "ada-int8" / "model.engine"
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"not a real engine")
    finding = "84.2% of the Conv/Gemm/MatMul macs run FP32 in a INT8 engine (limit 5%)"
    Run.open(run_dir).add_artifact(
        "engine-ada-int8",
        kind="engine",
        path=engine,
        stage="compile",
        precision="int8",
        details={"layer_report": {"findings": [finding], "compute_macs": {"int8": 27648, "fp32": 147456}}},
    )
    said: list[str] = []
    report = verify_run(run_dir, config=VerifyConfig(max_images=IMAGES, measure_latency=False), progress=said.append)
    assert report.failures == () and f"engine layers: engine-ada-int8: {finding}" in report.notes
    assert f"WARNING: engine-ada-int8: {finding}" in said
    with pytest.raises(ToleranceError, match="engine-ada-int8: 84.2% of the Conv/Gemm/MatMul macs run FP32"):
        verify_run(run_dir, config=VerifyConfig(max_images=IMAGES, measure_latency=False, max_accuracy_drop=100.0))


def test_deploy_results_become_rows_and_are_gated(run_dir: Path) -> None:
    host = run_dir / "deploy" / "jetson-1"
    host.mkdir(parents=True)
    (host / "accuracy.json").write_text(
        json.dumps(
            {
                "host": "jetson-1",
                "results": [
                    {
                        "artifact": "engine-orin-fp16",
                        "kind": "engine",
                        "precision": "fp16",
                        "backend": "tensorrt",
                        "num_images": IMAGES,
                        "top1": 0.0,
                        "top5": 0.1,
                        "top1_agreement": 0.99,
                        "reference_top1": 0.75,
                        "latency_ms": {"p50": 0.8, "p99": 1.1, "batch_size": 1},
                        "layer_report": {"findings": ["2 layer(s) fell back to the GPU that the plan did not predict"]},
                    }
                ],
            }
        )
    )
    config = VerifyConfig(max_images=IMAGES, measure_latency=False, max_accuracy_drop=0.5)
    report = verify_run(run_dir, config=config, check=False)
    row = report.rows[-1]
    assert (row.name, row.origin, row.latency_p50_ms) == ("engine-orin-fp16", "deploy:jetson-1", 0.8)
    assert row.delta_top1_pts == pytest.approx(-75.0)  # against the original on the device's own images
    assert any("engine-orin-fp16 @ jetson-1: top-1 drop" in f for f in report.failures)
    # The device-built engine's own layer report is gated too.
    assert "engine-orin-fp16 @ jetson-1: 2 layer(s) fell back to the GPU that the plan did not predict" in (
        report.failures
    )
    with pytest.raises(ToleranceError, match="engine-orin-fp16 @ jetson-1"):
        report.raise_for_gates()
    assert "jetson-1" in report.table()


def test_gate_values_are_checked() -> None:
    with pytest.raises(ConfigError, match="fraction"):
        VerifyConfig(min_agreement=99.0)
    with pytest.raises(ConfigError, match="points"):
        VerifyConfig(max_accuracy_drop=-1.0)


def test_cli_verify_exit_codes(run_dir: Path, capsys) -> None:
    args = [
        "verify",
        str(run_dir),
        "--max-images",
        "16",
        "--latency-iterations",
        "5",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--quiet",
    ]
    with pytest.raises(SystemExit) as info:
        main(args + ["--min-agreement", "0.5"])
    assert info.value.code == 0
    assert "onnx-fp16" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(args + ["--no-latency", "--artifact", "onnx-fp32", "--max-accuracy-drop", "0"])
    assert info.value.code == 0
    rows = json.loads((run_dir / "verify" / "report.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["checkpoint-best", "onnx-fp32"]


def test_cli_max_accuracy_drop_exit_codes(run_dir: Path, capsys) -> None:
    """A device row 75 points below the original: a budget of 75 holds (the drop must exceed it), 74.9 fails."""
    host = run_dir / "deploy" / "jetson-1"
    host.mkdir(parents=True)
    (host / "accuracy.json").write_text(
        json.dumps(
            {
                "host": "jetson-1",
                "results": [
                    {
                        "artifact": "engine-orin-fp16",
                        "kind": "engine",
                        "precision": "fp16",
                        "backend": "tensorrt",
                        "num_images": 8,
                        "top1": 0.0,
                        "top5": 0.5,
                        "top1_agreement": 1.0,
                        "reference_top1": 0.75,
                        "latency_ms": {"p50": 0.8, "p99": 1.1, "batch_size": 1},
                    }
                ],
            }
        )
    )
    args = ["verify", str(run_dir), "--max-images", "8", "--no-latency", "--artifact", "onnx-fp32", "--quiet"]
    with pytest.raises(SystemExit) as info:
        main(args + ["--max-accuracy-drop", "75"])
    assert info.value.code == 0, capsys.readouterr().err
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(args + ["--max-accuracy-drop", "74.9"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "engine-orin-fp16 @ jetson-1: top-1 drop 75.00 pts > --max-accuracy-drop 74.9" in err
    assert "onnx-fp32" not in err.split("engine-orin-fp16", 1)[0]  # the gate names only the failing row
    assert json.loads((run_dir / "verify" / "report.json").read_text())["passed"] is False
    with pytest.raises(SystemExit) as info:
        main(args + ["--max-accuracy-drop", "-1"])
    assert info.value.code == 1 and "--max-accuracy-drop is in points and >= 0, got -1" in capsys.readouterr().err


def test_cli_bench_on_a_run_artifact(run_dir: Path, capsys) -> None:
    out = run_dir / "bench.json"
    with pytest.raises(SystemExit) as info:
        main(
            [
                "bench",
                str(run_dir),
                "--artifact",
                "onnx-fp32",
                "--batch-size",
                "1,2",
                "--warmup",
                "2",
                "--iterations",
                "5",
                "--threads",
                "1",
                "--json",
                str(out),
            ]
        )
    assert info.value.code == 0
    data = json.loads(out.read_text())
    assert [(r["batch_size"], r["iterations"]) for r in data["results"]] == [(1, 5), (2, 5)]
    assert data["runner"]["backend"] == "onnxruntime" and data["runner"]["threads"] == 1
    assert data["environment"]["threads_requested"] == 1
    assert "p99" in capsys.readouterr().out
