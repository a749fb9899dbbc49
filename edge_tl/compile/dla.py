"""Which ONNX operators of a model DLA cannot take, before a DLA build.

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
"""

from __future__ import annotations

import os
from collections import Counter

from edge_tl._lazy import lazy_import

DLA_LAYERS_SOURCE = "https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/dla-layer-restrictions.html"

# ONNX operator types that map onto a DLA-supported TensorRT layer (see the module docstring).
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
        "Div",
        "Max",
        "Min",
        "Pow",
        "Equal",
        "Greater",
        "Less",
        "Concat",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
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


def gpu_fallback_ops(onnx_path: str | os.PathLike[str]) -> dict[str, int]:
    """``{op_type: count}`` of the model's operators DLA does not take (they run on the GPU)."""
    onnx = lazy_import("onnx", purpose="listing which layers DLA cannot run")
    model = onnx.load(str(onnx_path), load_external_data=False)
    counts = Counter(node.op_type for node in model.graph.node if node.op_type not in DLA_OPS)
    return dict(sorted(counts.items()))
