"""The writer seam: a recipe's output format picks its writer by name, a format of one's own is a writer
file plus a recipe (toy_writer.py + toy-activation-qdq.toml here), and the target's recipe is chosen
by the library as by the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from edge_tl.errors import ConfigError  # noqa: E402
from edge_tl.quantize import QuantizeConfig, quantize_run  # noqa: E402
from edge_tl.quantize.api import resolve_recipe  # noqa: E402
from edge_tl.quantize.qdq_onnxruntime import OnnxRuntimeQdqWriter  # noqa: E402
from edge_tl.quantize.qdq_tensorrt import TensorRTQdqWriter  # noqa: E402
from edge_tl.quantize.recipes import CalibMethod, OutputFormat, load_recipe  # noqa: E402
from edge_tl.quantize.trt_cache import CacheWriter, read_cache  # noqa: E402
from edge_tl.quantize.writers import (  # noqa: E402
    ModelWriter,
    get_writer,
    list_writers,
    register_writer,
    writer_for,
)
from edge_tl.runs import Run  # noqa: E402

HERE = Path(__file__).resolve().parent
TOY_RECIPE = HERE / "toy-activation-qdq.toml"
FAST = {"calib_samples": 32, "latency_iterations": 2, "threads": 1, "eval_batch_size": 128}


@pytest.fixture(scope="module")
def exported(tiny_digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edge_tl.export import ExportConfig, Precision, export_run

    root = Path(shutil.copytree(tiny_digits_run, tmp_path_factory.mktemp("writers") / "run"))
    export_run(root, config=ExportConfig(precisions=(Precision.FP32,), parity_images=16))
    return root


@pytest.fixture()
def run_dir(exported: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / "run"))


def _val_top1(path: Path, run_dir: Path) -> float:
    from edge_tl.data import iter_batches, split_from_run
    from edge_tl.models import Preprocessing

    run = Run.open(run_dir)
    samples = list(split_from_run(run).val)
    images, labels = next(iter(iter_batches(samples, Preprocessing.from_dict(run.get("preprocessing")), 10_000)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
    return float((logits.argmax(axis=1) == labels).mean())


def test_a_recipe_output_format_of_ones_own_is_a_writer_file_and_a_recipe(run_dir: Path) -> None:
    recipe = load_recipe(TOY_RECIPE)
    assert (recipe.output, recipe.writer) == ("toy-activation-qdq", "toy_writer.py:WRITER")
    result = quantize_run(run_dir, config=QuantizeConfig(recipe=str(TOY_RECIPE), **FAST))

    out = run_dir.resolve() / "quantize" / "toy-activation-qdq"
    assert result.artifacts == ("onnx-int8-toy-activation-qdq", "calib-table-toy-activation-qdq")
    assert result.model_path == out / "model.int8.onnx" and result.table_path == out / "calibration_table.json"
    run = Run.open(run_dir)
    fp32 = onnx.load(str(run.artifact_path("onnx-fp32")))
    written = onnx.load(str(run.artifact_path("onnx-int8-toy-activation-qdq")))
    convs = [n for n in fp32.graph.node if n.op_type == "Conv"]
    quantize_nodes = [n for n in written.graph.node if n.op_type == "QuantizeLinear"]
    # one pair per convolution output, each with the calibrated range of that output
    assert len(convs) > 10 and [n.input[0] for n in quantize_nodes] == [c.output[0] for c in convs]
    table = json.loads(result.table_path.read_text())["tensors"]
    assert set(table) == {c.output[0] for c in convs}
    initializers = {i.name: i for i in written.graph.initializer}
    for node in quantize_nodes:
        scale = float(onnx.numpy_helper.to_array(initializers[node.input[1]]))
        assert scale == pytest.approx(table[node.input[0]]["amax"] / 127, rel=1e-6)
    # measured and recorded like a shipped Q/DQ format
    top1 = _val_top1(result.model_path, run_dir)
    assert result.top1 == top1 > 0.9 and result.float_layers == () and result.budget_met is None
    record = run.artifact("onnx-int8-toy-activation-qdq")
    assert (record.kind, record.stage, record.precision) == ("onnx", "quantize", "int8")
    assert record.details["recipe"] == recipe.to_dict() and record.details["recipe"]["writer"] == recipe.writer
    assert record.details["ops"]["QuantizeLinear"] == len(convs) and record.details["status"] == "no-budget"
    assert record.metrics["val_top1"] == top1
    # a second job in the same process finds the writer its first load registered
    assert writer_for(load_recipe(TOY_RECIPE)) is get_writer("toy-activation-qdq")
    assert "toy-activation-qdq" in list_writers()


def test_shipped_formats_are_registered_and_unknown_or_duplicate_names_are_refused() -> None:
    assert isinstance(get_writer(OutputFormat.QDQ_TENSORRT), TensorRTQdqWriter)
    assert isinstance(get_writer("qdq-onnxruntime"), OnnxRuntimeQdqWriter)
    assert isinstance(get_writer("tensorrt-cache"), CacheWriter)
    shipped = {"tensorrt-int8-qdq": "qdq-tensorrt", "onnxruntime-cpu-int8": "qdq-onnxruntime",
               "tensorrt-int8-cache": "tensorrt-cache"}  # fmt: skip
    for recipe, output in shipped.items():
        assert writer_for(load_recipe(recipe)) is get_writer(output)
    with pytest.raises(ConfigError, match=r"unknown output format 'qdq-tensort'\. Did you mean qdq-tensorrt\?"):
        get_writer("qdq-tensort")

    class Impostor(TensorRTQdqWriter):
        pass

    with pytest.raises(ConfigError, match=r"output format 'qdq-tensorrt' is already registered \(by edge-tl"):
        register_writer(Impostor())
    assert isinstance(get_writer("qdq-tensorrt"), TensorRTQdqWriter) and not isinstance(
        get_writer("qdq-tensorrt"), Impostor
    )

    class Nameless(ModelWriter):
        def tensors(self, model, recipe):
            return []

        def layers(self, model, recipe):
            return []

        def build(self, model, ranges, recipe, float_layers):
            return model

    with pytest.raises(ConfigError, match="needs a plain name"):
        register_writer(Nameless())
    with pytest.raises(ConfigError, match="is not a writer"):
        register_writer(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("writer", "output", "message"),
    [
        ("toy_writer.py", "toy-activation-qdq", "give 'package.module:attribute' or 'file.py:attribute'"),
        ("missing.py:WRITER", "toy-activation-qdq", "missing.py', which does not exist"),
        ("toy_writer.py:ActivationQdq", "toy-activation-qdq", "is ABCMeta, not a writer"),
        ("edge_tl.no_such_module:WRITER", "x", "names module 'edge_tl.no_such_module', which cannot be imported"),
        ("toy_writer.py:WRITER", "toy-qdq", "field 'output' is 'toy-qdq' but its writer"),
    ],
)
def test_a_recipes_writer_field_is_checked_when_quantize_loads_it(
    tmp_path: Path, writer: str, output: str, message: str
) -> None:
    shutil.copy(HERE / "toy_writer.py", tmp_path / "toy_writer.py")
    text = TOY_RECIPE.read_text()
    path = tmp_path / "mine.toml"
    path.write_text(
        text.replace('writer = "toy_writer.py:WRITER"', f'writer = "{writer}"').replace(
            'output = "toy-activation-qdq"', f'output = "{output}"'
        )
    )
    with pytest.raises(ConfigError) as info:
        writer_for(load_recipe(path))
    assert str(path) in str(info.value) and message in str(info.value)


def test_without_a_writer_field_the_output_must_be_a_shipped_format(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(TOY_RECIPE.read_text().replace('writer = "toy_writer.py:WRITER"\n', ""))
    with pytest.raises(ConfigError, match="field 'output' is 'toy-activation-qdq'; choose one of"):
        load_recipe(path)


def test_a_writer_by_module_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an installed or importable module serves as well as a file beside the recipe
    (tmp_path / "my_formats.py").write_text(
        (HERE / "toy_writer.py").read_text().replace('name = "toy-activation-qdq"', 'name = "toy-by-module"')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "by-module.toml"
    path.write_text(
        TOY_RECIPE.read_text()
        .replace('writer = "toy_writer.py:WRITER"', 'writer = "my_formats:WRITER"')
        .replace('output = "toy-activation-qdq"', 'output = "toy-by-module"')
    )
    import my_formats

    assert writer_for(load_recipe(path)) is my_formats.WRITER is get_writer("toy-by-module")


# --------------------------------------------------------------------------- the target's recipe


def _my_orin(tmp_path: Path) -> Path:
    """A user's Orin profile whose INT8 recipe is the calibration cache (TensorRT 10.3.0 by default)."""
    from edge_tl.targets import _shipped_files

    text = _shipped_files()["jetson-agx-orin-64gb"].read_text(encoding="utf-8")
    text = text.replace('calibration_recipe = "tensorrt-int8-qdq"', 'calibration_recipe = "tensorrt-int8-cache"')
    path = tmp_path / "my-orin.toml"
    path.write_text(text.replace('name = "jetson-agx-orin-64gb"', 'name = "my-orin"'))
    return path


