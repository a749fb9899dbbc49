"""TensorRT-style explicit quantization: our own Q/DQ placement.

Why not onnxruntime.quantization here: its QDQ writer places Q/DQ on the outputs
of Conv/Gemm too (so that its CPU kernels can fuse QLinearConv) and quantizes bias
to INT32 behind a DequantizeLinear; TensorRT's rules are the opposite: inputs of
weighted ops only, outputs and bias left in float (TensorRT developer guide, "Explicit
Quantization", Q/DQ layer-placement recommendations; onnx/onnx-tensorrt ``docs/operators.md``:
DequantizeLinear takes INT8/FP8/INT4 input, never INT32, and ``x_zero_point`` must be zero).

The rules this writer follows, and ``check_tensorrt_qdq`` verifies:

* symmetric INT8, zero point 0 everywhere;
* weights: INT8 initializers behind a DequantizeLinear, one scale per output
  channel (axis 0 for Conv and for Gemm with transB=1);
* activations: one QuantizeLinear -> DequantizeLinear pair per tensor, per-tensor
  scale ``amax / 127``, on the activation inputs of Conv/Gemm/MatMul and on the
  skip input of residual Adds; every other consumer keeps the float tensor;
* bias inputs untouched (float).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_tl._lazy import lazy_import
from edge_tl.errors import ConfigError
from edge_tl.quantize.graph import (
    initializer_names,
    matches,
    residual_skip_inputs,
    weighted_nodes,
)
from edge_tl.quantize.observers import INT8_LEVELS, TensorRange
from edge_tl.quantize.recipes import Recipe
from edge_tl.quantize.writers import ModelWriter

# The smallest scale written: an all-zero tensor still needs a positive scale.
MIN_AMAX = 1e-8


@dataclass(frozen=True)
class Placement:
    """Where Q/DQ goes: ``(node name, input index)`` pairs, per kind."""

    activation_inputs: tuple[tuple[str, int], ...]
    weight_inputs: tuple[tuple[str, int, int], ...]  # (node, input index, channel axis)
    float_layers: tuple[str, ...]
    quantized_layers: tuple[str, ...]
    activation_tensors: tuple[str, ...]  # each quantized once, whatever its consumers


def _weight_axis(node: Any) -> int:
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return 1
    return 0


def plan(model: Any, recipe: Recipe, *, float_layers: Iterable[str] = ()) -> Placement:
    """Decide the Q/DQ positions for ``model`` under ``recipe``'s placement rules."""
    inits = initializer_names(model)
    kept = set(float_layers)
    acts: list[tuple[str, int]] = []
    tensors: list[str] = []
    weights: list[tuple[str, int, int]] = []
    floats: list[str] = []
    quantized: list[str] = []
    nodes = {n.name: n for n in model.graph.node}
    for node in weighted_nodes(model, recipe.placement.op_types):
        if node.name in kept or matches(node.name, recipe.placement.keep_float):
            floats.append(node.name)
            continue
        quantized.append(node.name)
        # Conv: X, W[, B]; Gemm: A, B[, C]; MatMul: A, B. Index 2 is the bias: left float.
        for index, name in enumerate(node.input[:2]):
            if not name:
                continue
            if name in inits:
                weights.append((node.name, index, _weight_axis(node)))
            else:
                acts.append((node.name, index))
                if name not in tensors:
                    tensors.append(name)
    if recipe.placement.residual_add:
        for add_name, skip in residual_skip_inputs(model).items():
            if add_name in kept or matches(add_name, recipe.placement.keep_float):
                continue
            index = list(nodes[add_name].input).index(skip)
            acts.append((add_name, index))
            if skip not in tensors:
                tensors.append(skip)
    return Placement(tuple(acts), tuple(weights), tuple(floats), tuple(quantized), tuple(tensors))


def _scale(amax: float) -> np.float32:
    return np.float32(max(float(amax), MIN_AMAX) / INT8_LEVELS)


