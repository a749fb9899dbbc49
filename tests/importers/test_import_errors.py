"""Bad sources are refused with one clear line (exit 1, no traceback) before anything is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_tl", "import", *map(str, args)], capture_output=True, text=True, timeout=600
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def resnet_state():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=5).state_dict()


def test_a_head_of_the_wrong_size_for_the_labels_is_refused(resnet_state, tmp_path: Path) -> None:
    import torch

    torch.save(resnet_state, tmp_path / "w.pt")
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    proc = _cli(
        "--out",
        tmp_path / "run",
        "--backbone",
        "resnet18",
        "--weights",
        tmp_path / "w.pt",
        "--labels",
        tmp_path / "labels.txt",
        "--img-size",
        "32",
    )
    _one_line_error(proc, "head has 5 outputs", "names 3 classes")
    assert not (tmp_path / "run").exists()


def test_missing_and_unexpected_keys_are_named(resnet_state, tmp_path: Path) -> None:
    import torch

    state = dict(resnet_state)
    state.pop("layer2.0.conv1.weight")
    state["extra.bias"] = torch.zeros(3)
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    proc = _cli("--out", tmp_path / "run", "--backbone", "resnet18", "--weights", tmp_path / "w.pt", "--img-size", "32")
    _one_line_error(proc, "1 missing key(s) [layer2.0.conv1.weight]", "1 unexpected key(s) [extra.bias]")
    assert not (tmp_path / "run").exists()


def test_weights_of_another_architecture_name_the_shape_mismatch(resnet_state, tmp_path: Path) -> None:
    import torch

    state = dict(resnet_state)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, tmp_path / "w.pt")
    proc = _cli("--out", tmp_path / "run", "--backbone", "resnet18", "--weights", tmp_path / "w.pt", "--img-size", "32")
    _one_line_error(proc, "shape mismatch", "conv1.weight (64, 3, 3, 3) vs (64, 3, 7, 7)")


def _nhwc_onnx(path: Path) -> Path:
    torch = pytest.importorskip("torch")

    class ChannelsLast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)

        def forward(self, x):  # (N, H, W, 3)
            return self.fc(x.mean(dim=(1, 2)))

    torch.onnx.export(
        ChannelsLast().eval(),
        torch.zeros(1, 32, 32, 3),
        str(path),
        input_names=["image"],
        opset_version=17,
        dynamo=False,
    )
    return path


def test_an_nhwc_onnx_is_imported_as_nhwc(tmp_path: Path) -> None:
    import json

    pytest.importorskip("onnx")
    onnx_path = _nhwc_onnx(tmp_path / "nhwc.onnx")
    proc = _cli(
        "--out",
        tmp_path / "run",
        "--onnx",
        onnx_path,
        "--img-size",
        "32",
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.5,0.5,0.5",
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["input_contract"]["layout"] == "NHWC" and manifest["input_contract"]["dtype"] == "float32"
    assert manifest["artifacts"]["onnx-fp32"]["details"]["input_shape"] == [1, 32, 32, 3]


def test_an_onnx_with_a_float16_image_input_names_the_types_it_takes(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(_nhwc_onnx(tmp_path / "nhwc.onnx")))
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    onnx.save(model, str(tmp_path / "half.onnx"))
    proc = _cli("--out", tmp_path / "run", "--onnx", tmp_path / "half.onnx", "--img-size", "32", "--input-range", "0-1")
    _one_line_error(proc, "the image input 'image' is FLOAT16", "float32 or uint8")
    assert not (tmp_path / "run").exists()


def test_an_onnx_source_without_img_size_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    onnx_path = _nhwc_onnx(tmp_path / "model.onnx")
    proc = _cli("--out", tmp_path / "run", "--onnx", onnx_path, "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5")
    line = _one_line_error(proc, "--img-size")
    assert "--mean" not in line  # only what is missing is asked for
    assert not (tmp_path / "run").exists()
