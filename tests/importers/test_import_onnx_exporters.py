"""ONNX files from the exporters people use, imported without dead ends.

The trained ResNet-18 of ``conftest.py`` is exported here by torch's TorchScript exporter at
opset 17, by ``torch.onnx.export(dynamo=True)`` at 18, 20 and 21, by timm's own
``timm.utils.onnx.onnx_export`` (what timm's ``onnx_export.py`` calls), with a fixed batch, with
a uint8 NHWC input, and with its normalisation inside the graph. Each import is checked against
ONNX Runtime running the file itself on the same images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.importers.conftest import MEAN, SIZE, STD

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

#: TensorRT 10.3 (its default release) parses up to opset 20 (onnx-tensorrt 10.x docs/operators.md)
ORIN = "jetson-orin-nano-8gb"
#: TensorRT 8.5 parses up to opset 17 (onnx-tensorrt 8.5-GA docs/operators.md)
XAVIER = "jetson-xavier-nx"


def edge(*args: object, ok: bool = True) -> str:
    """The command's output; with ``ok=False`` its refusal, the one line `edge-tl` prints (``Error: ...``)."""
    from click.testing import CliRunner

    from edge_tl.cli.main import cli
    from edge_tl.errors import EdgeTLError

    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result.output
    assert isinstance(result.exception, EdgeTLError), result.output + repr(result.exception)
    line = f"Error: {result.exception}"
    assert "\n" not in line
    return line


def _network(trained):
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    model.load_state_dict(trained.state)
    return model


def _export(module, path: Path, exporter: str, opset: int | None, *, batch: int = 2, example=None) -> Path:
    import torch

    example = torch.zeros(batch, 3, SIZE, SIZE) if example is None else example
    if exporter == "dynamo":
        program = torch.onnx.export(
            module.eval(),
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["pixels"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        )
        program.save(str(path))
    elif exporter == "timm":
        from timm.utils.onnx import onnx_export

        onnx_export(module, str(path), example_input=example, opset=opset, check=True)
    else:
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["pixels"],
            dynamic_axes=None if exporter == "fixed" else {"pixels": {0: "n"}},
        )
    return path


def _opset(path: Path) -> int:
    import onnx

    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def _import(trained, onnx_path: Path, run: Path, *extra: object, ok: bool = True, prep: bool = True) -> str:
    return edge(
        "import",
        "--out",
        run,
        "--onnx",
        onnx_path,
        "--labels",
        trained.labels,
        "--val-data",
        trained.val,
        "--calib-data",
        trained.calib,
        *(trained.prep_flags if prep else ("--img-size", SIZE)),
        *extra,
        "--quiet",
        ok=ok,
    )


def _own_logits(onnx_path: Path, run: Path, feed=lambda x: x) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime on the file itself (one image at a time) over the run's validation images."""
    import onnxruntime as ort

    from edge_tl.data import iter_batches, split_from_run
    from edge_tl.models import Preprocessing
    from edge_tl.runs import Run

    opened = Run.open(run)
    prep = Preprocessing.from_dict(opened.get("preprocessing"))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits, labels = [], []
    for images, batch_labels in iter_batches(list(split_from_run(opened).val), prep, 1):
        logits.append(session.run(None, {name: feed(images)})[0])
        labels.append(batch_labels)
    return np.concatenate(logits), np.concatenate(labels)


# --------------------------------------------------------------------------- every exporter; evaluate


@pytest.mark.parametrize(
    ("exporter", "asked", "written"),
    [
        ("torchscript", 17, 17),
        ("dynamo", 17, 18),  # torch 2.14's dynamo exporter writes 18 when asked for 17
        ("dynamo", 20, 20),
        ("dynamo", 21, 21),
        ("timm", None, 20),  # timm's onnx_export: the TorchScript exporter at torch 2.14's default opset, 20
    ],
)
def test_each_exporters_onnx_evaluates_as_onnxruntime_scores_the_file(
    exporter: str, asked: int | None, written: int, trained, tmp_path: Path
) -> None:
    onnx_path = _export(_network(trained), tmp_path / "model.onnx", exporter, asked)
    assert _opset(onnx_path) == written
    run = tmp_path / "run"
    _import(trained, onnx_path, run)
    out = edge("evaluate", run)  # before: "unknown backbone 'model'"
    logits, labels = _own_logits(onnx_path, run)
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    correct = int((logits.argmax(1) == labels).sum())
    assert metrics["checkpoint"] == "onnx-fp32" and metrics["num_val"] == len(labels) == 120
    assert round(metrics["top1"] * 120) == correct and correct >= 96  # the trained model, not noise
    assert f"top-1 {correct / 120:.4f}" in out


