"""The TensorRT Q/DQ writer and its rule checker on a small hand-built graph (no training needed).

Rules (TensorRT developer guide, "Explicit Quantization", Q/DQ placement recommendations; onnx/onnx-tensorrt
``docs/operators.md``: DequantizeLinear input INT8, ``x_zero_point`` zero): inputs of weighted ops and the
skip input of residual Adds are quantized, per-tensor activation scales, per-output-channel weight scales,
zero points INT8 zeros, bias left float. ONNX's DequantizeLinear reads ``axis`` as 1 when the attribute is
absent (onnx/onnx ``docs/Operators.md``, DequantizeLinear: "axis ... Default value is 1").
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edge_tl.errors import ConfigError  # noqa: E402
from edge_tl.quantize import qdq_tensorrt  # noqa: E402
from edge_tl.quantize.observers import CalibMethod, TensorRange  # noqa: E402
from edge_tl.quantize.recipes import load_recipe  # noqa: E402


def _residual_model():
    """x -> conv1 -> relu -> conv2 -> add(conv2, relu) -> gap -> flatten -> gemm -> logits."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(np.ones(4, np.float32), "b2")
    wg = numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "wg")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
        helper.make_node("GlobalAveragePool", ["a"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg"], ["logits"], name="gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "res",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
        initializer=[w1, w2, b2, wg],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


RANGES = {
    t: TensorRange(amax=a, low=-a, high=a, method=CalibMethod.MINMAX)
    for t, a in {"x": 2.0, "r1": 4.0, "f": 1.0}.items()
}


def test_writer_places_qdq_by_the_rules_and_the_checker_accepts_it() -> None:
    model = _residual_model()
    recipe = load_recipe("tensorrt-int8-qdq")
    placement = qdq_tensorrt.plan(model, recipe)
    assert placement.quantized_layers == ("conv1", "conv2", "gemm")
    assert placement.activation_tensors == ("x", "r1", "f")  # r1: conv2's input and the Add's skip, quantized once
    out = qdq_tensorrt.write(model, RANGES, placement)
    assert qdq_tensorrt.check_tensorrt_qdq(out) == []
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    assert inits["x_qdq_scale"] == np.float32(2.0 / 127) and inits["r1_qdq_scale"] == np.float32(4.0 / 127)
    assert inits["w1_int8"].dtype == np.int8 and inits["w1_scale"].shape == (4,)  # per output channel
    w1 = numpy_helper.to_array(_residual_model().graph.initializer[0])
    np.testing.assert_array_equal(np.abs(inits["w1_int8"]).max(axis=(1, 2, 3)), [127] * 4)  # each channel's max -> 127
    np.testing.assert_allclose(inits["w1_scale"], np.abs(w1).max(axis=(1, 2, 3)) / 127, rtol=1e-6)
    assert inits["wg_scale"].shape == (5,)  # Gemm transB=1: axis 0 is the output
    assert "b2" in inits and inits["b2"].dtype == np.float32  # bias stays float
    assert sum(n.op_type == "QuantizeLinear" for n in out.graph.node) == 3
    # a layer kept in float reads float inputs, and the checker accepts it only when told
    floated = qdq_tensorrt.write(model, RANGES, qdq_tensorrt.plan(model, recipe, float_layers=["gemm"]))
    assert qdq_tensorrt.check_tensorrt_qdq(floated, float_layers=["gemm"]) == []
    assert any(
        "gemm: its inputs must both come through DequantizeLinear" in p
        for p in qdq_tensorrt.check_tensorrt_qdq(floated)
    )


def test_writer_refuses_an_activation_without_a_calibrated_range() -> None:
    model = _residual_model()
    placement = qdq_tensorrt.plan(model, load_recipe("tensorrt-int8-qdq"))
    with pytest.raises(ConfigError, match="no calibrated range for activation 'r1'"):
        qdq_tensorrt.write(model, {k: v for k, v in RANGES.items() if k != "r1"}, placement)


def _set(model, name: str, array: np.ndarray) -> None:
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(array, name))


@pytest.mark.parametrize(
    "break_it, problem",
    [
        (lambda m: _set(m, "x_qdq_zero_point", np.array(3, np.int8)), "zero point must be INT8 zeros"),
        (lambda m: _set(m, "w1_zero_point", np.zeros(4, np.uint8)), "zero point must be INT8 zeros"),
        (lambda m: _set(m, "x_qdq_scale", np.full(3, 0.1, np.float32)), "activation scale must be per tensor"),
        (lambda m: _set(m, "w1_scale", np.full(1, 0.1, np.float32)), "conv1: weight scales must be per output channel"),
        (
            lambda m: m.graph.node.__getitem__(
                next(i for i, n in enumerate(m.graph.node) if n.name == "gap")
            ).input.__setitem__(0, "r1_dequantized"),
            "feeds GlobalAveragePool gap",
        ),
    ],
)
def test_checker_names_each_broken_rule(break_it, problem: str) -> None:
    out = qdq_tensorrt.write(
        _residual_model(), RANGES, qdq_tensorrt.plan(_residual_model(), load_recipe("tensorrt-int8-qdq"))
    )
    break_it(out)
    problems = qdq_tensorrt.check_tensorrt_qdq(out)
    assert any(problem in p for p in problems), problems


def test_weight_axis_per_op_and_float_layers_recorded() -> None:
    """Gemm transB=0 and MatMul keep their output channels on axis 1; transB=1 on axis 0 (ONNX Gemm/MatMul layouts)."""
    rng = np.random.default_rng(1)
    wm = numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "wm")  # MatMul: [K, N]
    wg = numpy_helper.from_array(rng.standard_normal((6, 3)).astype(np.float32), "wg")  # Gemm transB=0: [K, N]
    nodes = [
        helper.make_node("MatMul", ["x", "wm"], ["m"], name="matmul"),
        helper.make_node("Gemm", ["m", "wg"], ["y"], name="gemm"),
    ]
    graph = helper.make_graph(
        nodes,
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[wm, wg],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ranges = {t: TensorRange(amax=1.0, low=-1.0, high=1.0, method=CalibMethod.MINMAX) for t in ("x", "m")}
    recipe = load_recipe("tensorrt-int8-qdq")
    placement = qdq_tensorrt.plan(model, recipe)
    assert placement.weight_inputs == (("matmul", 1, 1), ("gemm", 1, 1))
    out = qdq_tensorrt.write(model, ranges, placement)
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    assert inits["wm_scale"].shape == (6,) and inits["wg_scale"].shape == (3,)
    assert inits["wm_scale"].dtype == np.float32 and inits["x_qdq_scale"].dtype == np.float32
    assert qdq_tensorrt.check_tensorrt_qdq(out) == []
    names = {n.name for n in out.graph.node}
    assert {"x_QuantizeLinear", "x_DequantizeLinear", "wm_DequantizeLinear", "m_QuantizeLinear"} <= names
    floated = qdq_tensorrt.plan(model, recipe, float_layers=["matmul"])
    assert floated.float_layers == ("matmul",) and floated.quantized_layers == ("gemm",)
    assert floated.activation_tensors == ("m",) and floated.weight_inputs == (("gemm", 1, 1),)
    # a residual Add kept in float: its skip input gets no Q/DQ of its own
    res = qdq_tensorrt.plan(_residual_model(), recipe, float_layers=["add"])
    assert ("add", 1) not in res.activation_inputs and "add" not in res.quantized_layers
    assert ("add", 1) in qdq_tensorrt.plan(_residual_model(), recipe).activation_inputs


# --------------------------------------------------------------------------- each rule broken alone

RECIPE = load_recipe("tensorrt-int8-qdq")


def _written(float_layers: tuple[str, ...] = ()):
    model = _residual_model()
    return qdq_tensorrt.write(model, RANGES, qdq_tensorrt.plan(model, RECIPE, float_layers=float_layers))


def _node(model, name: str):
    return next(n for n in model.graph.node if n.name == name)


def _recipe(**placement):
    return dataclasses.replace(RECIPE, placement=dataclasses.replace(RECIPE.placement, **placement))


def test_dequantized_weights_stay_within_half_a_step_of_the_float_weights() -> None:
    out = _written()
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    w = {i.name: numpy_helper.to_array(i) for i in _residual_model().graph.initializer}
    for name, axis in (("w1", 0), ("w2", 0), ("wg", 0)):
        shape = [1] * w[name].ndim
        shape[axis] = -1
        scale = inits[f"{name}_scale"].reshape(shape)
        assert np.all(np.abs(inits[f"{name}_int8"] * scale - w[name]) <= scale / 2 + 1e-7), name


def test_residual_skip_and_float_layers_in_the_checker() -> None:
    floated = _written(float_layers=("add",))
    assert "add: the skip input 'r1' of this residual Add must come through DequantizeLinear" in (
        qdq_tensorrt.check_tensorrt_qdq(floated)
    )
    assert qdq_tensorrt.check_tensorrt_qdq(floated, float_layers=["add"]) == []
    quantized = _written()
    assert qdq_tensorrt.check_tensorrt_qdq(quantized, float_layers=["conv1"]) == [
        "conv1: is listed as a float layer but reads quantized inputs"
    ]
    # a float layer does not end the check: a broken weight after it is still found
    first_float = _written(float_layers=("conv1",))
    _set(first_float, "w2_scale", np.full(1, 0.1, np.float32))
    assert qdq_tensorrt.check_tensorrt_qdq(first_float, float_layers=["conv1"]) == [
        "conv2: weight scales must be per output channel on axis 0, got axis 0 with scale shape (1,)"
    ]


def test_zero_points_of_quantize_nodes_are_checked_too() -> None:
    out = _written()
    out.graph.initializer.append(numpy_helper.from_array(np.array(3, np.int8), "bad_zero_point"))
    _node(out, "x_QuantizeLinear").input[2] = "bad_zero_point"
    problems = qdq_tensorrt.check_tensorrt_qdq(out)
    assert problems == ["x_QuantizeLinear: zero point must be INT8 zeros, got (dtype('int8'), array(3, dtype=int8))"]
    del _node(out, "x_QuantizeLinear").input[2]  # zero point omitted: ONNX's default is uint8, not what TensorRT takes
    assert qdq_tensorrt.check_tensorrt_qdq(out) == ["x_QuantizeLinear: zero point must be INT8 zeros, got None"]


def test_dangling_quantize_nodes_and_non_residual_adds() -> None:
    out = _written()
    out.graph.node.extend(
        [
            helper.make_node("QuantizeLinear", ["x", "x_qdq_scale", "x_qdq_zero_point"], ["xq2"], name="lonely_q"),
            helper.make_node("QuantizeLinear", ["x", "x_qdq_scale", "x_qdq_zero_point"], ["xq3"], name="q3"),
            helper.make_node(
                "DequantizeLinear", ["xq3", "x_qdq_scale", "x_qdq_zero_point"], ["xdq3"], name="unused_dq"
            ),
        ]
    )
    assert qdq_tensorrt.check_tensorrt_qdq(out) == []
    # an Add with a constant operand is no residual join: a quantized tensor must not feed it
    out.graph.node.append(helper.make_node("Add", ["r1_dequantized", "b2"], ["biased"], name="bias_add"))
    assert qdq_tensorrt.check_tensorrt_qdq(out) == [
        "r1_QuantizeLinear: feeds Add bias_add, which the placement rules leave in float"
    ]


def test_bias_must_stay_a_float_initializer() -> None:
    out = _written()
    _node(out, "conv2").input[2] = "x_dequantized"  # a quantized activation as bias
    assert qdq_tensorrt.check_tensorrt_qdq(out) == [
        "x_QuantizeLinear: feeds Conv conv2, which the placement rules leave in float",
        "conv2: bias must stay a float initializer",
    ]
    out = _written()
    _node(out, "conv2").input[2] = "c1"  # a computed tensor as bias
    assert qdq_tensorrt.check_tensorrt_qdq(out) == ["conv2: bias must stay a float initializer"]


def test_weight_dequantize_rules() -> None:
    out = _written()
    _set(out, "w1_int8", np.ones((4, 3, 1, 1), np.float32))
    assert qdq_tensorrt.check_tensorrt_qdq(out) == ["conv1: weight must be an INT8 initializer behind DequantizeLinear"]
    out = _written()
    dq = _node(out, "w1_DequantizeLinear")
    del dq.attribute[:]  # no axis attribute: ONNX reads axis 1
    assert qdq_tensorrt.check_tensorrt_qdq(out) == [
        "conv1: weight scales must be per output channel on axis 0, got axis 1 with scale shape (4,)"
    ]
    out = _written()
    _node(out, "w2_DequantizeLinear").attribute[0].i = 1  # w2 is 4x4: the scale shape fits axis 1 too
    assert qdq_tensorrt.check_tensorrt_qdq(out) == [
        "conv2: weight scales must be per output channel on axis 0, got axis 1 with scale shape (4,)"
    ]
    out = _written()
    _node(out, "w1_DequantizeLinear").input[1] = "missing_scale"
    assert qdq_tensorrt.check_tensorrt_qdq(out) == [
        "conv1: weight scales must be per output channel on axis 0, got axis 0 with scale shape None"
    ]


def test_matmul_inputs_must_be_dequantized() -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    wm = numpy_helper.from_array(np.ones((4, 3), np.float32), "wm")
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "wm"], ["y"], name="matmul")], "mm", [x], [y], initializer=[wm]
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    ranges = {"x": TensorRange(amax=1.0, low=-1.0, high=1.0, method=CalibMethod.MINMAX)}
    floated = qdq_tensorrt.write(model, ranges, qdq_tensorrt.plan(model, RECIPE, float_layers=["matmul"]))
    assert qdq_tensorrt.check_tensorrt_qdq(floated) == ["matmul: its inputs must both come through DequantizeLinear"]