def write(model: Any, ranges: dict[str, TensorRange], placement: Placement) -> Any:
    """A copy of ``model`` with Q/DQ inserted as ``placement`` says, scales from ``ranges``."""
    onnx = lazy_import("onnx", purpose="writing Q/DQ")
    numpy_helper = onnx.numpy_helper
    helper = onnx.helper
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes = {n.name: n for n in graph.node}
    inits = {i.name: i for i in graph.initializer}
    new_inits: list[Any] = []

    # Activations: one Q/DQ pair per tensor, shared by the chosen consumers only.
    dq_of: dict[str, str] = {}
    qdq_after: dict[str, list[Any]] = {}
    for node_name, index in placement.activation_inputs:
        tensor = nodes[node_name].input[index]
        if tensor not in dq_of:
            if tensor not in ranges:
                raise ConfigError(f"no calibrated range for activation {tensor!r}; calibration must observe it")
            scale_name, zp_name = f"{tensor}_qdq_scale", f"{tensor}_qdq_zero_point"
            new_inits.append(
                numpy_helper.from_array(np.array(_scale(ranges[tensor].amax), dtype=np.float32), scale_name)
            )
            new_inits.append(numpy_helper.from_array(np.array(0, dtype=np.int8), zp_name))
            q_out, dq_out = f"{tensor}_quantized", f"{tensor}_dequantized"
            qdq_after[tensor] = [
                helper.make_node(
                    "QuantizeLinear", [tensor, scale_name, zp_name], [q_out], name=f"{tensor}_QuantizeLinear"
                ),
                helper.make_node(
                    "DequantizeLinear", [q_out, scale_name, zp_name], [dq_out], name=f"{tensor}_DequantizeLinear"
                ),
            ]
            dq_of[tensor] = dq_out
        nodes[node_name].input[index] = dq_of[tensor]

    # Weights: INT8 initializers with per-channel scales behind one DequantizeLinear.
    weight_dq: dict[str, str] = {}
    dq_nodes: list[Any] = []
    for node_name, index, axis in placement.weight_inputs:
        name = nodes[node_name].input[index]
        if name not in weight_dq:
            w = numpy_helper.to_array(inits[name]).astype(np.float32)
            reduce_axes = tuple(a for a in range(w.ndim) if a != axis)
            amax = np.abs(w).max(axis=reduce_axes) if reduce_axes else np.abs(w)
            scale = (np.maximum(amax, MIN_AMAX) / INT8_LEVELS).astype(np.float32)
            shape = [1] * w.ndim
            shape[axis] = -1
            q = np.clip(np.rint(w / scale.reshape(shape)), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
            q_name, s_name, z_name = f"{name}_int8", f"{name}_scale", f"{name}_zero_point"
            new_inits += [
                numpy_helper.from_array(q, q_name),
                numpy_helper.from_array(scale, s_name),
                numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int8), z_name),
            ]
            dq_out = f"{name}_dequantized"
            dq_nodes.append(
                helper.make_node(
                    "DequantizeLinear", [q_name, s_name, z_name], [dq_out], name=f"{name}_DequantizeLinear", axis=axis
                )
            )
            weight_dq[name] = dq_out
        nodes[node_name].input[index] = weight_dq[name]

    # Node order: weight DQs first (they read initializers only), then each Q/DQ pair
    # right after the node (or graph input) that produces its tensor.
    ordered = list(dq_nodes)
    for value in graph.input:
        ordered.extend(qdq_after.pop(value.name, []))
    for node in graph.node:
        ordered.append(node)
        for output in node.output:
            ordered.extend(qdq_after.pop(output, []))
    if qdq_after:
        raise ConfigError(f"cannot place Q/DQ for tensors with no producer: {sorted(qdq_after)}")
    del graph.node[:]
    graph.node.extend(ordered)

    still_used = {i for n in graph.node for i in n.input}
    kept = [init for init in graph.initializer if init.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    onnx.checker.check_model(out)
    return out


# --------------------------------------------------------------------------- rule check


class TensorRTQdqWriter(ModelWriter):
    """``output = "qdq-tensorrt"``: this module's placement, TensorRT's rules."""

    name = "qdq-tensorrt"
    # TensorRT 11 builds strongly typed only: its float part must be FP16 in the graph itself.
    strongly_typed_variant = True

    def tensors(self, model: Any, recipe: Recipe) -> list[str]:
        return list(plan(model, recipe).activation_tensors)

    def layers(self, model: Any, recipe: Recipe) -> list[str]:
        return list(plan(model, recipe).quantized_layers)

    def build(self, model: Any, ranges: dict[str, TensorRange], recipe: Recipe, float_layers: Iterable[str]) -> Any:
        return write(model, ranges, plan(model, recipe, float_layers=float_layers))


WRITER = TensorRTQdqWriter()


def check_tensorrt_qdq(model: Any, *, float_layers: Iterable[str] = ()) -> list[str]:
    """Every way ``model`` breaks TensorRT's explicit-quantization rules (empty = none).

    Checks: zero points are 0 and INT8; weight scales are per output channel; activation
    scales are per tensor; no bias is quantized; every Conv/Gemm/MatMul reads its inputs
    through DequantizeLinear, and so does the skip input of every residual Add, except
    the nodes named in ``float_layers`` (then neither input may be);
    activation Q/DQ feed only weighted ops and residual Adds, so nothing quantizes a
    weighted op's output for its own sake (a Conv output that is the next Conv's input
    is quantized as that input, which TensorRT fuses as an INT8 output).
    """
    onnx = lazy_import("onnx", purpose="checking Q/DQ")
    numpy_helper = onnx.numpy_helper
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    skips = residual_skip_inputs(model)
    residual = set(skips)
    floats = set(float_layers)
    problems: list[str] = []
    for add_name, skip in skips.items():
        src = producer.get(skip)
        if add_name not in floats and (src is None or src.op_type != "DequantizeLinear"):
            problems.append(
                f"{add_name}: the skip input {skip!r} of this residual Add must come through DequantizeLinear"
            )
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp_name = node.input[2] if len(node.input) > 2 else ""
            zp = inits.get(zp_name)
            if zp is None or zp.dtype != np.int8 or np.any(zp != 0):
                problems.append(
                    f"{node.name}: zero point must be INT8 zeros, got {None if zp is None else (zp.dtype, zp)}"
                )
        if node.op_type == "QuantizeLinear":
            scale = inits.get(node.input[1])
            if scale is None or scale.size != 1:
                problems.append(f"{node.name}: activation scale must be per tensor (one value)")
            for dq in consumers.get(node.output[0], []):
                for reader in consumers.get(dq.output[0], []):
                    weighted_input = (
                        reader.op_type in ("Conv", "Gemm", "MatMul") and list(reader.input).index(dq.output[0]) < 2
                    )
                    if not (weighted_input or reader.op_type == "Add" and reader.name in residual):
                        problems.append(
                            f"{node.name}: feeds {reader.op_type} {reader.name}, "
                            "which the placement rules leave in float"
                        )
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        feeds = [producer.get(name) for name in node.input[:2]]
        quantized = [f is not None and f.op_type == "DequantizeLinear" for f in feeds]
        if node.name in floats:
            if any(quantized):
                problems.append(f"{node.name}: is listed as a float layer but reads quantized inputs")
            continue
        if not all(quantized):
            problems.append(f"{node.name}: its inputs must both come through DequantizeLinear")
        if all(quantized):
            w_dq = feeds[1]
            q_weight = inits.get(w_dq.input[0])
            if q_weight is None or q_weight.dtype != np.int8:
                problems.append(f"{node.name}: weight must be an INT8 initializer behind DequantizeLinear")
            else:
                axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1)
                scale = inits.get(w_dq.input[1])
                expected = _weight_axis(node)
                if axis != expected or scale is None or scale.shape != (q_weight.shape[axis],):
                    problems.append(
                        f"{node.name}: weight scales must be per output channel on axis {expected}, "
                        f"got axis {axis} with scale shape {None if scale is None else scale.shape}"
                    )
        if len(node.input) > 2 and node.input[2]:
            bias_src = producer.get(node.input[2])
            if bias_src is not None and bias_src.op_type == "DequantizeLinear" or node.input[2] not in inits:
                problems.append(f"{node.name}: bias must stay a float initializer")
    return problems
