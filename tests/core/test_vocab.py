"""One Precision, one Device, one TOML reader: every stage takes the same words and refuses
the members it does not accept by naming the ones it does."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_tl.errors import ConfigError
from edge_tl.vocab import Device, NotAccepted, Precision


def test_the_public_names_are_the_one_enum() -> None:
    from edge_tl import export, quantize, runtime, targets, train

    assert export.Precision is targets.Precision is train.Precision is quantize.Precision is Precision
    assert quantize.QuantPrecision is Precision
    assert runtime.Device is train.Device is Device


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: __import__("edge_tl.train.config").train.config.FinetuneConfig(data="d", out="o", precision="int8"),
            "--precision must be one of auto, fp32, bf16, fp16, got 'int8'",
        ),
        (
            lambda: __import__("edge_tl.quantize.api").quantize.api.QuantizeConfig(precision=Precision.FP32),
            "quantize writes int8, fp16",
        ),
        (
            lambda: __import__("edge_tl.targets").targets.load_target("x86-64").check_precision("bf16"),
            "precision 'bf16' is not one of fp32, fp16, int8, fp8, fp4",
        ),
        (
            lambda: __import__("edge_tl.targets").targets.load_target("x86-64").check_precision("auto"),
            "precision 'auto' is not one of",
        ),
    ],
)
def test_each_stage_refuses_what_it_does_not_take_naming_what_it_does(make, message: str) -> None:
    with pytest.raises(NotAccepted, match=message):
        make()


def test_export_takes_fp32_and_fp16_only() -> None:
    pytest.importorskip("onnx")
    from edge_tl.export import ExportConfig

    assert ExportConfig(precisions=("fp16", Precision.FP32)).precisions == (Precision.FP16, Precision.FP32)
    with pytest.raises(ConfigError, match="export writes fp32, fp16, not 'int8'"):
        ExportConfig(precisions=(Precision.INT8,))


def test_a_fleet_file_follows_the_same_rules_as_a_profile(tmp_path: Path) -> None:
    from edge_tl.deploy.fleet import load_inventory

    path = tmp_path / "fleet.toml"
    path.write_text('[[device]]\nname = "a"\nhost = "h"\nprecison = "int8"\n')
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    assert str(path) in str(info.value)
    assert "unknown field(s) 'device[0].precison' (did you mean 'device[0].precision'?)" in str(info.value)
    path.write_text('[defaults]\niterations = "many"\n[[device]]\nhost = "h"\n')
    with pytest.raises(ConfigError, match=r"field 'defaults.iterations' must be an integer, got 'many'"):
        load_inventory(path)
    path.write_text("[[device]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_inventory(path)