def test_recipe_op_types_and_keep_float_patterns_are_honoured() -> None:
    model = _residual_model()
    convs_only = qdq_tensorrt.plan(model, _recipe(op_types=("Conv",)))
    assert convs_only.quantized_layers == ("conv1", "conv2") and convs_only.activation_tensors == ("x", "r1")
    kept = qdq_tensorrt.plan(model, _recipe(keep_float=("gem*", "ad?")))
    assert kept.float_layers == ("gemm",) and kept.quantized_layers == ("conv1", "conv2")
    assert ("add", 1) not in kept.activation_inputs and kept.activation_tensors == ("x", "r1")
    # the skip tensor is quantized for the Add even when no weighted layer reads it
    skip_only = qdq_tensorrt.plan(model, RECIPE, float_layers=["conv2"])
    assert skip_only.activation_tensors == ("x", "f", "r1") and ("add", 1) in skip_only.activation_inputs
    # a graph input left in float keeps no Q/DQ and the writer still orders the graph
    floated_input = _written(float_layers=("conv1",))
    assert _node(floated_input, "conv1").input[0] == "x"


def _two_blocks():
    """x -> conv1 -> relu1 -> conv2 -> add1(c2, r1) -> relu2 -> conv3 -> add2(c3, r2) -> gap -> flatten -> gemm."""
    rng = np.random.default_rng(2)
    inits = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
        for n, s in (("w1", (4, 3, 1, 1)), ("w2", (4, 4, 1, 1)), ("w3", (4, 4, 1, 1)), ("wg", (5, 4)))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["a1"], name="add1"),
        helper.make_node("Relu", ["a1"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3"),
        helper.make_node("Add", ["c3", "r2"], ["a2"], name="add2"),
        helper.make_node("GlobalAveragePool", ["a2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg"], ["logits"], name="gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "two",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 5])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_float_residual_add_leaves_the_next_one_quantized() -> None:
    placement = qdq_tensorrt.plan(_two_blocks(), RECIPE, float_layers=["add1"])
    assert ("add1", 1) not in placement.activation_inputs and ("add2", 1) in placement.activation_inputs


def test_a_placement_on_a_tensor_nothing_produces_is_refused() -> None:
    model = _residual_model()
    placement = qdq_tensorrt.Placement((("conv2", 2),), (), (), ("conv2",), ("b2",))
    ranges = {"b2": RANGES["x"]}
    with pytest.raises(ConfigError) as err:
        qdq_tensorrt.write(model, ranges, placement)
    assert str(err.value) == "cannot place Q/DQ for tensors with no producer: ['b2']"
