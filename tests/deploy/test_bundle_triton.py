"""`edge-tl bundle --triton`: config.pbtxt parsed with Triton's own schema (tritonclient's
model_config_pb2, google.protobuf.text_format) and every field held against the ONNX and the
engine's build plan."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
text_format = pytest.importorskip("google.protobuf.text_format")

from edge_tl.cli.main import main  # noqa: E402


def _model_config_pb2():
    """Triton's ModelConfig schema. Loaded from its file: tritonclient.grpc's package __init__ needs
    the grpc extra (which pins protobuf < 7), while model_config_pb2 itself needs only protobuf;
    .ci/run installs tritonclient with --no-deps."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tritonclient is not installed (pip install --no-deps tritonclient)")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_copy(deployable_run, tmp_path) -> Path:
    return Path(shutil.copytree(deployable_run, tmp_path / "my run"))


def _bundle(capsys, run: Path, target: str, precision: str, out: Path) -> str:
    args = ["bundle", str(run), "--target", target, "--precision", precision, "--eval-images", "8"]
    with pytest.raises(SystemExit) as info:
        main([*args, "--out", str(out), "--triton"])
    printed = capsys.readouterr()
    assert info.value.code == 0, printed.out + printed.err
    return printed.out


def _parse(path: Path):
    pb2 = _model_config_pb2()
    return pb2, text_format.Parse(path.read_text(), pb2.ModelConfig())


def _io(path: Path) -> tuple[list, list]:
    graph = onnx.load(str(path)).graph
    weights = {i.name for i in graph.initializer}
    return [v for v in graph.input if v.name not in weights], list(graph.output)


def _dims(value) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def _check_tensors(pb2, config, onnx_path: Path) -> None:
    inputs, outputs = _io(onnx_path)
    for declared, tensors in ((config.input, inputs), (config.output, outputs)):
        assert [t.name for t in declared] == [v.name for v in tensors]
        for t, v in zip(declared, tensors):
            assert _dims(v)[0] == "batch"  # the bundled ONNX is exported with a dynamic batch
            assert list(t.dims) == _dims(v)[1:]  # with batching, Triton's dims leave the batch out
            assert pb2.DataType.Name(t.data_type) == "TYPE_FP32"
            assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_onnxruntime_bundle_is_a_triton_repository_for_its_onnx(run_copy, tmp_path, capsys):
    out = tmp_path / "b"
    printed = _bundle(capsys, run_copy, "x86-64", "fp32", out)
    manifest = json.loads((out / "bundle.json").read_text())
    folder = out / "triton" / "my_run"
    assert manifest["triton"] == {
        "dir": "triton/my_run",
        "platform": "onnxruntime_onnx",
        "model": "triton/my_run/1/model.onnx",
        "max_batch_size": 8,
    }
    pb2, config = _parse(folder / "config.pbtxt")
    assert config.name == "my_run" and config.platform == "onnxruntime_onnx"
    # A dynamic-batch ONNX takes any batch: the range edge-tl plans engines for (compile's DEFAULT_BATCH).
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    shipped = out / manifest["model"]["path"]
    assert (folder / "1" / "model.onnx").read_bytes() == shipped.read_bytes()
    _check_tensors(pb2, config, shipped)
    assert [o.label_filename for o in config.output] == ["labels.txt"]
    labels = (folder / "labels.txt").read_text().splitlines()
    assert labels == [str(c) for c in json.loads((run_copy / "manifest.json").read_text())["classes"]]
    assert len(labels) == config.output[0].dims[0] == 10
    assert f"max_batch_size 8); tritonserver --model-repository={out / 'triton'}" in printed
    # Listed in bundle.json like every other file, so the bundle verifies.
    assert {"triton/my_run/config.pbtxt", "triton/my_run/labels.txt", "triton/my_run/1/model.onnx"} <= set(
        manifest["files"]
    )


def test_tensorrt_bundle_configures_the_engine_built_on_the_device(run_copy, tmp_path, capsys):
    out = tmp_path / "b"
    _bundle(capsys, run_copy, "jetson-orin-nano-8gb", "fp16", out)
    manifest = json.loads((out / "bundle.json").read_text())
    plan = manifest["build_plan"]
    folder = out / "triton" / "my_run"
    pb2, config = _parse(folder / "config.pbtxt")
    assert config.platform == "tensorrt_plan"
    # max_batch_size is the largest batch of the engine's optimisation profile, which starts at 1.
    assert plan["batch"]["min"] == 1 and config.max_batch_size == plan["batch"]["max"] == 8
    assert config.HasField("dynamic_batching")
    _check_tensors(pb2, config, out / manifest["model"]["path"])
    # The engine is built on the device: not shipped, its build plan beside where it goes.
    assert not (folder / "1" / "model.plan").exists()
    assert (folder / "1" / "build_plan.json").read_bytes() == (out / plan["plan"]).read_bytes()
    notes = (folder / "README.txt").read_text()
    assert f"bash {plan['script']}" in notes and f"cp {plan['engine']} triton/my_run/1/model.plan" in notes
    assert manifest["triton"]["model"] == "triton/my_run/1/model.plan"


def test_bundle_without_triton_keeps_its_digest(run_copy, tmp_path):
    from edge_tl.deploy.bundle import make_bundle

    plain = make_bundle(run_copy, target="x86-64", precision="fp32", eval_images=8, out=tmp_path / "a")
    again = make_bundle(run_copy, target="x86-64", precision="fp32", eval_images=8, out=tmp_path / "b")
    assert "triton" not in plain.manifest and plain.digest == again.digest
    assert not (tmp_path / "a" / "triton").exists()


def test_a_tensor_name_the_config_cannot_quote_is_refused(tmp_path):
    from onnx import TensorProto, helper

    from edge_tl.deploy.triton import onnx_tensors
    from edge_tl.errors import RunError

    graph = helper.make_graph(
        [helper.make_node("Identity", ['in"put'], ["out"])],
        "g",
        [helper.make_tensor_value_info('in"put', TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(RunError, match="the tensor name 'in\"put' has a quote, backslash or non-ASCII character"):
        onnx_tensors(path)
