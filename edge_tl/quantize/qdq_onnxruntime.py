"""ONNX Runtime Q/DQ through onnxruntime.quantization's own writer.

ONNX Runtime's QDQ writer knows which Q/DQ patterns its CPU kernels fuse
(QLinearConv, QGemm, quantized Add/Pool/...), so for a CPU target we use it as is.
Only the ranges are ours: ``quantize_static``'s built-in calibrators hold every
intermediate output of every batch before reducing them, so their memory grows with
the number of calibration images; our streaming observers do not. The ranges go to
``QDQQuantizer`` exactly as ``quantize_static`` would pass its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from edge_tl._lazy import lazy_import
from edge_tl.quantize.graph import float_activations, matches, topological_sort, weighted_nodes
from edge_tl.quantize.observers import TensorRange
from edge_tl.quantize.recipes import QuantDType, Recipe
from edge_tl.quantize.writers import ModelWriter


def quantizable_layers(model: Any, recipe: Recipe, *, float_layers: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(quantized weighted layers, weighted layers kept in float) by node name."""
    kept = set(float_layers)
    quantized, floats = [], []
    for node in weighted_nodes(model):
        if node.op_type not in recipe.placement.op_types:
            continue
        (floats if node.name in kept or matches(node.name, recipe.placement.keep_float) else quantized).append(
            node.name
        )
    return quantized, floats


def write(model: Any, ranges: dict[str, TensorRange], recipe: Recipe, *, float_layers: Iterable[str] = ()) -> Any:
    """``model`` quantized with ONNX Runtime's QDQ writer; returns the ``ModelProto``."""
    onnx = lazy_import("onnx", purpose="quantization")
    quant = lazy_import("onnxruntime.quantization", purpose="ONNX Runtime quantization")
    calibrate = lazy_import("onnxruntime.quantization.calibrate")
    qdq = lazy_import("onnxruntime.quantization.qdq_quantizer")
    shape_infer = lazy_import("onnxruntime.quantization.quant_utils")

    _, floats = quantizable_layers(model, recipe, float_layers=float_layers)
    symmetric = recipe.activations.symmetric
    data = {
        name: calibrate.TensorData(
            lowest=np.float32(-r.amax if symmetric else r.low), highest=np.float32(r.amax if symmetric else r.high)
        )
        for name, r in ranges.items()
    }
    tensors_range = calibrate.TensorsData(quant.CalibrationMethod.MinMax, data)
    dtype = {QuantDType.INT8: quant.QuantType.QInt8, QuantDType.UINT8: quant.QuantType.QUInt8}
    prepared = shape_infer.save_and_reload_model_with_shape_infer(model)
    quantizer = qdq.QDQQuantizer(
        prepared,
        recipe.weights.per_channel,
        # reduce_range (7-bit weights) trades accuracy against int16 saturation on non-VNNI CPUs;
        # accuracy is measured instead
        False,
        dtype[recipe.weights.dtype],
        dtype[recipe.activations.dtype],
        tensors_range,
        [],
        floats,
        list(recipe.placement.op_types),
        {"ActivationSymmetric": symmetric, "WeightSymmetric": recipe.weights.symmetric},
    )
    quantizer.quantize_model()
    out = topological_sort(quantizer.model.model)
    onnx.checker.check_model(out)
    return out


class OnnxRuntimeQdqWriter(ModelWriter):
    """``output = "qdq-onnxruntime"``: ONNX Runtime's own QDQ writer, with ranges of every float activation."""

    name = "qdq-onnxruntime"

    def tensors(self, model: Any, recipe: Recipe) -> list[str]:
        return float_activations(model)

    def layers(self, model: Any, recipe: Recipe) -> list[str]:
        return quantizable_layers(model, recipe)[0]

    def build(self, model: Any, ranges: dict[str, TensorRange], recipe: Recipe, float_layers: Iterable[str]) -> Any:
        return write(model, ranges, recipe, float_layers=float_layers)


WRITER = OnnxRuntimeQdqWriter()
