""" "Add a target device" and "add a calibration recipe of an existing format" are one file each.

The files are under tests/fixtures/: targets/toy-board.toml (a device naming a shipped
recipe), recipes/toy-int8.toml (an ONNX Runtime Q/DQ recipe with its own calibration
settings) and targets/toy-cpu.toml (a device naming the toy recipe by name, found through
$EDGE_TL_RECIPES). Nothing else in edge-tl is edited to use them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_tl.calibration import RECIPES_ENV, load_recipe
from edge_tl.errors import ConfigError
from edge_tl.targets import load_target

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOY_BOARD = FIXTURES / "targets" / "toy-board.toml"
TOY_CPU = FIXTURES / "targets" / "toy-cpu.toml"
TOY_RECIPE = FIXTURES / "recipes" / "toy-int8.toml"


def _cli(*args: str, recipes: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != RECIPES_ENV}
    if recipes is not None:
        env[RECIPES_ENV] = str(recipes)
    return subprocess.run([sys.executable, "-m", "edge_tl", *args], capture_output=True, text=True, env=env)


def test_a_target_device_is_one_toml_file() -> None:
    shown = _cli("targets", "show", str(TOY_BOARD), "--json")
    assert shown.returncode == 0, shown.stderr
    profile = json.loads(shown.stdout)
    assert (profile["name"], profile["calibration_recipe"], profile["tensorrt"]["default"]) == (
        "toy-board",
        "tensorrt-int8-qdq",
        "10.3.0",
    )
    board = load_target(str(TOY_BOARD))
    # Its TensorRT releases decide the opset and the recipe, as for a shipped board.
    assert board.export_opset() == 20 and board.export_opset(tensorrt="8.6") == 17
    assert board.calibration_recipe_for("int8").value == "tensorrt-int8-qdq"
    assert board.calibration_recipe_for("fp16") is None
    with pytest.raises(ConfigError, match="no DLA cores"):
        board.calibration_recipe_for("int8", dla=True)


def test_a_target_naming_a_recipe_nobody_wrote_is_refused_with_the_fix(tmp_path: Path) -> None:
    text = TOY_BOARD.read_text().replace('"tensorrt-int8-qdq"', '"tensorrt-int8-qdp"')
    path = tmp_path / "toy-board.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_target(path)
    message = str(info.value)
    assert str(path) in message and "field 'calibration_recipe'" in message
    assert "Did you mean tensorrt-int8-qdq" in message and RECIPES_ENV in message


def test_a_recipe_is_found_by_name_in_the_recipe_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RECIPES_ENV, raising=False)
    with pytest.raises(ConfigError, match="unknown recipe 'toy-int8'"):
        load_recipe("toy-int8")
    with pytest.raises(ConfigError, match="field 'calibration_recipe'.*unknown recipe 'toy-int8'"):
        load_target(TOY_CPU)
    monkeypatch.setenv(RECIPES_ENV, str(TOY_RECIPE.parent))
    by_name, by_path = load_recipe("toy-int8"), load_recipe(TOY_RECIPE)
    assert by_name == by_path and by_name.source == str(TOY_RECIPE)
    assert (by_name.calibration.method.value, by_name.calibration.num_samples) == ("percentile", 24)
    toy = load_target(TOY_CPU)
    assert toy.calibration_recipe_for("int8").value == "toy-int8"


def test_the_cli_lists_a_target_naming_the_toy_recipe() -> None:
    assert _cli("targets", "show", str(TOY_CPU)).returncode == 1
    shown = _cli("targets", "show", str(TOY_CPU), recipes=TOY_RECIPE.parent)
    assert shown.returncode == 0, shown.stderr
    assert "calibration recipe: toy-int8" in shown.stdout


@pytest.fixture(scope="module")
def exported_tiny(tiny_digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    from edge_tl.export import ExportConfig, Precision, export_run

    root = Path(shutil.copytree(tiny_digits_run, tmp_path_factory.mktemp("toy-recipe") / "run"))
    export_run(root, config=ExportConfig(precisions=(Precision.FP32,), parity_images=16))
    return root


def test_the_toy_targets_recipe_quantizes_a_run(
    exported_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recipe the toy target names is the one quantize runs: its name, format and calibration settings."""
    from edge_tl.cli.quantize import quantize_config
    from edge_tl.quantize import quantize_run
    from edge_tl.runs import Run

    monkeypatch.setenv(RECIPES_ENV, str(TOY_RECIPE.parent))
    run_dir = Path(shutil.copytree(exported_tiny, tmp_path / "run"))
    config = quantize_config(
        precision="int8",
        recipe=None,
        target=str(TOY_CPU),
        tensorrt=None,
        cache_version=None,
        calib_method=None,
        calib_samples=None,
        calib_data=None,
        max_accuracy_drop=None,
        max_float_layers=0,
        seed=0,
        threads=1,
    )
    assert config.recipe == "toy-int8"
    result = quantize_run(run_dir, config=config)
    assert result.recipe == "toy-int8"
    assert result.artifacts == ("onnx-int8-toy-int8", "calib-table-toy-int8")
    run = Run.open(run_dir)
    record = run.artifact("onnx-int8-toy-int8")
    assert (record.kind, record.precision, record.path) == ("onnx", "int8", "quantize/toy-int8/model.int8.onnx")
    table = json.loads((run_dir / "quantize" / "toy-int8" / "calibration_table.json").read_text())
    assert table["recipe"] == "toy-int8"
    assert (table["calibration"]["method"], table["calibration"]["percentile"]) == ("percentile", 99.9)
    assert table["calibration"]["requested_samples"] == 24

    import onnx

    ops = {node.op_type for node in onnx.load(str(run.artifact_path(record.name))).graph.node}
    # U8S8 Q/DQ, the recipe's format, written by ONNX Runtime's quantizer.
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
