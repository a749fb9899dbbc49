"""Which operators a DLA build puts on the GPU, per TensorRT release and per condition, each rule named by its source.

Sources (read from the branches named): NVIDIA/TensorRT ``include/NvInfer.h``
(``IElementWiseLayer::setOperation``: "DLA supports only kSUM, kPROD, kMAX, kMIN, and kSUB", release/8.2,
release/8.5, release/10.3, release/11.0); NVIDIA's DLA layer table for 10.x (ElementWise: Sum, Sub, Product, Max,
Min, Div, Pow) and operator reference (POW with one constant input, DIV with at most one); onnx/onnx-tensorrt
``builtin_op_importers.cpp`` (8.0-GA to 8.6-GA) and ``onnxOpImporters.cpp`` (10.0-GA), which import
GlobalAveragePool through ``globalPoolingHelper(..., ReduceOperation::kAVG)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_tl.compile.dla import Verdict, dla_verdict, gpu_fallback_ops, predict_dla
from edge_tl.targets import TrtVersion

V8, V10, V11 = TrtVersion(8, 5, 2), TrtVersion(10, 3, 0), TrtVersion(11, 4, 1)


@pytest.mark.parametrize(
    "op, version, constants, verdict",
    [
        ("Div", V8, 1, Verdict.GPU),  # NvInfer.h release/8.5: no kDIV on DLA, and no other 8.x source says otherwise
        ("Pow", V8, 1, Verdict.GPU),  # same, kPOW
        ("Div", V10, 1, Verdict.DISPUTED),  # NvInfer.h release/10.3 says no; the 10.x DLA table says Div
        ("Div", V10, 0, Verdict.DISPUTED),  # "DIV with at most one" constant input: none is within it
        ("Pow", V10, 1, Verdict.DISPUTED),  # a constant exponent: the operator reference allows it, NvInfer.h not
        ("Pow", V10, 0, Verdict.GPU),  # two computed tensors: no source puts it on DLA
        ("Pow", V11, 1, Verdict.DISPUTED),  # NvInfer.h release/11.0 keeps the same sentence
        ("GlobalAveragePool", V8, 0, Verdict.DISPUTED),  # a kAVG Reduce (onnx-tensorrt 8.5-GA); DLA reduces max only
        ("GlobalAveragePool", V10, 0, Verdict.DISPUTED),  # same in onnxOpImporters.cpp 10.0-GA
        ("Add", V8, 1, Verdict.DLA),  # kSUM: every source
        ("Conv", V10, 1, Verdict.DLA),
        ("ReduceMean", V10, 1, Verdict.GPU),  # not a DLA layer type
    ],
)
def test_verdict_per_release_and_condition(op: str, version: TrtVersion, constants: int, verdict: Verdict) -> None:
    got, why = dla_verdict(op, version, constant_inputs=constants)
    assert got is verdict
    if op in ("Div", "Pow"):
        assert "include/NvInfer.h" in why
    if op == "GlobalAveragePool":
        assert "kAVG" in why and "onnx-tensorrt" in why


def _model(path: Path) -> Path:
    """x -> Div by a constant -> Pow by a constant -> Pow(x, x) -> GlobalAveragePool -> ReduceMean."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    nodes = [
        helper.make_node("Div", ["x", "two"], ["d"]),
        helper.make_node("Constant", [], ["e"], value=numpy_helper.from_array(np.array(3.0, dtype=np.float32))),
        helper.make_node("Pow", ["d", "e"], ["p"]),
        helper.make_node("Pow", ["p", "x"], ["q"]),
        helper.make_node("GlobalAveragePool", ["q"], ["g"]),
        helper.make_node("ReduceMean", ["g"], ["y"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "dla",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [two],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_a_models_prediction_differs_between_8_and_10(tmp_path: Path) -> None:
    path = _model(tmp_path / "m.onnx")
    on8 = predict_dla(path, tensorrt=V8)
    assert on8.gpu == {"Div": 1, "Pow": 2, "ReduceMean": 1} and on8.disputed == {"GlobalAveragePool": 1}
    on10 = predict_dla(path, tensorrt=V10)
    # the Pow with a Constant exponent and the Div by an initializer are disputed; Pow(p, x) stays on the GPU
    assert on10.gpu == {"Pow": 1, "ReduceMean": 1} and on10.disputed == {"Div": 1, "GlobalAveragePool": 1, "Pow": 1}
    assert gpu_fallback_ops(path, tensorrt=V10) == on10.gpu
    assert set(on10.reasons) == {"Div", "GlobalAveragePool", "Pow", "ReduceMean"}
