"""--max-accuracy-drop on a real trained model: a deliberately harsh recipe forces float layers."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from edge_tl.errors import ToleranceError
from edge_tl.quantize import QuantizeConfig, quantize_run
from edge_tl.quantize.qdq_tensorrt import check_tensorrt_qdq
from edge_tl.runs import Run

SHIPPED = Path(__file__).resolve().parents[2] / "calibration" / "tensorrt-int8-qdq.toml"


@pytest.fixture()
def harsh_recipe(tmp_path: Path) -> Path:
    """TensorRT placement with activations clipped at the 99th percentile: far too tight."""
    text = SHIPPED.read_text()
    assert 'name = "tensorrt-int8-qdq"' in text and "percentile = 99.99" in text
    path = tmp_path / "harsh.toml"
    path.write_text(
        text.replace('name = "tensorrt-int8-qdq"', 'name = "harsh"').replace("percentile = 99.99", "percentile = 99.0")
    )
    return path


def test_tight_budget_returns_the_most_sensitive_layers_to_float(run_copy: Path, harsh_recipe: Path) -> None:
    onnx = pytest.importorskip("onnx")
    budget = 2.0
    result = quantize_run(
        run_copy,
        config=QuantizeConfig(
            recipe=str(harsh_recipe),
            calib_samples=64,
            max_accuracy_drop=budget,
            max_float_layers=8,
            sensitivity_images=32,
            latency_iterations=10,
            threads=1,
        ),
    )
    first, *rest = result.attempts
    assert first.float_layers == () and first.drop_points > budget  # the harsh recipe needs help
    assert result.budget_met is True and result.drop_points <= budget
    assert result.drop_points == pytest.approx((result.reference_top1 - result.top1) * 100)
    # Float layers: the most sensitive first, added one at a time, stopping at the first attempt within budget.
    ranked = [name for name, _ in result.sensitivity]
    k = len(result.float_layers)
    assert k >= 1 and list(result.float_layers) == ranked[:k]
    assert [a.float_layers for a in rest] == [tuple(ranked[:i]) for i in range(1, k + 1)]
    assert all(a.drop_points > budget for a in result.attempts[:-1])
    scores = [score for _, score in result.sensitivity]
    assert scores == sorted(scores) and len(ranked) == 50  # every Conv/Gemm of efficientnet_lite0

    run = Run.open(run_copy)
    record = run.artifact("onnx-int8-harsh")
    assert record.details["float_layers"] == list(result.float_layers) and record.details["status"] == "passing"
    assert record.metrics["accuracy_budget_met"] is True
    assert record.metrics["accuracy_drop_points"] == pytest.approx(result.drop_points)
    assert record.metrics["max_accuracy_drop_points"] == budget
    assert len(record.metrics["attempts"]) == k + 1
    latency = record.metrics["latency_p50_ms_onnxruntime_cpu_b1"]
    assert set(latency) == {"fp32", "int8_all_layers", "int8_final"} and all(v > 0 for v in latency.values())
    assert record.metrics["latency_cost_of_float_layers"] == pytest.approx(
        latency["int8_final"] / latency["int8_all_layers"]
    )
    # The file holds exactly that: the float layers read float inputs, all others stay quantized.
    model = onnx.load(str(run.artifact_path("onnx-int8-harsh")))
    assert check_tensorrt_qdq(model, float_layers=result.float_layers) == []


def test_budget_never_met_keeps_the_best_attempt_labelled_failing(run_copy: Path, harsh_recipe: Path) -> None:
    with pytest.raises(ToleranceError) as info:
        quantize_run(
            run_copy,
            config=QuantizeConfig(
                recipe=str(harsh_recipe),
                calib_samples=32,
                max_accuracy_drop=0.5,
                max_float_layers=0,
                latency_iterations=10,
                threads=1,
            ),
        )
    message = str(info.value)
    assert "--max-accuracy-drop 0.5" in message and "failing" in message
    record = Run.open(run_copy).artifact("onnx-int8-harsh")
    assert record.details["status"] == "failing" and record.metrics["accuracy_budget_met"] is False
    assert record.metrics["accuracy_drop_points"] > 0.5
    assert (run_copy / record.path).is_file()


def test_cli_exit_codes_follow_the_budget(run_copy: Path, harsh_recipe: Path, capsys) -> None:
    from edge_tl.cli.main import main

    args = [
        "quantize",
        str(run_copy),
        "--recipe",
        str(harsh_recipe),
        "--calib-samples",
        "32",
        "--max-float-layers",
        "0",
        "--threads",
        "1",
        "--quiet",
    ]
    with pytest.raises(SystemExit) as info:
        main([*args, "--max-accuracy-drop", "0.5"])
    assert info.value.code == 1
    assert "could not meet --max-accuracy-drop 0.5 pt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([*args, "--max-accuracy-drop", "100"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "recorded onnx-int8-harsh" in out and "(budget 100 pt)" in out
    assert Run.open(run_copy).artifact("onnx-int8-harsh").details["status"] == "passing"
    with pytest.raises(SystemExit) as info:
        main([*args, "--max-accuracy-drop", "-1"])
    assert info.value.code == 2 and "--max-accuracy-drop" in capsys.readouterr().err  # a usage error, before any work
