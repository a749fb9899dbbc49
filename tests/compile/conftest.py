"""A small run with real (tiny) ONNX files and a calibration cache, as the export and quantize stages record them."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from edge_tl.runs import Run

FIXTURES = Path(__file__).parent / "fixtures"


def _tiny_onnx(path: Path, *, fp16: bool = False, qdq: bool = False, opset: int = 17, dynamic: bool = True) -> None:
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    np_dtype = np.float16 if fp16 else np.float32
    batch = "batch" if dynamic else 1
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])
    weight = numpy_helper.from_array(np.full((4, 3, 1, 1), 0.5, dtype=np_dtype), "w")
    nodes, inits = [], [weight]
    src = "input"
    if fp16:
        nodes.append(helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16))
        src = "x16"
    if qdq:
        # Both inputs of the Conv through Q/DQ, as quantize writes them: an INT8 convolution to TensorRT.
        inits = [
            numpy_helper.from_array(np.array(0.02, dtype=np.float32), "s"),
            numpy_helper.from_array(np.array(0, dtype=np.int8), "z"),
            numpy_helper.from_array(np.full((4, 3, 1, 1), 127, dtype=np.int8), "wq"),
            numpy_helper.from_array(np.array(0.5 / 127, dtype=np.float32), "ws"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", [src, "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"]),
            helper.make_node("DequantizeLinear", ["wq", "ws", "z"], ["w"]),
        ]
        src = "xdq"
    nodes += [
        helper.make_node("Conv", [src, "w"], ["c"]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f" if fp16 else "logits"]),
    ]
    if fp16:
        nodes.append(helper.make_node("Cast", ["f"], ["logits"], to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def _details(opset: int = 17, dynamic: bool = True) -> dict:
    return {
        "input_name": "input",
        "output_name": "logits",
        "input_shape": ["batch" if dynamic else 1, 3, 8, 8],
        "opset": opset,
        "dynamic_batch": dynamic,
    }


def make_run(
    root: Path, *, with_qdq: bool = True, with_cache: bool = True, opset: int = 17, dynamic: bool = True
) -> Run:
    run = Run.create(root, classes=["a", "b", "c", "d"])
    _tiny_onnx(root / "export/model.fp32.onnx", opset=opset, dynamic=dynamic)
    run.add_artifact(
        "onnx-fp32",
        kind="onnx",
        path="export/model.fp32.onnx",
        stage="export",
        precision="fp32",
        details=_details(opset, dynamic),
    )
    _tiny_onnx(root / "export/model.fp16.onnx", fp16=True, opset=opset, dynamic=dynamic)
    run.add_artifact(
        "onnx-fp16",
        kind="onnx",
        path="export/model.fp16.onnx",
        stage="export",
        precision="fp16",
        details=_details(opset, dynamic),
    )
    if with_qdq:
        _tiny_onnx(root / "quantize/tensorrt-int8-qdq/model.int8.onnx", qdq=True, opset=opset, dynamic=dynamic)
        run.add_artifact(
            "onnx-int8-tensorrt-int8-qdq",
            kind="onnx",
            path="quantize/tensorrt-int8-qdq/model.int8.onnx",
            stage="quantize",
            precision="int8",
            details=_details(opset, dynamic),
        )
        import onnx

        from edge_tl.quantize.fp16_float import float_part_to_fp16

        half, _ = float_part_to_fp16(onnx.load(str(root / "quantize/tensorrt-int8-qdq/model.int8.onnx")))
        onnx.save(half, root / "quantize/tensorrt-int8-qdq/model.int8.fp16.onnx")
        run.add_artifact(
            "onnx-int8-tensorrt-int8-qdq-fp16",
            kind="onnx",
            path="quantize/tensorrt-int8-qdq/model.int8.fp16.onnx",
            stage="quantize",
            precision="int8",
            details={**_details(max(opset, 19), dynamic), "opset": max(opset, 19)},
        )
    if with_cache:
        cache = root / "quantize/tensorrt-int8-cache/calibration.cache"
        cache.parent.mkdir(parents=True, exist_ok=True)
        scale = struct.pack(">f", 2.0 / 127).hex()
        # 8602: TensorRT 8.6.2 (JetPack 6.0), major*1000 + minor*100 + patch (include/NvInferRuntimeBase.h, release/8.6)
        cache.write_text(f"TRT-8602-EntropyCalibration2\ninput: {scale}\nc: {scale}\n")
        run.add_artifact(
            "calib-cache-tensorrt-int8-cache", kind="calibration-cache", path=cache, stage="quantize", precision="int8"
        )
    return run


@pytest.fixture
def plan_run(tmp_path: Path) -> Run:
    return make_run(tmp_path / "run")


@pytest.fixture
def run_factory():
    """``run_factory(root, with_qdq=..., with_cache=..., opset=..., dynamic=...)`` -> a run."""
    return make_run


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
