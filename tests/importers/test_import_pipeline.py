"""Every source kind becomes a run that export, quantize, compile and verify accept unchanged.

The files are real and made here: checkpoints in the layouts timm's train.py, torchvision's
reference scripts and Lightning write (plus a plain state dict), and the same network
exported to ONNX.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

TARGET = "jetson-orin-nano-8gb"


def edge(*args: str) -> str:
    from click.testing import CliRunner

    from edge_tl.cli.main import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _perturbed(state: dict) -> dict:
    return {k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()}


def _write_layout(layout: str, state: dict, path: Path) -> str:
    """Save ``state`` as ``layout`` writes it; return the checkpoint key edge-tl must take."""
    import torch

    args = argparse.Namespace(model="resnet18", lr=0.1, epochs=4)
    if layout == "torchvision":
        # references/classification/train.py, a torch.compile'd model: keys carry _orig_mod.
        torch.save(
            {
                "model": {f"_orig_mod.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": []},
                "lr_scheduler": {"last_epoch": 3},
                "epoch": 3,
                "args": args,
            },
            path,
        )
        return "model"
    if layout == "lightning":
        torch.save(
            {
                "epoch": 3,
                "global_step": 100,
                "pytorch-lightning_version": "2.4.0",
                "state_dict": {f"model.{k}": v for k, v in state.items()},
                "optimizer_states": [],
                "lr_schedulers": [],
                "hyper_parameters": {"lr": 0.1, "num_classes": 10},
            },
            path,
        )
        return "state_dict:model"
    torch.save(state, path)
    return "(plain state dict)"


def _pipeline(run: Path) -> dict:
    """quantize with a 1-point budget, compile INT8 for the Orin Nano, verify; the verify report."""
    edge("quantize", run, "--target", TARGET, "--max-accuracy-drop", "1", "--calib-samples", "32", "--quiet")
    edge("compile", run, "--target", TARGET, "--precision", "int8", "--quiet")
    edge("verify", run, "--no-latency", "--quiet", "--max-accuracy-drop", "1")
    return json.loads((run / "verify" / "report.json").read_text())


@pytest.mark.parametrize("layout", ["torchvision", "lightning", "plain"])
def test_checkpoint_layouts_become_runs_every_stage_accepts(layout: str, trained, tmp_path: Path) -> None:
    import numpy as np
    import torch

    from edge_tl.models import load_run_model
    from edge_tl.runs import Run

    weights = tmp_path / f"{layout}.pt"
    key = _write_layout(layout, trained.state, weights)
    run = tmp_path / "run"
    edge(
        "import",
        "--out",
        run,
        "--backbone",
        "resnet18",
        "--weights",
        weights,
        "--labels",
        trained.labels,
        "--val-data",
        trained.val,
        "--calib-data",
        trained.calib,
        *trained.prep_flags,
        "--quiet",
    )

    manifest = Run.open(run).manifest
    assert manifest["source"]["kind"] == "pytorch" and manifest["source"]["reference"] == "checkpoint-best"
    assert manifest["source"]["weights_key"] == key
    assert manifest["classes"] == list(trained.classes)
    assert manifest["preprocessing"]["input_size"] == 32 and manifest["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert manifest["data"]["num_val"] == 120 and manifest["data"]["num_train"] == 0
    # The run's model is exactly the trained one.
    import torchvision

    original = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    original.load_state_dict(trained.state)
    with torch.inference_mode():
        x = torch.from_numpy(trained.probe)
        np.testing.assert_array_equal(load_run_model(Run.open(run))(x).numpy(), original(x).numpy())

    edge("export", run, "--precision", "fp32", "--quiet")
    report = _pipeline(run)
    rows = {r["name"]: r for r in report["rows"]}
    assert report["passed"] and report["reference"] == "checkpoint-best"
    assert rows["checkpoint-best"]["top1"] >= 0.8  # a trained model, not noise
    assert rows["onnx-int8-tensorrt-int8-qdq"]["delta_top1_pts"] >= -1
    plan = json.loads((run / "compile" / f"{TARGET}-int8" / "build_plan.json").read_text())
    assert "quantize/tensorrt-int8-qdq/model.int8.onnx" in json.dumps(plan)


def test_timm_weights_for_a_torchvision_network_are_refused(trained, tmp_path: Path) -> None:
    """timm's resnet18 has torchvision's keys and shapes, but it is timm's network the checkpoint names."""
    import torch
    from click.testing import CliRunner

    from edge_tl.cli.main import cli

    args = argparse.Namespace(model="resnet18", lr=0.1, epochs=4)
    torch.save({"epoch": 3, "arch": "resnet18", "args": args, "state_dict": trained.state}, tmp_path / "timm.pth")
    result = CliRunner().invoke(cli, ["import", "--out", str(tmp_path / "run"), "--backbone", "resnet18",
                                      "--weights", str(tmp_path / "timm.pth")])  # fmt: skip
    assert "names its network timm's 'resnet18'" in str(result.exception)
    assert str(result.exception).endswith("give --backbone timm:resnet18")


