"""The ONNX Runtime runner opens a model from bytes as from a file: same outputs, same rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edge_tl.errors import ConfigError, RunError  # noqa: E402
from edge_tl.runtime import Device, RunnerOptions  # noqa: E402
from edge_tl.runtime.onnxruntime_runner import GraphOptimization, OnnxRuntimeRunner, has_fp16_qdq  # noqa: E402

CPU = RunnerOptions(device=Device.CPU, threads=1)


def _conv(batch: int | str = "n", size: int = 4) -> onnx.ModelProto:
    """A 3x3 convolution (3 -> 2 channels) on (batch, 3, size, size)."""
    weight = np.random.default_rng(0).standard_normal((2, 3, 3, 3)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2, size, size])
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "conv", [x], [y], [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_bytes_run_as_the_file_does(tmp_path: Path) -> None:
    model = _conv(batch=2)
    path = tmp_path / "conv.onnx"
    onnx.save(model, str(path))
    images = np.random.default_rng(1).standard_normal((5, 3, 4, 4), dtype=np.float32)
    with OnnxRuntimeRunner(path, options=CPU) as from_file:
        expected = from_file.run(images)
        assert from_file.describe()["path"] == str(path)
    with OnnxRuntimeRunner(model.SerializeToString(), name="candidate", options=CPU) as from_bytes:
        assert from_bytes.input_spec == from_file.input_spec and from_bytes.input_spec.batch == 2
        np.testing.assert_array_equal(from_bytes.run(images), expected)  # 2 + 2 + 1, padded like the file
        info = from_bytes.describe()
    assert (info["name"], info["path"], info["providers"], info["threads"]) == (
        "candidate",
        None,
        ["CPUExecutionProvider"],
        1,
    )
    assert OnnxRuntimeRunner(model.SerializeToString()).name == "in-memory model"


def test_bytes_errors_name_the_model() -> None:
    with pytest.raises(RunError, match=r"ONNX Runtime cannot load in-memory ONNX model 'broken' \("):
        with OnnxRuntimeRunner(b"not an onnx model", name="broken", options=CPU):
            pass
    dynamic = _conv(size="s")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^in-memory ONNX model 'free' has a dynamic image size"):
        with OnnxRuntimeRunner(dynamic.SerializeToString(), name="free", options=CPU):
            pass


def test_an_fp16_scale_qdq_graph_runs_as_written_from_bytes_too(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["n", 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["n", 3, 4, 4])
    scale = numpy_helper.from_array(np.array(0.05, np.float16), "scale")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "qdq16", [x], [y], [scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    assert has_fp16_qdq(model.SerializeToString()) and not has_fp16_qdq(_conv().SerializeToString())
    from_bytes = OnnxRuntimeRunner(model.SerializeToString(), optimization=GraphOptimization.ALL)
    assert from_bytes.optimization is GraphOptimization.DISABLED
    assert OnnxRuntimeRunner(_conv().SerializeToString()).optimization is GraphOptimization.ALL
