"""Strongly typed TensorRT builds read an ONNX whose float part is FP16 (walked, run and verified here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_tl.compile import CompileRequest, make_plan
from edge_tl.runs import Run
from edge_tl.targets import Precision, load_target


def test_strongly_typed_plans_build_from_an_fp16_float_part_that_verify_measures(run_copy: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from edge_tl.quantize import QuantizeConfig, quantize_run
    from edge_tl.quantize.fp16_float import fp32_compute
    from edge_tl.verify.api import VerifyConfig, verify_run

    quantize_run(run_copy, config=QuantizeConfig(recipe="tensorrt-int8-qdq", calib_samples=64, threads=1, max_accuracy_drop=0.5))
    run = Run.open(run_copy)
    # TensorRT 11 is always strongly typed and has no --fp16/--int8/--best/--calib (absent from release/11.0
    # samples/common/sampleOptions.cpp); both 11.x targets build from the FP16-float-part ONNX.
    for target in ("jetson-agx-thor", "jetson-agx-orin-64gb"):
        plan = make_plan(run, load_target(target), CompileRequest(precision=Precision.INT8, tensorrt="11.4.1"))
        assert plan.source.onnx.name == "onnx-int8-tensorrt-int8-qdq-fp16"
        assert "--stronglyTyped" in plan.argv
        assert not [a for a in plan.argv if a.split("=")[0] in ("--fp16", "--int8", "--best", "--calib")]
        model = onnx.load(str(run.path(plan.spec.onnx)))
        record = run.artifact(plan.source.onnx.name)
        kept = record.details["kept_fp32"]
        # only the graph I/O stays float32, each recorded with why
        assert set(kept) == {"input", "logits"} and all(kept.values())
        assert fp32_compute(model, allowed=kept) == []
        ops = {n.op_type for n in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Add", "GlobalAveragePool"} <= ops
        assert sum(n.op_type == "Cast" for n in model.graph.node) == 2
    # the FP32-float Q/DQ model walks as FP32 outside its Q/DQ pairs: what a strongly typed build must not get
    assert fp32_compute(onnx.load(str(run.artifact_path("onnx-int8-tensorrt-int8-qdq"))), allowed=("input", "logits"))
    # 10.x is built weakly typed (--int8 --fp16) from the FP32-float Q/DQ model (docs/quantization.md says why)
    ten = make_plan(run, load_target("jetson-agx-orin-64gb"), CompileRequest(precision=Precision.INT8))
    assert ten.source.onnx.name == "onnx-int8-tensorrt-int8-qdq" and {"--int8", "--fp16"} <= set(ten.argv)

    report = verify_run(run_copy, config=VerifyConfig(artifacts=("onnx-int8-tensorrt-int8-qdq-fp16",), measure_latency=False,
                                                      threads=1), check=False)
    row = next(r for r in report.rows if r.name == "onnx-int8-tensorrt-int8-qdq-fp16")
    assert row.backend == "onnxruntime" and row.num_images > 0 and row.top1 is not None
    assert abs(row.delta_top1_pts) <= 0.5, f"FP16 float part moved top-1 by {row.delta_top1_pts:.2f} pt"
    assert record.metrics["val_top1"] == pytest.approx(row.top1)