def _cli_recipe(target: str, tensorrt: str | None = None) -> str:
    from edge_tl.cli.quantize import quantize_config

    return quantize_config(precision="int8", recipe=None, target=target, tensorrt=tensorrt, cache_version=None,
                           calib_method=None, calib_samples=None, calib_data=None, max_accuracy_drop=None,
                           max_float_layers=16, seed=0, threads=None).recipe  # fmt: skip


def test_resolve_recipe_is_the_targets_for_its_tensorrt_release(tmp_path: Path) -> None:
    from edge_tl.quantize.api import QuantPrecision

    mine = str(_my_orin(tmp_path))
    by_target = [
        ("jetson-orin-nano-8gb", None, "tensorrt-int8-qdq"),
        (mine, None, "tensorrt-int8-cache"),
        (mine, "11.4.1", "tensorrt-int8-qdq"),  # TensorRT 11 reads no cache
        ("arm64", None, "onnxruntime-cpu-int8"),
    ]
    for target, tensorrt, recipe in by_target:
        assert (
            resolve_recipe(QuantizeConfig(target=target, tensorrt=tensorrt)) == _cli_recipe(target, tensorrt) == recipe
        )
    assert resolve_recipe(QuantizeConfig()) == "onnxruntime-cpu-int8"
    assert resolve_recipe(QuantizeConfig(target=mine, recipe="onnxruntime-cpu-int8")) == "onnxruntime-cpu-int8"
    assert resolve_recipe(QuantizeConfig(precision=QuantPrecision.FP16, target=mine)) is None


