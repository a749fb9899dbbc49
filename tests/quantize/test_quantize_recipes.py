"""Recipes as data: the shipped ones load, a path works, every schema error names file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_tl.errors import ConfigError
from edge_tl.quantize.recipes import (
    CalibMethod,
    OutputFormat,
    QuantDType,
    list_recipes,
    load_recipe,
)

GOOD = """
schema = 1
name = "mine"
output = "qdq-tensorrt"
[calibration]
method = "mse"
num_samples = 64
[activations]
dtype = "int8"
symmetric = true
[weights]
dtype = "int8"
symmetric = true
per_channel = true
[placement]
op_types = ["Conv"]
keep_float = ["/classifier/*"]
"""


def test_shipped_recipes_load_with_their_documented_settings() -> None:
    assert list_recipes() == ["onnxruntime-cpu-int8", "tensorrt-int8-cache", "tensorrt-int8-qdq"]
    qdq = load_recipe("tensorrt-int8-qdq")
    assert qdq.output is OutputFormat.QDQ_TENSORRT
    assert (qdq.activations.dtype, qdq.activations.symmetric, qdq.activations.per_channel) == (
        QuantDType.INT8,
        True,
        False,
    )
    assert (qdq.weights.dtype, qdq.weights.symmetric, qdq.weights.per_channel) == (QuantDType.INT8, True, True)
    assert set(qdq.placement.op_types) == {"Conv", "Gemm", "MatMul"} and qdq.placement.residual_add
    cpu = load_recipe("onnxruntime-cpu-int8")
    assert cpu.output is OutputFormat.QDQ_ONNXRUNTIME
    assert (cpu.activations.dtype, cpu.activations.symmetric) == (QuantDType.UINT8, False)
    assert cpu.weights.per_channel and cpu.weights.dtype is QuantDType.INT8
    cache = load_recipe("tensorrt-int8-cache")
    assert cache.output is OutputFormat.TENSORRT_CACHE and cache.calibration.method is CalibMethod.ENTROPY
    assert cache.cache is not None and cache.cache.algorithm == "EntropyCalibration2"
    for recipe in (qdq, cpu, cache):
        assert recipe.calibration.num_samples == 512


def test_recipe_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(GOOD)
    recipe = load_recipe(path)
    assert recipe.name == "mine" and recipe.calibration.method is CalibMethod.MSE
    assert recipe.placement.keep_float == ("/classifier/*",) and recipe.source == str(path)
    assert recipe.to_dict()["calibration"]["num_samples"] == 64


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (('method = "mse"', 'method = "kl"'), "calibration.method"),
        (("num_samples = 64", 'num_samples = "many"'), "calibration.num_samples"),
        (("num_samples = 64", "num_samples = true"), "calibration.num_samples"),
        (("[placement]", "[placement]\nkeep_floats = []"), "placement.keep_floats"),
        (('name = "mine"\n', ""), "name"),
        (
            ('dtype = "int8"\nsymmetric = true\n[weights]', 'dtype = "uint8"\nsymmetric = false\n[weights]'),
            "activations",
        ),
        (("schema = 1", "schema = 2"), "schema"),
        (('op_types = ["Conv"]', 'op_types = ["*"]'), "placement.op_types"),
    ],
)
def test_schema_errors_name_the_file_and_the_field(tmp_path: Path, edit: tuple[str, str], field: str) -> None:
    assert edit[0] in GOOD
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(*edit, 1))
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(path) in str(info.value) and field in str(info.value)


def test_unknown_recipe_name_lists_close_matches(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tensorrt-int8-qdq"):
        load_recipe("tensorrt-int8-qdp")
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("schema = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(broken)
