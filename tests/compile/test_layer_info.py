"""The engine's own per-layer report: real published layer-information files, and every local build.

The fixtures in tests/compile/fixtures/layer_info/ are NVIDIA's own detailed ``--exportLayerInfo`` exports
(TensorRT Engine Explorer examples, NVIDIA/TensorRT release/10.3; SOURCE.md there names each file).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from edge_tl.compile import CompileRequest, compile_run, make_plan
from edge_tl.compile.api import BuildMode, layer_report, run_build_script
from edge_tl.errors import RunError
from edge_tl.runs import Run
from edge_tl.targets import Precision, load_target
from edge_tl.trt.layers import parse_layer_info, precision_of, summarize
from edge_tl.trt.sidecar import read_sidecar

HERE = Path(__file__).parent
LAYER_INFO = HERE / "fixtures" / "layer_info"
STANDIN = HERE.parent / "deploy" / "standin_trtexec.py"
_spec = importlib.util.spec_from_file_location("standin_trtexec", STANDIN)
standin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(standin)

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _summary(name: str, precision: str, recipe: str | None = None) -> dict:
    layers = parse_layer_info((LAYER_INFO / name).read_text(), where=name)
    return summarize(layers, precision=precision, dla=False, recipe=recipe, source=name)


def test_published_resnet18_engines_report_their_precision_and_macs() -> None:
    # ResNet-18 at batch 32, 224 px: 32 x 1.814 GMACs in its 20 convolutions and the FC (TensorRT's 1x1 conv).
    resnet_macs = 58_050_347_008
    fp32 = _summary("trex-resnet-a100-fp32.graph.json", "fp32")
    assert fp32["compute_layers"] == {"fp32": 21} and fp32["compute_macs"] == {"fp32": resnet_macs}
    assert fp32["non_int8_share"] is None and fp32["fp32_share"] is None and fp32["findings"] == []
    fp16 = _summary("trex-resnet-a100-fp16.graph.json", "fp16")
    assert fp16["compute_layers"] == {"fp16": 21} and fp16["fp32_share"] == 0.0 and fp16["findings"] == []
    qat = _summary("trex-resnet-a100-qat.graph.json", "int8", "tensorrt-int8-qdq")
    assert qat["compute_layers"] == {"int8": 21} and qat["compute_macs"] == {"int8": resnet_macs}
    assert qat["non_int8_share"] == 0.0 and qat["findings"] == []
    # The one layer NVIDIA's QAT engine runs in FP32: the stem's max-pool, between the Q/DQ-wrapped convolutions.
    assert qat["fp32_layers"] == ["MaxPool_12"]


def test_published_mobilenet_v2_qat_engine_is_all_int8() -> None:
    qat = _summary("trex-mobilenet-qat-titanrtx.graph.json", "int8", "tensorrt-int8-qdq")
    assert qat["layers"] == 73 and qat["compute_layers"] == {"int8": 53}
    assert qat["compute_macs"] == {"int8": 300_774_272}  # MobileNetV2 at 224 px: 0.30 GMACs
    assert qat["fp32_layers"] == [] and qat["findings"] == []


def test_format_strings_and_weight_types_map_to_one_precision() -> None:
    assert precision_of("Thirty-two wide channel vectorized row major Int8 format") == "int8"
    assert precision_of("Channel major FP16 format where channel % 8 == 0") == "fp16"
    assert precision_of("Row major linear FP32") == "fp32"
    assert precision_of("Half") == "fp16" and precision_of("Float") == "fp32" and precision_of("Int8") == "int8"
    assert precision_of("N/A due to dynamic shapes") == "unknown"


def test_a_names_only_export_is_refused_with_the_fix() -> None:
    # The default verbosity (layer_names_only, sampleOptions.cpp) lists names only, as in the published
    # farabimahmud/detr-logs-trtexec detr-layer-info.json: {"Layers": ["... Conv + ... + Relu", ...]}.
    with pytest.raises(RunError, match=r"names the layers only .* --profilingVerbosity=detailed"):
        parse_layer_info(json.dumps({"Layers": ["conv1 + relu1", "fc"]}), where="x.json")
    with pytest.raises(RunError, match='no "Layers" list'):
        parse_layer_info("[]", where="x.json")


def _two_conv_model(path: Path) -> None:
    """Conv a (Q/DQ-wrapped, INT8) then Conv b kept in float by quantize, 16 -> 16 channels, 3x3."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array(0.02, dtype=np.float32), "s"),
        numpy_helper.from_array(np.array(0, dtype=np.int8), "z"),
        numpy_helper.from_array(np.ones((16, 3, 3, 3), dtype=np.int8), "wa_q"),
        numpy_helper.from_array(np.array(0.01, dtype=np.float32), "ws"),
        numpy_helper.from_array(np.full((16, 16, 3, 3), 0.01, dtype=np.float32), "wb"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s", "z"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["wa_q", "ws", "z"], ["wa"], name="dq_wa"),
        helper.make_node("Conv", ["xdq", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "wb"], ["logits"], name="conv_b", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "two",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 16, 8, 8])],
        initializer=inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_a_build_that_leaves_fp32_layers_is_caught(tmp_path: Path) -> None:
    """The stand-in derives each layer's precision from the ONNX and flags as TensorRT does: the FP32 Q/DQ
    ONNX built strongly typed (what the 10.x Python builder once did) runs the kept-float Conv in FP32."""
    onnx_path = tmp_path / "two.onnx"
    _two_conv_model(onnx_path)
    macs_a, macs_b = 16 * 64 * 27, 16 * 64 * 144

    def report(opts: dict) -> dict:
        layers = parse_layer_info(standin.layer_info(str(onnx_path), release=(10, 3), opts=opts), where="two")
        return summarize(
            layers, precision="int8", dla=False, recipe="tensorrt-int8-qdq", kept_float=("conv_b",), source="standin"
        )

    planned = report({"int8": "", "fp16": ""})  # the plan's --int8 --fp16 on 10.x
    assert planned["compute_macs"] == {"int8": macs_a, "fp16": macs_b}
    assert planned["non_int8_share"] == 0.0 and planned["findings"] == []  # conv_b is the kept float layer
    strongly = report({"stronglyTyped": ""})
    assert strongly["compute_macs"] == {"int8": macs_a, "fp32": macs_b}
    assert strongly["fp32_layers"] == ["conv_b"]
    assert strongly["findings"] == [
        f"{macs_b * 100 / (macs_a + macs_b):.1f}% of the Conv/Gemm/MatMul macs run FP32 in a INT8 engine (limit 5%)"
    ]
    # Without the quantize record's kept-float list, the same FP16 Conv is INT8 work left undone.
    layers = parse_layer_info(
        standin.layer_info(str(onnx_path), release=(10, 3), opts={"int8": "", "fp16": ""}), where="x"
    )
    unkept = summarize(layers, precision="int8", dla=False, recipe="tensorrt-int8-qdq", source="standin")
    assert unkept["non_int8_share"] == round(macs_b / (macs_a + macs_b), 6)
    assert unkept["findings"][0].startswith("84.2% of the Conv/Gemm/MatMul macs run outside INT8 (limit 5% for")
    # The calibration-cache recipe has its own, wider limit (TensorRT picks FP16 per layer where faster).
    cache = summarize(layers, precision="int8", dla=False, recipe="tensorrt-int8-cache", source="standin")
    assert cache["findings"][0].startswith("84.2% of the Conv/Gemm/MatMul macs run outside INT8 (limit 50% for")


