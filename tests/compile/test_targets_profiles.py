"""Target profiles: every shipped profile loads, broken ones name file and field, capabilities decide."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_tl.cli.main import cli
from edge_tl.errors import ConfigError
from edge_tl.targets import (
    CalibrationRecipe,
    Precision,
    TargetKind,
    TrtVersion,
    list_targets,
    load_target,
    target_names,
)

REQUIRED = {
    "jetson-nano",
    "jetson-tx2",
    "jetson-xavier-nx",
    "jetson-agx-xavier",
    "jetson-orin-nano-4gb",
    "jetson-orin-nano-8gb",
    "jetson-orin-nx-8gb",
    "jetson-orin-nx-16gb",
    "jetson-agx-orin-32gb",
    "jetson-agx-orin-64gb",
    "jetson-agx-thor",
    "t4",
    "a100",
    "rtx-ampere",
    "ada",
    "h100",
    "x86-64",
    "arm64",
}


def test_every_shipped_profile_loads_and_the_required_ones_exist() -> None:
    names = target_names()
    assert REQUIRED <= set(names)
    for target in list_targets():
        assert target.name in names
        assert Precision.FP32 in target.fast_precisions
        if target.kind is TargetKind.CPU:
            assert target.calibration_recipe is CalibrationRecipe.ONNXRUNTIME_CPU and not target.releases
        else:
            assert target.gpu is not None and target.release().version == target.default_tensorrt


def test_facts_of_the_reference_table() -> None:
    nano, orin, xavier, thor = (
        load_target(n) for n in ("jetson-nano", "jetson-orin-nano-8gb", "jetson-agx-xavier", "jetson-agx-thor")
    )
    assert nano.gpu.compute_capability == (5, 3) and Precision.INT8 not in nano.fast_precisions
    # JetPack 6.1/6.2 ship TensorRT 10.3.0 and JetPack 5.1 ships 8.5.2 (NVIDIA JetPack release notes)
    assert orin.gpu.sm == "8.7" and orin.gpu.dla_cores == 0 and orin.default_tensorrt == TrtVersion(10, 3, 0)
    assert xavier.gpu.dla_cores == 2 and xavier.default_tensorrt == TrtVersion(8, 5, 2) and xavier.max_opset == 17
    assert thor.default_tensorrt.major == 11 and thor.gpu.compute_capability == (11, 0)
    assert load_target("x86-64").default_runtime.value == "onnxruntime"


def test_capability_errors_name_what_the_target_supports() -> None:
    with pytest.raises(ConfigError, match=r"jetson-nano.*no fast INT8.*supports fp32, fp16"):
        load_target("jetson-nano").check_precision("int8")
    with pytest.raises(ConfigError, match=r"no DLA cores.*targets with DLA: .*jetson-agx-orin-64gb"):
        load_target("jetson-orin-nano-8gb").check_dla(True)
    load_target("jetson-agx-orin-64gb").check_dla(True)
    with pytest.raises(ConfigError, match=r"does not list TensorRT 9.0.0"):
        load_target("jetson-orin-nano-8gb").release("9.0")
    with pytest.raises(ConfigError, match="not TensorRT"):
        load_target("arm64").release()


def test_target_decides_opset_and_recipe() -> None:
    orin = load_target("jetson-agx-orin-64gb")
    # onnx/onnx-tensorrt docs/operators.md: 10.0-GA "opset 9 to opset 20"; 8.5-GA "up to Opset 17"
    assert orin.export_opset() == 20 and orin.export_opset(tensorrt="8.5.2") == 17
    with pytest.raises(ConfigError, match="opset 21 is above"):
        orin.export_opset(21)
    with pytest.raises(ConfigError, match="opset 18 is above"):
        orin.export_opset(18, tensorrt="8.6")
    assert orin.calibration_recipe_for("fp16") is None
    assert orin.calibration_recipe_for("int8") is CalibrationRecipe.TENSORRT_QDQ
    # DLA on 8.x/10.x reads implicit-quantization scales (the cache recipe); 11.4.1 builds DLA strongly typed
    # from Q/DQ (docs.nvidia.com/deeplearning/tensorrt/11.4.1/inference-library/dla-strongly-typed-networks.html)
    assert orin.calibration_recipe_for("int8", dla=True) is CalibrationRecipe.TENSORRT_CACHE
    assert orin.calibration_recipe_for("int8", dla=True, tensorrt="11.4") is CalibrationRecipe.TENSORRT_QDQ
    assert load_target("x86-64").calibration_recipe_for("int8") is CalibrationRecipe.ONNXRUNTIME_CPU


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(ConfigError, match="Did you mean jetson-orin-nano-8gb"):
        load_target("jetson-orin-nano-8")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def _orin_text() -> str:
    return Path(load_target("jetson-orin-nano-8gb").source).read_text()


@pytest.mark.parametrize(
    "edit, field, message",
    [
        (
            lambda t: t.replace('compute_capability = "8.7"', "compute_capability = 8.7"),
            "gpu.compute_capability",
            "MAJOR.MINOR",
        ),
        (lambda t: t.replace('kind = "jetson"', 'kind = "phone"'), "kind", "choose one of: jetson, dgpu, cpu"),
        (lambda t: t.replace("dla_cores = 0", "dla_cores = -1"), "gpu.dla_cores", "must be >= 0"),
        (
            lambda t: t.replace('fast_precisions = ["fp32", "fp16", "int8"]', 'fast_precisions = ["fp16", "int9"]'),
            "fast_precisions",
            "item 1 is 'int9'",
        ),
        (lambda t: t.replace('default = "10.3.0"', 'default = "9.9.0"'), "tensorrt.default", "not among the releases"),
        (
            lambda t: t.replace('version = "8.5.2"', 'version = "eight"'),
            "tensorrt.releases[3].version",
            "not a TensorRT version",
        ),
        (
            lambda t: t.replace('version = "8.5.2"', 'version = "8.5"'),
            "tensorrt.releases[3].version",
            "must be the full release MAJOR.MINOR.PATCH",
        ),
        (
            lambda t: t.replace("workspace_mib", "max_opsett = 17\nworkspace_mib"),
            None,
            "unknown field(s) 'max_opsett' (did you mean 'max_opset'?)",
        ),
        (lambda t: t.replace("workspace_mib = 1024", "workspace_mib = true"), "workspace_mib", "must be an integer"),
    ],
)
def test_broken_profile_error_names_file_and_field(tmp_path: Path, edit, field: str | None, message: str) -> None:
    path = _write(tmp_path, "jetson-orin-nano-8gb", edit(_orin_text()))
    with pytest.raises(ConfigError) as info:
        load_target(path)
    text = str(info.value)
    assert str(path) in text
    if field is not None:
        assert f"field '{field}'" in text
    assert message in text


def test_user_profile_by_path_and_name_must_match_file(tmp_path: Path) -> None:
    ok = _write(tmp_path, "jetson-orin-nano-8gb", _orin_text())
    assert load_target(str(ok)).name == "jetson-orin-nano-8gb"
    wrong = _write(tmp_path, "my-board", _orin_text())
    with pytest.raises(
        ConfigError, match=r"field 'name' is 'jetson-orin-nano-8gb' but the file is named 'my-board.toml'"
    ):
        load_target(wrong)
    bad_toml = _write(tmp_path, "x", "name = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_target(bad_toml)


def test_cli_list_and_show() -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["targets", "list"])
    assert out.exit_code == 0, out.output
    rows = [line.split()[0] for line in out.output.splitlines()[1:]]
    assert REQUIRED <= set(rows) and len(rows) >= 18
    shown = runner.invoke(cli, ["targets", "show", "jetson-agx-xavier"])
    assert shown.exit_code == 0
    assert (
        re.search(r"DLA cores 2", shown.output)
        and "TensorRT 8.5.2 (JetPack 5.1, CUDA 11.4), ONNX opset <= 17" in shown.output
    )
    as_json = json.loads(runner.invoke(cli, ["targets", "show", "t4", "--json"]).output)
    assert as_json["gpu"]["compute_capability"] == "7.5"
    for args in (["targets", "--help"], ["targets", "list", "--help"], ["targets", "show", "--help"]):
        shown = runner.invoke(cli, args)
        assert shown.exit_code == 0 and f"Usage: cli {' '.join(args[:-1])}" in shown.output


def test_recipes_named_by_targets_are_the_shipped_calibration_recipes() -> None:
    recipes = pytest.importorskip("edge_tl.quantize.recipes")
    assert {r.value for r in CalibrationRecipe} == set(recipes.list_recipes())
    for target in list_targets():
        assert recipes.load_recipe(target.calibration_recipe.value).name == target.calibration_recipe.value