def test_quantize_run_with_a_target_uses_its_recipe_as_the_cli_does(run_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edge_tl.cli.main import cli

    result = quantize_run(run_dir, config=QuantizeConfig(target="jetson-orin-nano-8gb", **FAST))
    assert result.recipe == _cli_recipe("jetson-orin-nano-8gb") == "tensorrt-int8-qdq"
    # TensorRT 10.3.0 builds the FP32 Q/DQ model weakly typed: no FP16-float-part variant
    assert result.artifacts == ("onnx-int8-tensorrt-int8-qdq", "calib-table-tensorrt-int8-qdq")

    mine = _my_orin(tmp_path)
    library = quantize_run(run_dir, config=QuantizeConfig(target=str(mine), calib_method=CalibMethod.MINMAX, **FAST))
    record = Run.open(run_dir).artifact("calib-cache-tensorrt-int8-cache")
    assert library.artifacts == ("calib-cache-tensorrt-int8-cache", "calib-table-tensorrt-int8-cache")
    assert (record.details["header"], record.details["cache_version_from"]) == (
        "TRT-100300-EntropyCalibration2",
        f"target {mine}",
    )
    by_library = read_cache(library.cache_path).scales
    cli_run = Path(shutil.copytree(run_dir, tmp_path / "cli-run"))
    shutil.rmtree(cli_run / "quantize")
    args = ["quantize", str(cli_run), "--target", str(mine), "--calib-method", "minmax", "--calib-samples", "32",
            "--threads", "1", "--quiet"]  # fmt: skip
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[:2] == [
        "recorded calib-cache-tensorrt-int8-cache",
        "recorded calib-table-tensorrt-int8-cache",
    ]
    cli_record = Run.open(cli_run).artifact("calib-cache-tensorrt-int8-cache")
    assert cli_record.details["header"] == record.details["header"]
    assert read_cache(Run.open(cli_run).artifact_path(cli_record.name)).scales == by_library
