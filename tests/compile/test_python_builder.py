"""The Python builder carries out the plan's decision, on every release path, against a stand-in ``tensorrt``.

The stand-in (standin_tensorrt.py) has each release's enum values and names; the builder's network flags
and builder flags must be the plan's. The engine it "builds" reports its layers as a real build of the
same ONNX would, so a builder that strays from the plan (TensorRT 10.x building the FP32 Q/DQ ONNX
strongly typed, as edge-tl once did) shows FP32 layers and is caught.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from standin_tensorrt import make_tensorrt

from edge_tl.compile import CompileRequest, make_plan
from edge_tl.compile.api import layer_report
from edge_tl.compile.plan import release_mismatch
from edge_tl.compile.trt_builder import PythonBuild, build_engine
from edge_tl.compile.trtexec_flags import PrecisionDecision
from edge_tl.errors import ConfigError
from edge_tl.runs import Run
from edge_tl.targets import Precision, TrtVersion, load_target
from edge_tl.trt.trt_api import TrtApi

# (target, release, precision, dla) -> (network flags, builder flags, strongly typed) that TensorRT must get.
# 8.x: EXPLICIT_BATCH is bit 0; 10.x: STRONGLY_TYPED is bit 1; 11.x: STRONGLY_TYPED is bit 0
# (include/NvInfer.h, release/8.6, 10.3, 11.0). On 10.x the FP32 Q/DQ ONNX is built weakly typed with
# INT8 + FP16, as trtexec is given --int8 --fp16: strongly typed, its float layers would run FP32.
CASES = [
    ("ada", "8.6.1", Precision.FP32, False, 1, [], False),
    ("ada", "8.6.1", Precision.FP16, False, 1, ["FP16"], False),
    ("ada", "8.6.1", Precision.INT8, False, 1, ["INT8", "FP16"], False),
    ("jetson-agx-orin-64gb", "8.6.2", Precision.INT8, True, 1, ["INT8", "FP16", "GPU_FALLBACK"], False),
    ("ada", "10.3.0", Precision.FP32, False, 0, [], False),
    ("ada", "10.3.0", Precision.FP16, False, 0, ["FP16"], False),
    ("ada", "10.3.0", Precision.INT8, False, 0, ["INT8", "FP16"], False),
    ("jetson-agx-orin-64gb", "10.3.0", Precision.INT8, True, 0, ["INT8", "FP16", "GPU_FALLBACK"], False),
    ("jetson-agx-orin-64gb", "10.3.0", Precision.FP16, True, 0, ["FP16", "GPU_FALLBACK"], False),
    ("ada", "11.4.0", Precision.FP32, False, 1, [], True),
    ("ada", "11.4.0", Precision.FP16, False, 1, [], True),
    ("ada", "11.4.0", Precision.INT8, False, 1, [], True),
]


def _with_cache_for(run: Run, release: str) -> None:
    """The run's calibration cache, its header naming ``release`` (getInferLibVersion, as quantize writes it)."""
    cache = run.path("quantize/tensorrt-int8-cache/calibration.cache")
    scale = struct.pack(">f", 2.0 / 127).hex()
    cache.write_text(f"TRT-{TrtVersion.parse(release).library_version}-EntropyCalibration2\ninput: {scale}\n")
    run.add_artifact(
        "calib-cache-tensorrt-int8-cache", kind="calibration-cache", path=cache, stage="quantize", precision="int8"
    )


@pytest.mark.parametrize(("target", "release", "precision", "dla", "network", "builder", "strongly"), CASES)
def test_python_builder_sets_the_plans_flags(
    plan_run: Run, target: str, release: str, precision: Precision, dla: bool, network, builder, strongly
) -> None:
    _with_cache_for(plan_run, release)
    plan = make_plan(plan_run, load_target(target), CompileRequest(precision=precision, dla=dla, tensorrt=release))
    trt = make_tensorrt(release)
    outcome = build_engine(PythonBuild.from_plan(plan_run, plan), api=TrtApi(trt))
    assert plan.decision.strongly_typed is strongly
    assert trt.record["network_flags"] == network == outcome.network_flags
    assert trt.record["builder_flags"] == builder
    assert [f for f in trt.record["builder_flags"] if f != "GPU_FALLBACK"] == list(plan.decision.builder_flags)
    assert (plan.decision.calib is not None) == (plan.source.calib_cache is not None)
    # The engine's own report says the same: no FP32 Conv/Gemm/MatMul in an FP16 or INT8 engine.
    report = layer_report(plan_run, plan, outcome.layer_info, build_log="\n".join(outcome.log), source="inspector")
    expected = {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}[precision.value]
    macs = 1 * 4 * 3 * 8 * 8  # batch (opt) 1 x 4 out x 3 in x 8 x 8 outputs, 1x1 kernel
    assert report["compute_layers"] == {expected: 1}
    assert report["compute_macs"] == {expected: macs}
    assert report["findings"] == [] and report["fp32_layers"] == []
    # A DLA build is one subgraph over the ONNX's nodes, counted at the build precision; nothing on the GPU.
    assert report["dla_subgraphs"] == (1 if dla else 0)
    assert report["dla_unresolved"] == [] and report["gpu_fallbacks"] == []


def test_old_strongly_typed_qdq_build_on_10x_is_caught(tmp_path: Path, run_factory) -> None:
    """What the builder once did on 10.x (STRONGLY_TYPED for the FP32 Q/DQ ONNX) leaves FP32 layers:
    the layer report lists them, and a kept-float Conv at FP32 fails the MAC rule."""
    run = run_factory(tmp_path / "run")
    plan = make_plan(run, load_target("ada"), CompileRequest(precision=Precision.INT8, tensorrt="10.3.0"))
    build = PythonBuild.from_plan(run, plan)
    old = PythonBuild(**{**build.__dict__, "decision": PrecisionDecision(strongly_typed=True)})
    trt = make_tensorrt("10.3.0")
    outcome = build_engine(old, api=TrtApi(trt))
    assert trt.record["network_flags"] == 2 and trt.record["builder_flags"] == []
    report = layer_report(run, plan, outcome.layer_info, build_log="", source="inspector")
    assert report["fp32_layers"] == ["node_of_p", "node_of_logits"]
    fixed = layer_report(
        run, plan, build_engine(build, api=TrtApi(make_tensorrt("10.3.0"))).layer_info, build_log="", source="x"
    )
    assert fixed["fp32_layers"] == []


def test_python_builder_refuses_another_release_with_the_scripts_message(plan_run: Run) -> None:
    plan = make_plan(plan_run, load_target("ada"), CompileRequest(precision=Precision.FP16, tensorrt="10.3.0"))
    build = PythonBuild.from_plan(plan_run, plan)
    with pytest.raises(ConfigError) as info:
        build_engine(build, api=TrtApi(make_tensorrt("10.8.0")))
    assert str(info.value) == release_mismatch("10.3.0", "10.8.0", target="ada", run=str(plan_run.root))
    assert str(info.value).endswith(f"edge-tl compile {plan_run.root} --target ada --tensorrt 10.8.0")
    # A build number after the patch is the same release (trt.__version__ is e.g. "10.3.0.26").
    assert build_engine(build, api=TrtApi(make_tensorrt("10.3.0.26"))).tensorrt_version == "10.3.0.26"
