"""TensorRT calibration cache: golden line, round trip, strict reader and writer (fast; the recipe on a real run is in
test_quantize_trt_cache_run.py)."""

from __future__ import annotations

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
    [
        ("", "cache is empty"),
        ("TRT-x-EntropyCalibration2\n", "first line 'TRT-x-EntropyCalibration2' is not a TensorRT cache header"),
        (
            "TRT-8510-EntropyCalibration2\ninput 3c810204\n",
            "line 2: 'input 3c810204' is not '<tensor>: <8 hex digits>'",
        ),
        ("TRT-8510-EntropyCalibration2\ninput: 3c8102\n", "line 2: 'input: 3c8102' is not '<tensor>: <8 hex digits>'"),
    ],
)
def test_malformed_caches_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_cache(text)


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
    with pytest.raises(
        ConfigError, match=r"^cache is empty; a TensorRT cache starts with 'TRT-<version>-<algorithm>'$"
    ):
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