# --------------------------------------------------------------------------- opset against targets


def test_an_opset_21_import_for_tensorrt_10_3_is_converted_to_20_with_the_same_logits(trained, tmp_path: Path) -> None:
    from edge_tl.runs import Run

    onnx_path = _export(_network(trained), tmp_path / "m21.onnx", "dynamo", 21)
    run = tmp_path / "run"
    _import(trained, onnx_path, run, "--target", ORIN)  # before: no such option
    fp32 = Run.open(run).artifact("onnx-fp32")
    assert fp32.details["opset"] == _opset(run / "export" / "model.fp32.onnx") == 20
    assert fp32.details["converted_from"]["opset"] == 21
    converted, _ = _own_logits(run / "export" / "model.fp32.onnx", run)
    original, _ = _own_logits(onnx_path, run)
    np.testing.assert_allclose(converted, original, atol=1e-4, rtol=0)
    edge("compile", run, "--target", ORIN, "--precision", "fp16", "--quiet")


def test_a_dynamo_onnx_the_converter_cannot_bring_to_17_names_the_re_export(trained, tmp_path: Path) -> None:
    onnx_path = _export(_network(trained), tmp_path / "m18.onnx", "dynamo", 17)  # written as 18
    out = _import(trained, onnx_path, tmp_path / "run", "--target", XAVIER, "--target", ORIN, ok=False)
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "jetson-xavier-nx (TensorRT 8.5.2)" in errors[0]
    assert "re-export it from its source at opset 17" in errors[0] and "opset_version=17" in errors[0]
    assert not (tmp_path / "run").exists()


def test_compile_s_advice_for_an_imported_onnx_is_a_command_that_works(trained, tmp_path: Path) -> None:
    from edge_tl.runs import Run

    onnx_path = _export(_network(trained), tmp_path / "m21.onnx", "dynamo", 21)
    run = tmp_path / "run"
    _import(trained, onnx_path, run)
    refused = edge("compile", run, "--target", ORIN, "--precision", "fp16", ok=False)
    assert f"`edge-tl export {run} --opset 20`" in refused
    edge("export", run, "--opset", "20", "--quiet")  # before: "not re-exported", and compile refused again
    opened = Run.open(run)
    fp32 = opened.artifact("onnx-fp32")
    assert fp32.details["opset"] == 20 and fp32.details["converted_from"]["opset"] == 21
    assert fp32.metrics["parity_max_abs_diff"] <= 1e-4 and fp32.metrics["parity_top1_agreement"] == 1.0
    assert opened.artifact("onnx-fp16").details["opset"] == 20
    edge("compile", run, "--target", ORIN, "--precision", "fp16", "--quiet")
    # Without --opset, an imported ONNX is kept at its own opset (export's torch default, 17, is not forced on it).
    edge("export", run, "--quiet")
    assert Run.open(run).artifact("onnx-fp32").sha256 == fp32.sha256


# --------------------------------------------------------------------------- a fixed batch


