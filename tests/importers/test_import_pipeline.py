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
    if layout == "timm":
        # timm train.py with --model-ema under DDP: the live weights differ from the EMA ones,
        # and the EMA ones are the weights it validated and kept.
        torch.save(
            {
                "epoch": 3,
                "arch": "resnet18",
                "version": 2,
                "args": args,
                "metric": 0.9,
                "state_dict": {f"module.{k}": v for k, v in _perturbed(state).items()},
                "state_dict_ema": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
            },
            path,
        )
        return "state_dict_ema"
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
        return "state_dict"
    torch.save(state, path)
    return "(plain state dict)"


def _pipeline(run: Path) -> dict:
    """quantize with a 1-point budget, compile INT8 for the Orin Nano, verify; the verify report."""
    edge("quantize", run, "--target", TARGET, "--max-accuracy-drop", "1", "--calib-samples", "32", "--quiet")
    edge("compile", run, "--target", TARGET, "--precision", "int8", "--quiet")
    edge("verify", run, "--no-latency", "--quiet", "--max-accuracy-drop", "1")
    return json.loads((run / "verify" / "report.json").read_text())


@pytest.mark.parametrize("layout", ["timm", "torchvision", "lightning", "plain"])
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
    # The run's model is exactly the trained one (for timm: the EMA weights, not the live ones).
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