def _standin_on_path(tmp_path: Path, fixtures: Path, banner: str) -> Path:
    text = (fixtures / "trtexec-10.16-rtx6000-ada.log").read_text().replace("v101600", banner)
    log = tmp_path / f"{banner}.log"
    log.write_text(text)
    wrapper = tmp_path / "bin" / "trtexec"
    wrapper.parent.mkdir(exist_ok=True)
    wrapper.write_text(
        "#!/usr/bin/env bash\n"
        f"STANDIN_TRTEXEC_LOG={log} STANDIN_TRTEXEC_OPTIONS={HERE / 'trtexec_options'} "
        f'exec {sys.executable} {STANDIN} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


@needs_bash
@pytest.mark.parametrize(
    ("target", "release", "banner", "dla", "expected"),
    [
        ("ada", "10.3.0", "v100300", False, {"int8": 1}),
        ("jetson-agx-orin-64gb", "8.6.2", "v8602", True, {"int8": 1}),
    ],
)
def test_every_trtexec_build_records_its_layer_report(
    plan_run: Run, tmp_path: Path, fixtures_dir: Path, monkeypatch, target, release, banner, dla, expected
) -> None:
    result = compile_run(
        plan_run,
        target=target,
        request=CompileRequest(precision=Precision.INT8, dla=dla, tensorrt=release),
        mode=BuildMode.PLAN,
    )
    monkeypatch.setenv("TRTEXEC", str(_standin_on_path(tmp_path, fixtures_dir, banner)))
    monkeypatch.chdir(plan_run.root)
    record = run_build_script(plan_run, result.plan)
    report = record.details["layer_report"]
    assert report == read_sidecar(plan_run.path(record.path)).layer_report
    assert report["compute_layers"] == expected and report["compute_macs"] == {"int8": 768}
    assert report["findings"] == [] and report["fp32_layers"] == []
    assert report["dla_subgraphs"] == (1 if dla else 0) and report["gpu_fallbacks"] == []
    assert report["source"] == f"trtexec --exportLayerInfo ({result.plan.directory}/layers.json)"
    if dla:
        assert record.details["layers"] == {
            "dla_subgraphs": 1,
            "gpu_layers": 0,
        }  # the build script's [DlaLayer] count agrees


def test_layer_report_of_the_python_builder_names_its_source(plan_run: Run) -> None:
    plan = make_plan(plan_run, load_target("ada"), CompileRequest(precision=Precision.FP16, tensorrt="10.3.0"))
    info = standin.layer_info(str(plan_run.path(plan.spec.onnx)), release=(10, 3), opts={"fp16": ""})
    report = layer_report(plan_run, plan, info, build_log="", source="IEngineInspector (JSON)")
    assert report["source"] == "IEngineInspector (JSON)" and report["compute_layers"] == {"fp16": 1}
    assert os.fspath(plan.spec.export_layer_info).endswith("layers.json")


def test_docs_deploy_shows_the_parse_of_the_published_engine() -> None:
    """docs/deploy.md's per-layer report block runs as written and prints what the page says."""
    import re
    import subprocess

    root = HERE.parents[1]
    text = (root / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = text[text.index("## The engine's own per-layer report") :]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    shown = re.search(r"```text\n(.*?)```", section, flags=re.S).group(1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == shown
    assert "compute_macs: {'int8': 58050347008}" in shown


def test_dla_fallbacks_the_plan_did_not_predict_are_flagged() -> None:
    from edge_tl.trt.layers import EngineLayer

    subgraph = "{ForeignNode[conv_a...conv_b]}"
    layers = [
        EngineLayer(subgraph, "", "", "int8", True, False, None),
        EngineLayer("softmax", "SoftMax", "SoftMax", "fp16", False, False, None),
        EngineLayer("Reformatting CopyNode for Input Tensor 0", "Reformat", "Reformat", "fp16", False, False, None),
    ]
    nodes = [("conv_a", "Conv", 100), ("relu", "Relu", None), ("conv_b", "Conv", 300), ("softmax", "Softmax", None)]

    def run(predicted):
        return summarize(
            layers, precision="int8", dla=True, recipe="tensorrt-int8-cache", onnx_nodes=nodes,
            predicted_gpu_ops=predicted, source="x",
        )  # fmt: skip

    unpredicted = run({})
    assert unpredicted["compute_layers"] == {"int8": 2} and unpredicted["compute_macs"] == {"int8": 400}
    assert unpredicted["dla_subgraphs"] == 1 and unpredicted["gpu_fallbacks"] == ["softmax"]
    assert unpredicted["findings"] == ["1 layer(s) fell back to the GPU that the plan did not predict: softmax"]
    assert run({"Softmax": 1})["findings"] == []


def test_standin_layer_info_has_the_keys_of_its_release(plan_run: Run) -> None:
    """8.x exports carry no StreamId/Metadata (NVIDIA's 8.x TREx files); 10.x adds them per layer."""
    published = json.loads((LAYER_INFO / "trex-resnet-a100-qat.graph.json").read_text())["Layers"]
    assert not {"StreamId", "Metadata"} & {k for layer in published for k in layer}
    onnx_path = str(plan_run.path("export/model.fp32.onnx"))
    old = json.loads(standin.layer_info(onnx_path, release=(8, 4), opts={"fp16": ""}))["Layers"]
    new = json.loads(standin.layer_info(onnx_path, release=(10, 3), opts={"fp16": ""}))["Layers"]
    assert not {"StreamId", "Metadata"} & {k for layer in old for k in layer}
    assert all({"Origin", "StreamId", "Metadata"} <= set(layer) for layer in new)
    assert [layer["Name"] for layer in old] == ["node_of_c", "node_of_p", "node_of_logits"]
