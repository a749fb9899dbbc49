"""The calibration-cache recipe on a real exported run: the names it writes and the header its target asks for.

Slow (calibrates the shared digits model); the cache format itself is pinned fast in test_quantize_trt_cache.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_tl.errors import ConfigError
from edge_tl.quantize.trt_cache import read_cache


def test_cache_recipe_on_a_real_run_names_only_fp32_tensors(run_copy: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from edge_tl.quantize import QuantizeConfig, quantize_run
    from edge_tl.runs import Run

    result = quantize_run(run_copy, config=QuantizeConfig(recipe="tensorrt-int8-cache", calib_samples=64, threads=1))
    assert result.artifacts == ("calib-cache-tensorrt-int8-cache", "calib-table-tensorrt-int8-cache")
    run = Run.open(run_copy)
    cache = read_cache(run.artifact_path("calib-cache-tensorrt-int8-cache"))
    assert (cache.version, cache.algorithm) == (8502, "EntropyCalibration2")  # the recipe default: 8.5.2, JetPack 5.1
    fp32 = onnx.load(str(run.artifact_path("onnx-fp32")))
    tensors = {v.name for v in fp32.graph.input} | {o for n in fp32.graph.node for o in n.output}
    assert cache.scales and set(cache.scales) <= tensors
    # Every float activation of the graph has a scale (implicit quantization needs them all).
    assert {"input", "logits"} <= set(cache.scales)
    convs = [n.output[0] for n in fp32.graph.node if n.op_type == "Conv"]
    assert set(convs) <= set(cache.scales)
    table = json.loads(run.artifact_path("calib-table-tensorrt-int8-cache").read_text())
    assert table["calibration"]["method"] == "entropy" and table["calibration"]["data"] == "run training split"
    for name, entry in table["tensors"].items():
        assert cache.amax(name) == pytest.approx(entry["amax"], rel=1e-6) and entry["method"] == "entropy"
    record = run.artifact("calib-cache-tensorrt-int8-cache")
    assert record.kind == "calibration-cache" and record.details["header"] == "TRT-8502-EntropyCalibration2"
    assert not run.has_artifact("onnx-int8-tensorrt-int8-cache")  # implicit mode ships the FP32 ONNX


def test_target_names_the_cache_for_its_tensorrt_and_compile_accepts_it(run_copy: Path) -> None:
    pytest.importorskip("onnxruntime")
    from click.testing import CliRunner

    from edge_tl.cli.main import cli
    from edge_tl.compile import CompileRequest, make_plan
    from edge_tl.quantize import QuantizeConfig, quantize_run
    from edge_tl.runs import Run
    from edge_tl.targets import Precision, TrtVersion, load_target

    # getInferLibVersion(): major*1000 + minor*100 + patch on 8.x, major*10000 + ... from 10.0
    # (kNV_TENSORRT_VERSION_IMPL, include/NvInferRuntimeBase.h, NVIDIA/TensorRT release/8.6 and release/10.3)
    assert TrtVersion(8, 5, 2).library_version == 8502 and TrtVersion(10, 3, 0).library_version == 100300
    assert TrtVersion(8, 6, 2).library_version == 8602 and TrtVersion(11, 4, 1).library_version == 110401
    orin = load_target("jetson-agx-orin-64gb")  # default TensorRT 10.3.0, also lists 8.6.2 (JetPack 6.0)
    quantize_run(
        run_copy,
        config=QuantizeConfig(
            recipe="tensorrt-int8-cache", calib_samples=32, threads=1, target="jetson-agx-orin-64gb", tensorrt="8.6.2"
        ),
    )
    run = Run.open(run_copy)
    assert read_cache(run.artifact_path("calib-cache-tensorrt-int8-cache")).version == 8602
    assert (
        run.artifact("calib-cache-tensorrt-int8-cache").details["cache_version_from"] == "target jetson-agx-orin-64gb"
    )
    plan = make_plan(run, orin, CompileRequest(precision=Precision.INT8, dla=True, tensorrt="8.6.2"))
    assert plan.source.calib_cache.name == "calib-cache-tensorrt-int8-cache"

    # The CLI: --target alone gives the default release's header, which the default plan accepts.
    result = CliRunner().invoke(
        cli,
        [
            "quantize",
            str(run_copy),
            "--recipe",
            "tensorrt-int8-cache",
            "--target",
            "jetson-agx-orin-64gb",
            "--calib-samples",
            "32",
            "--threads",
            "1",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    # (the run as the command left it: a Run read before it holds the old cache's record)
    assert read_cache(Run.open(run_copy).artifact_path("calib-cache-tensorrt-int8-cache")).version == 100300
    make_plan(Run.open(run_copy), orin, CompileRequest(precision=Precision.INT8, dla=True))
    # The exact header per JetPack: Xavier's default is JetPack 5.1 (TensorRT 8.5.2), Orin Nano's JetPack 6.x (10.3.0)
    for target, header in (
        ("jetson-agx-xavier", "TRT-8502-EntropyCalibration2"),
        ("jetson-orin-nano-8gb", "TRT-100300-EntropyCalibration2"),
    ):
        result = CliRunner().invoke(
            cli,
            [
                "quantize",
                str(run_copy),
                "--recipe",
                "tensorrt-int8-cache",
                "--target",
                target,
                "--calib-samples",
                "16",
                "--threads",
                "1",
                "--quiet",
            ],
        )
        assert result.exit_code == 0, result.output
        path = Run.open(run_copy).artifact_path("calib-cache-tensorrt-int8-cache")
        assert path.read_text().splitlines()[0] == header

    # TensorRT 11 reads no calibration cache: refused before calibrating, with the way out.
    with pytest.raises(ConfigError, match=r"TensorRT 11.4.1, which cannot read a calibration cache.*tensorrt-int8-qdq"):
        quantize_run(
            run_copy,
            config=QuantizeConfig(recipe="tensorrt-int8-cache", calib_samples=32, threads=1, target="jetson-agx-thor"),
        )
