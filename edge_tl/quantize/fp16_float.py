"""The float part of a Q/DQ model in FP16, for strongly typed TensorRT builds.

A strongly typed network takes every layer's precision from its tensor types (TensorRT 10
with ``--stronglyTyped``, and all of TensorRT 11, where the FP16/INT8 builder flags are gone:
"Strongly Typed Networks", TensorRT 11 developer guide). In an FP32 Q/DQ model everything not
between a DequantizeLinear and the next QuantizeLinear (residual Adds, pooling, activations,
the layers a budget returned to float) would then run in FP32. This pass makes the graph
itself carry FP16 there, as NVIDIA ModelOpt's ONNX quantizer does with its
``high_precision_dtype`` (default fp16): every float initializer (weights left in float,
biases, the Q/DQ scales) becomes float16, and the graph keeps float32 I/O through two Casts.

QuantizeLinear/DequantizeLinear take float16 input and scales from opset 19 (onnx
``docs/Operators.md``, QuantizeLinear-19 / DequantizeLinear-19), so the model is moved to
opset 19, which TensorRT 10 and 11 parse (onnx/onnx-tensorrt ``docs/operators.md``: opset 9
to 20). ONNX Runtime runs it on a CPU (it casts around kernels it lacks in float16), so
``verify`` measures its accuracy like any other artifact.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from edge_tl._lazy import lazy_import

FP16_OPSET = 19

# float16's smallest positive (subnormal) number, 2^-24. A Q/DQ scale below it becomes 0 in float16, and
# TensorRT's parser refuses a scale that is not positive ("Scale coefficients must all be positive",
# onnx/onnx-tensorrt 10.0-GA onnxOpImporters.cpp, which checks float16 scales with x > 0 and nothing
# more). So only such scales are raised, to this value, and their channel's INT8 weights requantized:
# the rule of NVIDIA ModelOpt's float16 conversion, which replaces only values under the smallest
# float16 subnormal (modelopt/onnx/autocast/precisionconverter.py). A scale between 2^-24 and
# float16's smallest normal (2^-14) stays a positive subnormal with all 127 INT8 levels: raising it to
# 2^-14 instead would cut a channel of amax 0.004 (scale 3.1e-5) to 66 levels.
FP16_MIN_SCALE = np.float32(2.0**-24)

# Inputs that must stay float32 whatever the compute type (index per op type).
_FLOAT32_ONLY_INPUTS = {"Resize": (1, 2)}  # roi and scales are tensor(float) in every Resize version


def raise_small_scales(model: Any, *, floor: float = FP16_MIN_SCALE) -> dict[str, int]:
    """Raise Q/DQ scales below ``floor`` in ``model`` (in place): scale name -> entries raised.

    A weight's DequantizeLinear (INT8 initializer + scale) gets its INT8 values requantized for
    the new scale; an activation's scale (shared by its Q and DQ) is raised as it is. ``floor``
    is :data:`FP16_MIN_SCALE` for every model edge-tl writes; benchmarks/fp16_scale_floor.py passes
    float16's smallest normal to measure what that stricter floor would cost.
    """
    floor = np.float32(floor)
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    raised: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 2:
            continue
        scale_init = inits.get(node.input[1])
        if scale_init is None or scale_init.data_type != TensorProto.FLOAT or node.input[1] in raised:
            continue
        scale = numpy_helper.to_array(scale_init).astype(np.float32)
        small = scale < floor
        if not small.any():
            continue
        new = np.where(small, floor, scale).astype(np.float32)
        values = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if values is not None:
            q = numpy_helper.to_array(values)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % max(q.ndim, 1)
            shape = [1] * q.ndim
            if scale.ndim:
                shape[axis] = -1
            info = np.iinfo(q.dtype)
            requant = np.round(q.astype(np.float32) * scale.reshape(shape) / new.reshape(shape))
            values.CopyFrom(numpy_helper.from_array(np.clip(requant, info.min, info.max).astype(q.dtype), values.name))
        scale_init.CopyFrom(numpy_helper.from_array(new.reshape(scale.shape), scale_init.name))
        raised[node.input[1]] = int(small.sum())
    return raised


def float_part_to_fp16(model: Any, *, keep_fp32: Iterable[str] = ()) -> tuple[Any, dict[str, str]]:
    """A copy of ``model`` with FP16 compute outside Q/DQ pairs, and what stays FP32 with why.

    ``keep_fp32`` names initializers to leave in float32 (none is needed for the CNNs edge-tl
    quantizes; the option is for a layer that overflows float16).
    """
    onnx = lazy_import("onnx", purpose="the FP16 float part of a Q/DQ model")
    from onnx import TensorProto, helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < FP16_OPSET:
        out = onnx.version_converter.convert_version(out, FP16_OPSET)
    raise_small_scales(out)
    graph = out.graph
    kept: dict[str, str] = {}
    keep = set(keep_fp32)
    for node in graph.node:
        for index in _FLOAT32_ONLY_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index]:
                keep.add(node.input[index])
                kept[node.input[index]] = f"{node.op_type} input {index} is float32 in every opset"
    for name in set(keep_fp32):
        kept[name] = "kept float32 on request"

    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for node in graph.node:
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(
                        numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name)
                    )

    # float32 I/O through Casts: the graph input is cast to float16 first, the output cast back last.
    casts_in: list[Any] = []
    casts_out: list[Any] = []
    ends = (
        (graph.input, casts_in, TensorProto.FLOAT16, "graph input stays float32 (a Cast to float16 follows it)"),
        (graph.output, casts_out, TensorProto.FLOAT, "graph output stays float32 (cast back from float16)"),
    )
    for values, casts, to, why in ends:
        for value in values:
            if value.type.tensor_type.elem_type != TensorProto.FLOAT:
                continue
            half = f"{value.name}_fp16"
            for node in graph.node:
                for names in (node.input, node.output):
                    for i, name in enumerate(names):
                        if name == value.name:
                            names[i] = half
            into_half = to == TensorProto.FLOAT16
            source, target = (value.name, half) if into_half else (half, value.name)
            suffix = "_to_fp16" if into_half else "_to_fp32"
            casts.append(helper.make_node("Cast", [source], [target], name=f"{value.name}{suffix}", to=to))
            kept[value.name] = why
    nodes = [*casts_in, *graph.node, *casts_out]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    out = onnx.shape_inference.infer_shapes(out, strict_mode=True)
    onnx.checker.check_model(out, full_check=True)
    return out, kept


def fp32_compute(model: Any, *, allowed: Iterable[str] = ()) -> list[str]:
    """Every node input computed in float32 outside the Casts that carry the graph's I/O.

    An empty list means all float compute is FP16 (Q/DQ pairs run INT8 between them);
    ``allowed`` names tensors recorded as kept in float32.
    """
    onnx = lazy_import("onnx", purpose="walking an ONNX graph's types")
    from onnx import TensorProto

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    types.update({i.name: i.data_type for i in graph.initializer})
    ok = set(allowed)
    found = []
    for node in graph.node:
        if node.op_type == "Cast":
            continue
        for name in node.input:
            if name and name not in ok and types.get(name) == TensorProto.FLOAT:
                found.append(f"{node.op_type} {node.name} reads float32 {name!r}")
        for name in node.output:
            if name and types.get(name) == TensorProto.FLOAT:
                found.append(f"{node.op_type} {node.name} writes float32 {name!r}")
    return found
