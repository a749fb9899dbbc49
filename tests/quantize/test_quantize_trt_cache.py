"""TensorRT calibration cache: golden line, round trip, strict reader, and names of the real FP32 ONNX."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from edge_tl.errors import ConfigError
from edge_tl.quantize.trt_cache import (
    cache_from_amax,
    parse_cache,
    read_cache,
    scale_hex,
    write_cache,
)


def test_golden_scale_line() -> None:
    assert scale_hex(2.0) == "3c810204"  # 2.0 / 127 = 0.015748 as big-endian float32
    text = cache_from_amax({"input": 2.0}, version=8510).to_text()
    assert text == "TRT-8510-EntropyCalibration2\ninput: 3c810204\n"


def test_round_trip_through_the_reader(tmp_path: Path) -> None:
    amax = {"input": 2.0, "onnx::Conv_12": 0.123456, "/blocks/blocks.0/Add_output_0": 57.5}
    path = write_cache(tmp_path / "c.cache", cache_from_amax(amax, version=10300))
    back = read_cache(path)
    assert (back.version, back.algorithm) == (10300, "EntropyCalibration2")
    assert list(back.scales) == list(amax)  # order kept; a name with '::' survives
    for name, value in amax.items():
        # float32 in the file: equal to the float32 of amax/127.
        assert back.scales[name] == struct.unpack(">f", struct.pack(">f", value / 127))[0]
        assert back.amax(name) == pytest.approx(value, rel=1e-6)
    assert back.to_text() == path.read_text()


@pytest.mark.parametrize(
    "text,message",
    [("", "cache is empty"),
     ("TRT-x-EntropyCalibration2\n", "first line 'TRT-x-EntropyCalibration2' is not a TensorRT cache header"),
     ("TRT-8510-EntropyCalibration2\ninput 3c810204\n", "line 2: 'input 3c810204' is not '<tensor>: <8 hex digits>'"),
     ("TRT-8510-EntropyCalibration2\ninput: 3c8102\n", "line 2: 'input: 3c8102' is not '<tensor>: <8 hex digits>'")],
)
def test_malformed_caches_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_cache(text)


def test_cache_recipe_on_a_real_run_names_only_fp32_tensors(run_copy: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from edge_tl.quantize import QuantizeConfig, quantize_run
    from edge_tl.runs import Run

    result = quantize_run(run_copy, config=QuantizeConfig(recipe="tensorrt-int8-cache", calib_samples=64, threads=1))
    assert result.artifacts == ("calib-cache-tensorrt-int8-cache", "calib-table-tensorrt-int8-cache")
    run = Run.open(run_copy)
    cache = read_cache(run.artifact_path("calib-cache-tensorrt-int8-cache", check_hash=True))
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
    quantize_run(run_copy, config=QuantizeConfig(recipe="tensorrt-int8-cache", calib_samples=32, threads=1,
                                                 target="jetson-agx-orin-64gb", tensorrt="8.6.2"))
    run = Run.open(run_copy)
    assert read_cache(run.artifact_path("calib-cache-tensorrt-int8-cache")).version == 8602
    assert run.artifact("calib-cache-tensorrt-int8-cache").details["cache_version_from"] == "target jetson-agx-orin-64gb"
    plan = make_plan(run, orin, CompileRequest(precision=Precision.INT8, dla=True, tensorrt="8.6.2"))
    assert plan.source.calib_cache.name == "calib-cache-tensorrt-int8-cache"

    # The CLI: --target alone gives the default release's header, which the default plan accepts.
    result = CliRunner().invoke(cli, ["quantize", str(run_copy), "--recipe", "tensorrt-int8-cache", "--target",
                                      "jetson-agx-orin-64gb", "--calib-samples", "32", "--threads", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert read_cache(run.artifact_path("calib-cache-tensorrt-int8-cache")).version == 100300
    make_plan(Run.open(run_copy), orin, CompileRequest(precision=Precision.INT8, dla=True))
    # The exact header per JetPack: Xavier's default is JetPack 5.1 (TensorRT 8.5.2), Orin Nano's JetPack 6.x (10.3.0)
    for target, header in (("jetson-agx-xavier", "TRT-8502-EntropyCalibration2"), ("jetson-orin-nano-8gb", "TRT-100300-EntropyCalibration2")):
        result = CliRunner().invoke(cli, ["quantize", str(run_copy), "--recipe", "tensorrt-int8-cache", "--target", target,
                                          "--calib-samples", "16", "--threads", "1", "--quiet"])
        assert result.exit_code == 0, result.output
        path = Run.open(run_copy).artifact_path("calib-cache-tensorrt-int8-cache")
        assert path.read_text().splitlines()[0] == header

    # TensorRT 11 reads no calibration cache: refused before calibrating, with the way out.
    with pytest.raises(ConfigError, match=r"TensorRT 11.4.1, which cannot read a calibration cache.*tensorrt-int8-qdq"):
        quantize_run(run_copy, config=QuantizeConfig(recipe="tensorrt-int8-cache", calib_samples=32, threads=1,
                                                     target="jetson-agx-thor"))


@pytest.mark.parametrize("name", ["a\nb", "a\rb", ""])
def test_writer_refuses_names_that_break_the_one_line_per_tensor_format(name: str, tmp_path: Path) -> None:
    cache = cache_from_amax({"ok": 1.0, name: 2.0}, version=8502)
    with pytest.raises(ConfigError, match="cannot be written to a TensorRT cache"):
        cache.to_text()
    with pytest.raises(ConfigError, match="cannot be written"):
        write_cache(tmp_path / "c.cache", cache)
    assert not (tmp_path / "c.cache").exists()


def test_reader_keeps_the_header_version_and_splits_at_the_last_colon() -> None:
    cache = parse_cache("TRT-100300-EntropyCalibration2\r\nonnx::Conv_1: 3c810204\n\n")
    assert (cache.version, cache.algorithm) == (100300, "EntropyCalibration2")
    assert list(cache.scales) == ["onnx::Conv_1"] and cache.amax("onnx::Conv_1") == pytest.approx(2.0, rel=1e-6)
    with pytest.raises(ConfigError, match=r"line 2: 'x: 3c81020g'"):
        parse_cache("TRT-8502-EntropyCalibration2\nx: 3c81020g\n")
    with pytest.raises(ConfigError, match="is not a TensorRT cache header"):
        parse_cache("8502-EntropyCalibration2\nx: 3c810204\n")
    with pytest.raises(ConfigError, match="does not exist"):
        read_cache("/nonexistent/c.cache")


def test_reader_errors_name_the_file_and_accept_uppercase_hex(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cache is empty; a TensorRT cache starts with 'TRT-<version>-<algorithm>'$"):
        parse_cache("\n \n")
    with pytest.raises(ConfigError, match=r"line 2: ': 3c810204'"):
        parse_cache("TRT-8502-EntropyCalibration2\n: 3c810204\n")  # a scale without a tensor name
    assert parse_cache("TRT-8502-EntropyCalibration2\nx: 3C810204\n").amax("x") == pytest.approx(2.0, rel=1e-6)
    bad = tmp_path / "bad.cache"
    bad.write_text("TRT-8502-EntropyCalibration2\nx 3c810204\n")
    with pytest.raises(ConfigError, match=f"^{str(bad)} line 2"):
        read_cache(bad)
    with pytest.raises(ConfigError, match=f"calibration cache '{tmp_path / 'none.cache'}' does not exist"):
        read_cache(tmp_path / "none.cache")