@pytest.mark.parametrize("kind", ["torchscript", "exported-program"])
def test_saved_programs_import_and_pass_every_stage(kind: str, trained, tmp_path: Path) -> None:
    import torch
    import torchvision

    from edge_tl.data import iter_batches, split_from_run
    from edge_tl.models import Preprocessing
    from edge_tl.runs import Run, sha256_file

    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    model.load_state_dict(trained.state)
    path = tmp_path / ("model.ts" if kind == "torchscript" else "model.pt2")
    if kind == "torchscript":
        torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 32, 32)), str(path))
        program = torch.jit.load(str(path))
    else:
        batch = torch.export.Dim("batch", min=1, max=256)
        torch.export.save(torch.export.export(model, (torch.zeros(2, 3, 32, 32),), dynamic_shapes=({0: batch},)), path)
        program = torch.export.load(path).module()
    run = tmp_path / "run"
    out = edge("import", "--out", run, f"--{kind}", path, "--labels", trained.labels, "--val-data", trained.val,
               "--calib-data", trained.calib, *trained.prep_flags)  # fmt: skip

    # the number the import printed is the program's own score on the same images
    opened = Run.open(run)
    prep = Preprocessing.from_dict(opened.get("preprocessing"))
    correct = 0
    with torch.inference_mode():
        for x, y in iter_batches(split_from_run(opened).val, prep, 64):
            correct += int((program(torch.from_numpy(x)).argmax(1).numpy() == y).sum())
    assert f"reference top-1 on --val-data: {correct}/120 " in out and correct >= 100
    assert opened.get("source")["kind"] == kind and opened.get("source")["program_kind"] == kind
    fp32 = opened.artifact("onnx-fp32")
    assert fp32.details["dynamic_batch"] is True and fp32.sha256 == sha256_file(run / "export" / "model.fp32.onnx")

    report = _pipeline(run)
    rows = {r["name"]: r for r in report["rows"]}
    assert report["passed"] and report["reference"] == "onnx-fp32"
    assert rows["onnx-fp32"]["top1"] == pytest.approx(correct / 120)
    assert rows["onnx-int8-tensorrt-int8-qdq"]["delta_top1_pts"] >= -1


def test_onnx_source_is_its_own_reference_through_every_stage(trained, resnet18_onnx: Path, tmp_path: Path) -> None:
    from edge_tl.runs import Run, sha256_file

    run = tmp_path / "run"
    edge(
        "import",
        "--out",
        run,
        "--onnx",
        resnet18_onnx,
        "--labels",
        trained.labels,
        "--val-data",
        trained.val,
        "--calib-data",
        trained.calib,
        *trained.prep_flags,
        "--quiet",
    )
    opened = Run.open(run)
    assert opened.get("source")["kind"] == "onnx" and opened.get("source")["reference"] == "onnx-fp32"
    assert not opened.has_artifact("checkpoint-best")
    fp32 = opened.artifact("onnx-fp32")
    # Read from the graph: the names and the dynamic batch the test gave the exporter.
    assert fp32.details["input_name"] == "pixels" and fp32.details["output_name"] == "scores"
    assert fp32.details["input_shape"] == ["batch", 3, 32, 32] and fp32.details["dynamic_batch"] is True
    assert fp32.sha256 == sha256_file(run / "export" / "model.fp32.onnx")

    edge("export", run, "--quiet")  # FP32 is the imported file, kept; FP16 converted from it
    opened.reload()
    assert opened.artifact("onnx-fp32").sha256 == fp32.sha256
    assert opened.artifact("onnx-fp16").details["source"] == "onnx-fp32"

    report = _pipeline(run)
    rows = {r["name"]: r for r in report["rows"]}
    assert report["passed"] and report["reference"] == "onnx-fp32"
    assert [r["name"] for r in report["rows"]].count("onnx-fp32") == 1  # the reference is not compared with itself
    assert rows["onnx-fp32"]["top1"] >= 0.8
    int8 = Run.open(run).artifact("onnx-int8-tensorrt-int8-qdq")
    # quantize's budget was measured against the ONNX FP32 model, the only original there is
    assert int8.metrics["reference_top1"] == pytest.approx(rows["onnx-fp32"]["top1"])
    assert rows["onnx-fp16"]["top1_agreement"] >= 0.98
