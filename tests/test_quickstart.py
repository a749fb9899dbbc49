"""The main job, end to end: `edge-tl quickstart` on the built-in digits (about 2-3 minutes on 2 cores)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")
pytest.importorskip("onnxruntime")


def test_quickstart_trains_exports_quantizes_within_budget_and_verifies(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edge_tl.cli.main import cli
    from edge_tl.quickstart import QUICKSTART_INT8_BUDGET_POINTS
    from edge_tl.runs import Run

    out = tmp_path / "qs"
    result = CliRunner().invoke(cli, ["quickstart", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    run = Run.open(out)
    assert run.get("metrics")["val_top1"] >= 0.97
    for name in ("checkpoint-best", "onnx-fp32", "onnx-fp16", "onnx-int8-onnxruntime-cpu-int8", "verify-report"):
        assert run.has_artifact(name), name
    int8 = run.artifact("onnx-int8-onnxruntime-cpu-int8")
    assert int8.details["status"] == "passing"
    assert int8.metrics["max_accuracy_drop_points"] == QUICKSTART_INT8_BUDGET_POINTS
    assert int8.metrics["accuracy_drop_points"] <= QUICKSTART_INT8_BUDGET_POINTS
    # verify measured the same INT8 file on the same images and agrees with quantize
    report = json.loads((out / run.artifact("verify-report").path).read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert rows["onnx-int8-onnxruntime-cpu-int8"]["top1"] == pytest.approx(int8.metrics["val_top1"])
    assert rows["onnx-fp32"]["top1_agreement"] >= 0.99

    # The report: written by the quickstart, its INT8 row states the change with its interval,
    # and it renders in headless Chromium (skipped only where Chromium cannot be installed).
    index = out / "report" / "index.html"
    assert index.is_file()
    int8_change = rows["onnx-int8-onnxruntime-cpu-int8"]["change"]
    assert int8_change["total"] == report["num_images"]
    assert f"{int8_change['delta_pts']:+.2f} pt (95% CI " in int8_change["text"]
    assert f"distinguishable from noise on {report['num_images']} images" in int8_change["text"]
    assert int8_change["text"] in index.read_text()
    _check_report_in_chromium(index, [name for name in rows if not name.startswith("checkpoint")])


def _check_report_in_chromium(index: Path, verified: list[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "browser_check", Path(__file__).parent / "report" / "browser_check.py"
    )
    browser = sys.modules.get("browser_check")  # loaded already where tests/report ran first
    if browser is None:
        browser = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["browser_check"] = browser  # dataclasses look their module up there
        spec.loader.exec_module(browser)  # type: ignore[union-attr]
    browser.assert_self_contained(index.read_text())
    seen, rows = browser.check_in_chromium(index, table="artifact-table")
    browser.assert_renders_cleanly(seen, min_images=3)
    assert rows == ["checkpoint-best", *verified]


def test_quickstart_holds_int8_to_the_advertised_budget() -> None:
    from edge_tl.quickstart import QUICKSTART_INT8_BUDGET_POINTS

    # README: "quantizes to INT8 for the CPU held to a 0.5-point top-1 budget"
    assert QUICKSTART_INT8_BUDGET_POINTS == 0.5
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "held to a\n0.5-point top-1 budget" in readme
