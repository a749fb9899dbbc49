"""Where `edge-tl ship`'s options come from: command line over config file over the stages' defaults."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from edge_tl.cli.ship import ship
from edge_tl.errors import ConfigError
from edge_tl.ship.api import ShipRequest, plan
from edge_tl.ship.options import gather, stage_kwargs
from edge_tl.targets import Precision, load_target


def resolve(*args: object) -> dict:
    """ship's resolved options, as its callback receives them (the command line parsed, config files read)."""
    ctx = ship.make_context("ship", [str(a) for a in args])
    return ctx.params


@pytest.fixture
def data(tmp_path) -> Path:
    for name in ("cat", "dog"):
        (tmp_path / "images" / name).mkdir(parents=True)
    return tmp_path / "images"


def test_the_data_folders_toml_is_read_and_the_command_line_wins(data, tmp_path):
    (data / "edge-tl.toml").write_text('target = "x86-64"\nepochs = 7\nbackbone = "mobilenet_v3_small"\n'
                                       'calib-data = "calib"\nout = "../run"\n')  # fmt: skip
    (data / "calib").mkdir()  # relative paths are the file's folder's
    values = resolve("--data", data)
    assert values["target"] == "x86-64" and values["epochs"] == 7 and values["backbone"] == "mobilenet_v3_small"
    assert (
        Path(values["calib_data"]) == data / "calib" and Path(values["out"]).resolve() == (tmp_path / "run").resolve()
    )
    values = resolve("--data", data, "--epochs", "2", "--out", tmp_path / "other")
    assert values["epochs"] == 2 and values["out"] == tmp_path / "other" and values["backbone"] == "mobilenet_v3_small"


def test_config_replaces_the_data_folders_toml(data, tmp_path):
    (data / "edge-tl.toml").write_text('target = "x86-64"\nepochs = 7\n')
    config = tmp_path / "mine.toml"
    config.write_text('target = "jetson-orin-nano-8gb"\nlr = 0.05\n')
    values = resolve("--data", data, "--config", config, "--out", tmp_path / "run")
    assert (
        values["target"] == "jetson-orin-nano-8gb" and values["lr"] == 0.05 and values["epochs"] == 10
    )  # finetune's default


def test_config_keys_are_checked(data, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('target = "x86-64"\nepoch = 3\n')
    with pytest.raises(ConfigError, match=r"unknown option\(s\) 'epoch'"):
        resolve("--data", data, "--config", config, "--out", tmp_path / "run")
    config.write_text('force = ["export"]\n')  # one invocation's wish, not the run's settings
    with pytest.raises(ConfigError, match=r"unknown option\(s\) 'force'"):
        resolve("--data", data, "--config", config, "--out", tmp_path / "run")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve("--data", data, "--config", tmp_path / "missing.toml")
    config.write_text("epochs = 'three'\ntarget = 'x86-64'\n")
    with pytest.raises(click.BadParameter, match="three"):  # the option's own type check
        resolve("--data", data, "--config", config, "--out", tmp_path / "run")


def test_contested_names_take_their_stages_prefix():
    passthrough = gather()
    names = {p.name: p for p in passthrough.params}
    # --batch-size is the training batch; the others keep theirs under their stage's name.
    assert passthrough.sources["finetune"]["batch_size"] == "batch_size"
    assert passthrough.sources["deploy"]["batch_size"] == "deploy_batch_size"
    assert passthrough.sources["verify"]["batch_size"] == "verify_batch_size"
    assert names["deploy_batch_size"].opts == ["--deploy-batch-size"]
    # ship's --precision is the device's; finetune's arithmetic and export's list are prefixed.
    assert passthrough.sources["finetune"]["precision"] == "finetune_precision"
    assert names["export_precisions"].opts == ["--export-precision"]
    # one value for the names that mean the same in every stage
    assert {passthrough.sources[s]["tensorrt"] for s in ("quantize", "compile", "bundle", "deploy")} == {"tensorrt"}
    assert len({p.name for p in passthrough.params}) + 1 == len(
        passthrough.params
    )  # compile's two --plan-only/--build flags
    every_flag = [f for p in passthrough.params for f in (*p.opts, *p.secondary_opts)]
    assert len(every_flag) == len(set(every_flag))


def test_the_quantize_stage_takes_the_targets_recipe_as_the_cli_does(tmp_path):
    """A TensorRT target's INT8 is its recipe, chosen by `edge-tl quantize --target`'s own code."""
    passthrough = gather()
    values = resolve("--data", tmp_path, "--target", "jetson-orin-nano-8gb", "--out", tmp_path / "run")
    options = {p.name: values[p.name] for p in passthrough.params}
    request = ShipRequest(data=tmp_path, out=tmp_path / "run", target="jetson-orin-nano-8gb", passthrough=passthrough,
                          options=options, max_accuracy_drop=0.5)  # fmt: skip
    (tmp_path / "cls").mkdir()
    stages = plan(request, load_target("jetson-orin-nano-8gb"), Precision.INT8)
    assert [s.name for s in stages] == ["finetune", "export", "quantize", "compile", "bundle", "verify", "report"]
    quantize = next(s for s in stages if s.name == "quantize").options
    assert (
        quantize["target"] == "jetson-orin-nano-8gb"
        and quantize["recipe"] is None
        and quantize["max_accuracy_drop"] == 0.5
    )
    export = next(s for s in stages if s.name == "export").options
    assert export["opset"] == load_target("jetson-orin-nano-8gb").export_opset()
    finetune = next(s for s in stages if s.name == "finetune").options
    assert finetune["backbone"] == "efficientnet_lite0"  # finetune's default, not import's none
    kwargs = stage_kwargs(
        "deploy",
        passthrough,
        options,
        {"run_dir": 1, "host": 2, "fleet": 3, "target": 4, "precision": 5, "quiet": 6},
        explicit=frozenset(),
    )
    assert kwargs["batch_size"] == 1 and kwargs["iterations"] == 200  # deploy's own defaults


def test_max_class_drop_reaches_quantize_and_verify_under_one_name(tmp_path):
    passthrough = gather()
    assert passthrough.sources["quantize"]["max_class_drop"] == "max_class_drop"
    assert passthrough.sources["verify"]["max_class_drop"] == "max_class_drop"
    values = resolve("--data", tmp_path, "--target", "x86-64", "--out", tmp_path / "run", "--max-class-drop", "3")
    options = {p.name: values[p.name] for p in passthrough.params}
    request = ShipRequest(data=tmp_path, out=tmp_path / "run", target="x86-64", passthrough=passthrough,
                          options=options, explicit=frozenset({"max_class_drop"}))  # fmt: skip
    (tmp_path / "cls").mkdir()
    stages = {s.name: s for s in plan(request, load_target("x86-64"), Precision.INT8)}
    assert stages["quantize"].options["max_class_drop"] == 3.0
    assert stages["verify"].options["max_class_drop"] == 3.0
