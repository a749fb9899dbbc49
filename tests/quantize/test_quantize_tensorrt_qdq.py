"""tensorrt-int8-qdq on a real run: the graph follows TensorRT's rules and keeps accuracy under ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# Light to import: onnx and onnxruntime are imported when a quantization runs.
from edge_tl.quantize import QuantizeConfig, quantize_run
from edge_tl.quantize.graph import residual_skip_inputs
from edge_tl.quantize.qdq_tensorrt import check_tensorrt_qdq
from edge_tl.runs import Run

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

WEIGHTED = ("Conv", "Gemm", "MatMul")


@pytest.fixture(scope="module")
def trt_run(exported_run: Path, tmp_path_factory: pytest.TempPathFactory):
    import shutil

    root = Path(shutil.copytree(exported_run, tmp_path_factory.mktemp("trt") / "run"))
    result = quantize_run(root, config=QuantizeConfig(recipe="tensorrt-int8-qdq", calib_samples=64, threads=1))
    return root, result


def _walk(model) -> dict:
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return {"inits": inits, "producer": producer, "readers": readers}


def test_graph_follows_tensorrt_rules(trt_run) -> None:
    root, _ = trt_run
    run = Run.open(root)
    model = onnx.load(str(run.artifact_path("onnx-int8-tensorrt-int8-qdq")))
    fp32 = onnx.load(str(run.artifact_path("onnx-fp32")))
    g = _walk(model)
    inits, producer, readers = g["inits"], g["producer"], g["readers"]

    qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    # Zero points: INT8 zeros everywhere (symmetric).
    for node in qs + dqs:
        zp = inits[node.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), node.name

    weighted = [n for n in model.graph.node if n.op_type in WEIGHTED]
    assert len(weighted) == sum(n.op_type in WEIGHTED for n in fp32.graph.node)
    for node in weighted:
        x_dq, w_dq = producer[node.input[0]], producer[node.input[1]]
        assert x_dq.op_type == "DequantizeLinear" and w_dq.op_type == "DequantizeLinear", node.name
        # Activation: per-tensor scale, fed by a QuantizeLinear of a float tensor.
        assert inits[x_dq.input[1]].size == 1
        assert producer[x_dq.input[0]].op_type == "QuantizeLinear"
        # Weight: an INT8 initializer with one scale per output channel on axis 0.
        q_w = inits[w_dq.input[0]]
        axis = {a.name: a.i for a in w_dq.attribute}.get("axis", 1)
        assert q_w.dtype == np.int8 and axis == 0
        assert inits[w_dq.input[1]].shape == (q_w.shape[0],)
        # Bias: still a float initializer, not quantized.
        if len(node.input) > 2 and node.input[2]:
            assert node.input[2] in inits and inits[node.input[2]].dtype == np.float32
            assert node.input[2] not in producer

    # No Q/DQ on anything but weighted-op inputs and residual skips: a weighted op's output
    # reaches a QuantizeLinear only where it is the next weighted op's input.
    skips = residual_skip_inputs(model)
    for q in qs:
        (dq,) = readers[q.output[0]]
        for reader in readers[dq.output[0]]:
            assert reader.op_type in WEIGHTED or reader.name in skips, (q.name, reader.op_type)
    # Every residual Add reads its skip input through Q/DQ and its branch input in float.
    assert skips, "efficientnet_lite0 has residual blocks"
    for add in (n for n in model.graph.node if n.name in skips):
        kinds = [producer[i].op_type for i in add.input]
        assert kinds.count("DequantizeLinear") == 1, (add.name, kinds)
    # One Q/DQ pair per quantized tensor, shared by its readers.
    assert len({q.input[0] for q in qs}) == len(qs)
    assert check_tensorrt_qdq(model) == []


def test_accuracy_under_onnxruntime_within_one_point(trt_run) -> None:
    root, result = trt_run
    assert result.reference_top1 > 0.9  # a trained model, so the comparison means something
    assert result.drop_points <= 1.0, result
    record = Run.open(root).artifact("onnx-int8-tensorrt-int8-qdq")
    assert record.kind == "onnx" and record.precision == "int8" and record.details["source"] == "onnx-fp32"
    assert record.details["input_name"] == "input" and record.details["output_name"] == "logits"
    assert record.metrics["accuracy_drop_points"] == pytest.approx(result.drop_points)
    assert record.details["float_layers"] == [] and record.details["status"] == "no-budget"
    # Check the recorded number independently: run the file on the validation split.
    from edge_tl.data import iter_batches, split_from_run
    from edge_tl.models import Preprocessing

    run = Run.open(root)
    prep = Preprocessing.from_dict(run.require("preprocessing"))
    session = ort.InferenceSession(str(run.artifact_path(record.name)), providers=["CPUExecutionProvider"])
    correct = total = 0
    for images, labels in iter_batches(list(split_from_run(run).val), prep, 64):
        correct += int((session.run(None, {"input": images})[0].argmax(1) == labels).sum())
        total += len(labels)
    assert correct / total == pytest.approx(result.top1)
