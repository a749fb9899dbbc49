"""torch -> ONNX: static 'same' padding, a clean opset-17 graph, FP16 with float32 I/O, exporters."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edge_tl.errors import ConfigError  # noqa: E402
from edge_tl.export.onnx_export import (  # noqa: E402
    Exporter,
    convert_to_fp16,
    export_torch_to_onnx,
    graph_op_types,
    io_signature,
)
from edge_tl.export.static_padding import make_same_padding_static  # noqa: E402

# What shape-dependent padding arithmetic exports to; none of it may survive.
SHAPE_ARITHMETIC = {
    "Shape",
    "Gather",
    "Ceil",
    "Div",
    "Sub",
    "Concat",
    "ConstantOfShape",
    "Slice",
    "Cast",
    "Reshape",
    "Pad",
}


def _lite0() -> "torch.nn.Module":
    torch.manual_seed(0)
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=4).eval()


def _ort(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.mark.parametrize("size", [64, 65])
def test_lite0_same_padding_becomes_static_and_exact(tmp_path, size: int) -> None:
    model = _lite0()
    x = torch.randn(2, 3, size, size)
    static = copy.deepcopy(model)
    assert make_same_padding_static(static, size) == 5  # the five strided depthwise/stem convs
    with torch.no_grad():
        assert torch.equal(static(x), model(x))
    proto = export_torch_to_onnx(static, tmp_path / "m.onnx", input_size=size)
    ops = graph_op_types(proto)
    assert not SHAPE_ARITHMETIC & set(ops), ops
    assert set(ops) == {"Conv", "Clip", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
    assert [i.version for i in proto.opset_import if i.domain in ("", "ai.onnx")] == [17]
    sig = io_signature(proto)
    assert sig["inputs"] == [{"name": "input", "shape": ["batch", 3, size, size], "dtype": "float32"}]
    assert sig["outputs"] == [{"name": "logits", "shape": ["batch", 4], "dtype": "float32"}]
    with torch.no_grad():
        np.testing.assert_allclose(_ort(tmp_path / "m.onnx", x.numpy()), model(x).numpy(), rtol=1e-3, atol=1e-4)


def test_static_padding_removes_shape_arithmetic_before_any_simplifier(tmp_path) -> None:
    # onnxslim folds the arithmetic too when H and W are fixed; the static layers make
    # the raw export free of it, so nothing depends on the simplifier catching it.
    model = _lite0()
    raw = graph_op_types(export_torch_to_onnx(model, tmp_path / "dyn.onnx", input_size=64, simplify_graph=False))
    assert {"Shape", "Gather", "Ceil"} <= set(raw)
    static = copy.deepcopy(model)
    make_same_padding_static(static, 64)
    raw_static = graph_op_types(export_torch_to_onnx(static, tmp_path / "st.onnx", input_size=64, simplify_graph=False))
    assert not {"Shape", "Gather", "Ceil"} & set(raw_static), raw_static


def test_same_pooling_layers_become_static() -> None:
    from timm.layers import create_pool2d

    for kind in ("max", "avg"):
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), create_pool2d(kind, 3, stride=2, padding="same")).eval()
        x = torch.randn(1, 3, 15, 15)
        static = copy.deepcopy(model)
        assert make_same_padding_static(static, 15) == 1
        with torch.no_grad():
            assert torch.allclose(static(x), model(x), atol=1e-6), kind


def test_models_without_same_padding_are_untouched() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1)).eval()
    assert make_same_padding_static(model, 16) == 0


def test_static_batch_and_fp16_keep_float32_io(tmp_path) -> None:
    model = copy.deepcopy(_lite0())
    make_same_padding_static(model, 32)
    proto = export_torch_to_onnx(model, tmp_path / "s.onnx", input_size=32, dynamic_batch=False, batch_size=3)
    assert io_signature(proto)["inputs"][0]["shape"] == [3, 3, 32, 32]
    half = convert_to_fp16(proto)  # checker passes: nodes are in topological order
    sig = io_signature(half)
    assert sig["inputs"][0]["dtype"] == "float32" and sig["outputs"][0]["dtype"] == "float32"
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in half.graph.initializer)
    half_io = io_signature(convert_to_fp16(proto, keep_io_types=False))
    assert half_io["inputs"][0]["dtype"] == "float16"


def test_dynamo_exporter_writes_opset_18_but_not_17(tmp_path) -> None:
    # Pad has no 18 -> 17 adapter in ONNX's version converter: the reason torchscript is the default.
    model = torch.nn.Sequential(
        torch.nn.ConstantPad2d((0, 1, 0, 1), 0.0),
        torch.nn.Conv2d(3, 4, 3, stride=2),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(2),
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x).numpy()
    proto = export_torch_to_onnx(model, tmp_path / "d18.onnx", input_size=8, exporter=Exporter.DYNAMO, opset=18)
    assert io_signature(proto)["inputs"][0]["shape"][0] == "batch"
    np.testing.assert_allclose(_ort(tmp_path / "d18.onnx", x.numpy()), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="torchscript"):
        export_torch_to_onnx(model, tmp_path / "d17.onnx", input_size=8, exporter=Exporter.DYNAMO, opset=17)


def test_opset_out_of_range_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="opset"):
        export_torch_to_onnx(_lite0(), tmp_path / "x.onnx", input_size=32, opset=7)
