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

    quantize_run(
        run_copy, config=QuantizeConfig(recipe="tensorrt-int8-qdq", calib_samples=64, threads=1, max_accuracy_drop=0.5)
    )
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

    report = verify_run(
        run_copy,
        config=VerifyConfig(artifacts=("onnx-int8-tensorrt-int8-qdq-fp16",), measure_latency=False, threads=1),
        check=False,
    )
    row = next(r for r in report.rows if r.name == "onnx-int8-tensorrt-int8-qdq-fp16")
    assert row.backend == "onnxruntime" and row.num_images > 0 and row.top1 is not None
    assert abs(row.delta_top1_pts) <= 0.5, f"FP16 float part moved top-1 by {row.delta_top1_pts:.2f} pt"
    assert record.metrics["val_top1"] == pytest.approx(row.top1)


def _tiny_qdq_conv(weight_scale: "list[float]"):
    """input -> Q/DQ -> Conv (INT8 weights, per-channel scales) -> output, FP32, opset 17."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    channels = len(weight_scale)
    q = np.array([[[[100]], [[-50]]]] * channels, dtype=np.int8).reshape(channels, 2, 1, 1)
    inits = [
        numpy_helper.from_array(np.float32(0.02), "x_scale"),
        numpy_helper.from_array(np.int8(0), "x_zp"),
        numpy_helper.from_array(q, "w_int8"),
        numpy_helper.from_array(np.array(weight_scale, dtype=np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(channels, dtype=np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zp"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xdq"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["w_int8", "w_scale", "w_zp"], ["w"], name="dq_w", axis=0),
        helper.make_node("Conv", ["xdq", "w"], ["logits"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 1, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, channels, 1, 1])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fp16_float_part_keeps_every_scale_positive_and_weights_where_they_were() -> None:
    """Only a scale that float16 would make 0 is raised (to 2^-24, its smallest subnormal), and that channel's
    INT8 weights requantized: TensorRT's parser needs scale > 0 and nothing more ("Scale coefficients must all
    be positive", onnx/onnx-tensorrt 10.0-GA onnxOpImporters.cpp, float16 scales included), and ModelOpt replaces
    only values under float16's smallest subnormal (modelopt/onnx/autocast/precisionconverter.py). A channel of
    amax 0.004 (scale 3.1e-5, a float16 subnormal) keeps all its INT8 levels; a 2^-14 floor would leave it 66."""
    import numpy as np

    pytest.importorskip("onnx")
    from onnx import numpy_helper

    from edge_tl.quantize.fp16_float import FP16_MIN_SCALE, float_part_to_fp16, raise_small_scales

    assert float(FP16_MIN_SCALE) == 2.0**-24 == float(np.finfo(np.float16).smallest_subnormal)
    amax_0004 = 0.004 / 127
    scales = [1e-10, 2.0**-24, amax_0004, 2.0**-14, 0.01]
    model = _tiny_qdq_conv(scales)
    before = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w_int8")).astype(np.float64)
    dequantized = before * np.array(scales).reshape(-1, 1, 1, 1)

    raised = raise_small_scales(model)
    assert raised == {"w_scale": 1}  # only the channel strictly below the smallest subnormal
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert inits["w_scale"].tolist() == pytest.approx([2.0**-24, 2.0**-24, amax_0004, 2.0**-14, 0.01])
    assert inits["w_int8"][0].ravel().tolist() == [0, 0]  # 1e-8 and -5e-9 are 0 steps of 2^-24
    assert inits["w_int8"][1:].tolist() == before[1:].astype(np.int8).tolist()  # other channels untouched
    requantized = inits["w_int8"].astype(np.float64) * inits["w_scale"].reshape(-1, 1, 1, 1)
    assert np.abs(requantized - dequantized).max() <= float(FP16_MIN_SCALE) / 2

    half, _ = float_part_to_fp16(_tiny_qdq_conv(scales))
    fp16 = {i.name: numpy_helper.to_array(i) for i in half.graph.initializer}
    assert fp16["w_scale"].dtype == np.float16 and (fp16["w_scale"] > 0).all()
    assert int(np.abs(fp16["w_int8"][2]).max()) == 100  # the amax-0.004 channel's weights as quantized
    # its subnormal float16 scale is within half a subnormal step of the float32 one
    assert abs(float(fp16["w_scale"][2]) - amax_0004) <= 2.0**-25
    strict = _tiny_qdq_conv(scales)
    raise_small_scales(strict, floor=2.0**-14)  # the stricter floor, for comparison (benchmarks/fp16_scale_floor.py)
    strict_q = numpy_helper.to_array(next(i for i in strict.graph.initializer if i.name == "w_int8"))
    assert int(np.abs(strict_q[2]).max()) == round(100 * amax_0004 / 2.0**-14) == 52  # 100 steps become 52


def test_onnxruntime_runs_an_fp16_qdq_graph_as_written(tmp_path: Path) -> None:
    import numpy as np

    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from edge_tl.quantize.fp16_float import float_part_to_fp16
    from edge_tl.runtime.onnxruntime_runner import GraphOptimization, OnnxRuntimeRunner, has_fp16_qdq

    fp32 = _tiny_qdq_conv([0.01, 0.02])
    half, _ = float_part_to_fp16(fp32)
    assert not has_fp16_qdq(fp32) and has_fp16_qdq(half)
    paths = {}
    for name, model in (("fp32", fp32), ("fp16", half)):
        paths[name] = tmp_path / f"{name}.onnx"
        onnx.save(model, str(paths[name]))
    assert OnnxRuntimeRunner(paths["fp32"]).optimization is GraphOptimization.ALL
    runner = OnnxRuntimeRunner(paths["fp16"])
    assert runner.optimization is GraphOptimization.DISABLED
    x = np.array([[[[0.5]], [[-0.3]]]], dtype=np.float32)
    with OnnxRuntimeRunner(paths["fp32"]) as ref, runner:
        np.testing.assert_allclose(runner.run(x), ref.run(x), rtol=2e-3, atol=1e-3)


def test_the_fp16_float_part_is_made_only_where_a_strongly_typed_build_reads_it() -> None:
    """TensorRT 8.x/10.x plans build the FP32 Q/DQ model weakly typed (--int8 --fp16); only TensorRT 11,
    or an unknown TensorRT (no --target), needs the variant."""
    from edge_tl.quantize.api import QuantizeConfig, _builds_strongly_typed

    assert _builds_strongly_typed(QuantizeConfig(recipe="tensorrt-int8-qdq"))
    assert not _builds_strongly_typed(QuantizeConfig(recipe="tensorrt-int8-qdq", target="jetson-orin-nano-8gb"))
    assert not _builds_strongly_typed(
        QuantizeConfig(recipe="tensorrt-int8-qdq", target="jetson-agx-orin-64gb", tensorrt="10.3.0")
    )
    assert _builds_strongly_typed(
        QuantizeConfig(recipe="tensorrt-int8-qdq", target="jetson-agx-orin-64gb", tensorrt="11.4.1")
    )
