"""Which ONNX operators of a model DLA cannot take, before a DLA build, per TensorRT release.

DLA runs a fixed set of layers; everything else falls back to the GPU under
``--allowGPUFallback``. The operator list below follows NVIDIA's "DLA Supported Layers
and Restrictions" (TensorRT developer guide,
https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/dla-layer-restrictions.html):
Activation (ReLU, Sigmoid, TanH, Clip, LeakyReLU), Parametric ReLU, Comparison, Concatenation,
Convolution and FullyConnected, Deconvolution, ElementWise, LRN, Pooling, Reduce (max),
Resize, Scale (BatchNormalization), Shuffle, Slice, SoftMax, Unary (Abs) and, for strongly
typed DLA builds, Quantize/Dequantize. The check is per operator type: a supported type can
still fall back for a restriction on its parameters (kernel sizes, batch, dimensions), which
only the build on the device decides; the build script then counts where layers really ran.

Three operators are not the same on every release, and TensorRT's own sources disagree on them
(:func:`dla_verdict` says which source says what):

* ``Div`` and ``Pow`` become ElementWise kDIV / kPOW. ``include/NvInfer.h`` says "DLA supports only
  kSUM, kPROD, kMAX, kMIN, and kSUB" (``IElementWiseLayer::setOperation``, release/8.2, 8.5, 10.3
  and 11.0 alike); NVIDIA's DLA layer table for 10.x lists Div and Pow, and its operator reference
  allows POW only with a constant operand and DIV with at most one. On 8.x both are GPU layers; on
  10.x and later, a Pow with a constant exponent and a Div are *disputed*; a Pow of two computed
  tensors stays on the GPU by every source.
* ``GlobalAveragePool`` is imported as an IReduceLayer kAVG, not as a Pooling layer
  (onnx/onnx-tensorrt ``builtin_op_importers.cpp`` 8.0-GA to 8.6-GA, ``onnxOpImporters.cpp``
  10.0-GA and later: ``globalPoolingHelper(..., ReduceOperation::kAVG)``), and DLA's Reduce runs
  max only, while average Pooling is DLA's: disputed on every release.

A disputed operator is neither promised to DLA nor counted as a GPU fallback: the plan lists it
apart, and the engine's own layer report (where each layer ran) decides.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Any

from edge_tl._lazy import lazy_import
from edge_tl.targets import TrtVersion

DLA_LAYERS_SOURCE = "https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/dla-layer-restrictions.html"

# ONNX operator types that map onto a DLA-supported TensorRT layer on every release (module docstring).
DLA_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "Relu",
        "Sigmoid",
        "Tanh",
        "Clip",
        "LeakyRelu",
        "PRelu",
        "Add",
        "Sub",
        "Mul",
        "Max",
        "Min",
        "Equal",
        "Greater",
        "Less",
        "Concat",
        "MaxPool",
        "AveragePool",
        "GlobalMaxPool",
        "LRN",
        "ReduceMax",
        "BatchNormalization",
        "Resize",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Slice",
        "Softmax",
        "Abs",
        "QuantizeLinear",
        "DequantizeLinear",
        # no layer of their own: folded into a neighbour or into the weights
        "Identity",
        "Constant",
    }
)

_HEADER = (
    'include/NvInfer.h, IElementWiseLayer::setOperation: "DLA supports only kSUM, kPROD, kMAX, kMIN, and kSUB" '
    "(release/8.2, 8.5, 10.3, 11.0)"
)
_OPERATOR_REFERENCE = (
    "NVIDIA's TensorRT 10.x DLA layer table (ElementWise: Sum, Sub, Product, Max, Min, Div, Pow) and operator "
    "reference (POW with one constant input, DIV with at most one)"
)
_GAP = (
    "onnx-tensorrt imports GlobalAveragePool as an IReduceLayer kAVG (builtin_op_importers.cpp 8.0-GA to 8.6-GA, "
    "onnxOpImporters.cpp 10.0-GA on), DLA's Reduce runs max only, average Pooling is DLA's"
)


class Verdict(str, Enum):
    DLA = "dla"  # every source puts it on DLA
    GPU = "gpu"  # every source that speaks of it puts it on the GPU
    DISPUTED = "disputed"  # the sources disagree: the engine's layer report decides


@dataclass(frozen=True)
class DlaPrediction:
    """What the plan expects of a DLA build: GPU fallbacks and disputed operators, ``{op_type: count}``."""

    gpu: dict[str, int]
    disputed: dict[str, int]
    reasons: dict[str, str]  # op_type -> the sources behind its verdict (disputed and rule-based GPU ones)


def dla_verdict(op_type: str, tensorrt: TrtVersion, *, constant_inputs: int = 0) -> tuple[Verdict, str]:
    """Where ``op_type`` runs in a DLA build on ``tensorrt``, and the sources that say so.

    ``constant_inputs``: how many of the node's inputs are initializers or Constant outputs.
    """
    if op_type in ("Div", "Pow"):
        if tensorrt.major < 10:
            return Verdict.GPU, _HEADER
        if op_type == "Pow" and constant_inputs == 0:
            return Verdict.GPU, f"{_HEADER}; {_OPERATOR_REFERENCE}: a Pow of two computed tensors is not DLA's"
        return Verdict.DISPUTED, f"{_HEADER}; but {_OPERATOR_REFERENCE}"
    if op_type == "GlobalAveragePool":
        return Verdict.DISPUTED, _GAP
    if op_type in DLA_OPS:
        return Verdict.DLA, DLA_LAYERS_SOURCE
    return Verdict.GPU, f"not a DLA layer type ({DLA_LAYERS_SOURCE})"


def _constants(graph: Any) -> set[str]:
    names = {init.name for init in graph.initializer}
    names.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    return names


def predict_dla(onnx_path: str | os.PathLike[str], *, tensorrt: TrtVersion) -> DlaPrediction:
    """The model's operators that a DLA build on ``tensorrt`` puts on the GPU, and those the sources dispute."""
    onnx = lazy_import("onnx", purpose="listing which layers DLA cannot run")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    constants = _constants(graph)
    gpu: Counter[str] = Counter()
    disputed: Counter[str] = Counter()
    reasons: dict[str, str] = {}
    for node in graph.node:
        verdict, why = dla_verdict(
            node.op_type, tensorrt, constant_inputs=sum(1 for name in node.input if name in constants)
        )
        if verdict is Verdict.DLA:
            continue
        (gpu if verdict is Verdict.GPU else disputed)[node.op_type] += 1
        reasons.setdefault(node.op_type, why)
    return DlaPrediction(dict(sorted(gpu.items())), dict(sorted(disputed.items())), dict(sorted(reasons.items())))


def gpu_fallback_ops(onnx_path: str | os.PathLike[str], *, tensorrt: TrtVersion) -> dict[str, int]:
    """``{op_type: count}`` of the model's operators DLA does not take on ``tensorrt`` (they run on the GPU)."""
    return predict_dla(onnx_path, tensorrt=tensorrt).gpu