def test_a_fixed_batch_onnx_quantizes_and_verifies(trained, tmp_path: Path) -> None:
    from edge_tl.runs import Run

    onnx_path = _export(_network(trained), tmp_path / "b4.onnx", "fixed", 17, batch=4)
    run = tmp_path / "run"
    _import(trained, onnx_path, run)
    assert Run.open(run).artifact("onnx-fp32").details["input_shape"] == [4, 3, SIZE, SIZE]
    # before: calibrated, then "Use --batch-size 4", an option quantize does not have
    out = edge("quantize", run, "--target", ORIN, "--max-accuracy-drop", "1", "--calib-samples", "32")
    assert "b4 p50" in out and "--batch-size" not in out
    int8 = Run.open(run).artifact("onnx-int8-tensorrt-int8-qdq")
    assert int8.metrics["latency_batch"] == 4 and int8.details["input_shape"] == [4, 3, SIZE, SIZE]
    assert int8.metrics["accuracy_budget_met"] is True
    edge("verify", run, "--quiet", "--max-accuracy-drop", "1")
    report = json.loads((run / "verify" / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["onnx-fp32"]["num_images"] == 120 and rows["onnx-fp32"]["latency_batch"] == 4
    logits, labels = _own_logits(onnx_path, run, feed=lambda x: np.repeat(x, 4, axis=0))
    assert round(rows["onnx-fp32"]["top1"] * 120) == int((logits[::4].argmax(1) == labels).sum())


# --------------------------------------------------------------------------- uint8 NHWC, normalised inside


class _Baked:
    """The trained network behind what serving exports bake in: pixels (uint8 and/or NHWC) normalised inside."""

    @staticmethod
    def module(network, *, uint8: bool, nhwc: bool):
        import torch

        class Baked(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = network
                self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
                self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

            def forward(self, x):
                if nhwc:
                    x = x.permute(0, 3, 1, 2)
                x = x.float() / 255.0 if uint8 else x
                return self.net((x - self.mean) / self.std)

        return Baked().eval()


def test_a_uint8_nhwc_onnx_is_imported_and_every_stage_feeds_it_pixels(trained, tmp_path: Path) -> None:
    import torch

    from edge_tl.deploy.evalpack import EvalPack, write_eval_pack
    from edge_tl.runs import Run

    network = _network(trained)
    u8_path = _export(
        _Baked.module(network, uint8=True, nhwc=True),
        tmp_path / "u8.onnx",
        "torchscript",
        17,
        example=torch.zeros(1, SIZE, SIZE, 3, dtype=torch.uint8),
    )
    run = tmp_path / "run"
    _import(trained, u8_path, run, prep=False)  # before: "is UINT8 ..., not an image"
    opened = Run.open(run)
    assert opened.get("input_contract") == {
        "version": 1,
        "dtype": "uint8",
        "layout": "NHWC",
        "normalised_inside": True,
        "value_range": [0.0, 255.0],
    }
    assert opened.artifact("onnx-fp32").details["input_shape"] == ["batch", SIZE, SIZE, 3]

    # The same network fed float32 NCHW normalised outside is the other side of the comparison.
    twin = _export(network, tmp_path / "f32.onnx", "torchscript", 17)
    twin_run = tmp_path / "twin"
    _import(trained, twin, twin_run)
    pixels = lambda x: np.clip(np.rint(x), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)  # noqa: E731
    u8_logits, labels = _own_logits(u8_path, run, feed=pixels)
    f32_logits, _ = _own_logits(twin, twin_run)
    # The same pixels: the logits differ only by float32 rounding (the normalisation runs in another place;
    # these logits reach 660) and every prediction is the same.
    np.testing.assert_allclose(u8_logits, f32_logits, atol=1e-4, rtol=1e-4)
    assert np.array_equal(u8_logits.argmax(1), f32_logits.argmax(1))
    edge("evaluate", run)
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert round(metrics["top1"] * 120) == int((u8_logits.argmax(1) == labels).sum()) >= 96

    # calibration and the accuracy budget feed the model uint8 NHWC pixels
    edge("quantize", run, "--target", ORIN, "--calib-samples", "32", "--max-accuracy-drop", "1", "--quiet")
    assert Run.open(run).artifact("onnx-int8-tensorrt-int8-qdq").metrics["accuracy_budget_met"] is True

    # The device's evaluation pack holds the model's own input: uint8 NHWC bytes.
    pack = write_eval_pack(Run.open(run), tmp_path / "pack", max_images=8, chunk_size=8)
    header = json.loads((tmp_path / "pack" / "pack.json").read_text())
    assert (header["dtype"], header["layout"], header["image_shape"]) == ("uint8", "NHWC", [SIZE, SIZE, 3])
    stored = pack.read_chunk(pack.chunks[0])
    assert stored.dtype == np.uint8 and stored.shape == (8, SIZE, SIZE, 3)
    images, _ = next(EvalPack.load(tmp_path / "pack").batches())
    assert np.array_equal(pixels(images), stored)

    refused = edge("compile", run, "--target", ORIN, "--precision", "fp16", ok=False)
    assert "uint8 NHWC" in refused and "float32 NCHW input" in refused


def test_a_graph_that_normalises_inside_is_refused_with_mean_std_and_imported_with_input_range(
    trained, tmp_path: Path
) -> None:
    path = _export(_Baked.module(_network(trained), uint8=False, nhwc=False), tmp_path / "n.onnx", "torchscript", 17)
    # ImageNet mean/std on a graph that normalises itself: before, imported silently
    out = _import(trained, path, tmp_path / "run", ok=False)
    assert "normalises its input itself (Sub [0.485, 0.456, 0.406] right after the input)" in out
    assert "give --input-range 0-1 instead of --mean/--std" in out
    assert not (tmp_path / "run").exists()
    run = tmp_path / "ok"
    _import(trained, path, run, "--input-range", "0-1", prep=False)
    edge("evaluate", run)
    logits, labels = _own_logits(path, run)
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert round(metrics["top1"] * 120) == int((logits.argmax(1) == labels).sum()) >= 96


def test_a_normalisation_folded_out_of_sight_is_found_by_its_scores(trained, tmp_path: Path) -> None:
    import torch

    class FoldedStem(torch.nn.Module):
        """(x - mean) / std as a 1x1 convolution: nothing after the input says it normalises."""

        def __init__(self, network) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 3, 1)
            with torch.no_grad():
                self.stem.weight.copy_(torch.diag(1 / torch.tensor(STD)).view(3, 3, 1, 1))
                self.stem.bias.copy_(-torch.tensor(MEAN) / torch.tensor(STD))
            self.net = network

        def forward(self, x):
            return self.net(self.stem(x))

    path = _export(FoldedStem(_network(trained)), tmp_path / "f.onnx", "torchscript", 17)
    out = _import(trained, path, tmp_path / "run", ok=False)
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "import it with --input-range 0-1 instead of --mean/--std" in errors[0]
    import re

    given, inside = map(float, re.search(r"scores ([\d.]+)% top-1 .* but ([\d.]+)% fed as pixels", errors[0]).groups())
    assert inside >= 80.0 and inside - given >= 20.0
    assert not (tmp_path / "run").exists()


def test_a_graph_that_rescales_0_255_pixels_itself_is_told_to_take_them(tmp_path: Path) -> None:
    """A Keras-style ``Rescaling(1/255)`` in front: the pixels it expects are 0..255, not 0..1."""
    import torch

    class Rescaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)

        def forward(self, x):
            return self.fc((x * (1 / 255)).mean(dim=(2, 3)))

    path = _export(Rescaled(), tmp_path / "r.onnx", "torchscript", 17)
    out = edge(
        "import", "--out", tmp_path / "run", "--onnx", path, "--img-size", SIZE, "--mean", "0.5,0.5,0.5",
        "--std", "0.5,0.5,0.5", ok=False,
    )  # fmt: skip
    assert "(Mul [0.0039] right after the input)" in out and "give --input-range 0-255 instead of" in out
    run = tmp_path / "ok"
    edge("import", "--out", run, "--onnx", path, "--img-size", SIZE, "--input-range", "0-255", "--quiet")
    contract = json.loads((run / "manifest.json").read_text())["input_contract"]
    assert contract["value_range"] == [0.0, 255.0] and contract["dtype"] == "float32"
    prep = json.loads((run / "manifest.json").read_text())["preprocessing"]
    assert prep["mean"] == [0.0, 0.0, 0.0] and prep["std"] == [pytest.approx(1 / 255)] * 3


# --------------------------------------------------------------------------- the sanity line


def test_an_onnx_that_scores_at_chance_on_val_data_stops_the_import_naming_what_was_checked(
    trained, tmp_path: Path
) -> None:
    import torch

    # A network that answers class 0 for every image: right on that class's images only.
    module = _network(trained)
    with torch.no_grad():
        module.fc.weight.zero_()
        module.fc.bias.copy_(torch.nn.functional.one_hot(torch.tensor(0), 10).float())
    onnx_path = _export(module, tmp_path / "chance.onnx", "torchscript", 17)
    refused = _import(trained, onnx_path, tmp_path / "run", ok=False)
    first = len(list((trained.val / trained.classes[0]).iterdir()))  # the images of output 0's class
    assert (
        f"the reference scores {first}/120 ({100 * first / 120:.1f}%) on --val-data, within 2 points of chance"
        in refused
    )
    assert "one model, no checkpoint keys" in refused and "Fix the cause, or pass --accept-low-accuracy" in refused
    assert not (tmp_path / "run").exists()
    _import(trained, onnx_path, tmp_path / "run", "--accept-low-accuracy")
    assert (tmp_path / "run" / "export" / "model.fp32.onnx").is_file()
