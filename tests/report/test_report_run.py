"""`edge-tl report` on a real run: one self-contained page, checked in headless Chromium, written
without torch, refreshed by every later stage."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from browser_check import assert_renders_cleanly, assert_self_contained, check_in_chromium
from staging import cli

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

BLOCKED = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxslim", "tensorrt", "torch_tensorrt", "sklearn")


def report_without_torch(run: Path) -> subprocess.CompletedProcess[str]:
    """`edge-tl report RUN` in a Python where importing torch (or any other heavy library) fails."""
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {BLOCKED!r}:
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Blocker())
        from edge_tl.cli.main import main
        main(['report', {str(run)!r}])
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def model_artifacts(run: Path) -> list[str]:
    """The models the table must list: the original, then every ONNX model and engine, in manifest order."""
    artifacts = json.loads((run / "manifest.json").read_text())["artifacts"]
    return ["checkpoint-best"] + [n for n, a in artifacts.items() if a["kind"] in ("onnx", "engine")]


def test_report_of_a_staged_run_in_headless_chromium(run_copy: Path) -> None:
    proc = report_without_torch(run_copy)
    assert proc.returncode == 0, proc.stderr
    index = run_copy / "report" / "index.html"
    assert proc.stdout.strip() == f"report: {index}"
    html = index.read_text()
    assert_self_contained(html)

    seen, rows = check_in_chromium(index, table="artifact-table")
    # Training curves, confusion matrix, accuracy against latency.
    assert_renders_cleanly(seen, min_images=3)
    expected = model_artifacts(run_copy)
    assert len(expected) == 4 and rows == expected
    assert (run_copy / "report" / "index-screenshot.png").stat().st_size > 10_000

    # The INT8 row states its change with the interval and the verdict verify computed.
    verify = json.loads((run_copy / "verify" / "report.json").read_text())
    int8 = next(r for r in verify["rows"] if r["precision"] == "int8")
    change = int8["change"]
    assert change["total"] == 359 and change["delta_pts"] == pytest.approx(
        (int8["top1"] - verify["rows"][0]["top1"]) * 100
    )
    assert change["text"] in html
    assert re.search(
        r"[+-]\d+\.\d\d pt \(95% CI [+-]\d+\.\d\d to [+-]\d+\.\d\d\), (not )?distinguishable from noise on 359 images",
        change["text"],
    )
    # The original's top-1 carries its Wilson interval, and the page says what 359 images can tell.
    assert "What 359 images can tell: one image is 0.28 pt" in html and "only from 6 images lost" in html
    # Every artifact's command line, from the manifest.
    assert "edge-tl quantize " in html and "edge-tl export " in html


def test_every_stage_refreshes_an_existing_report_and_verify_prints_the_noise_line(run_copy: Path, capsys) -> None:
    index = run_copy / "report" / "index.html"
    cli("verify", run_copy, "--no-latency", "--quiet")
    assert not index.exists()  # no report asked for: stages do not create one
    cli("report", run_copy)
    before = index.read_text()
    assert "Gates passed" not in before
    capsys.readouterr()

    # A drop of any size over 0 pt fails the point gate; the significance gate fails only a significant one.
    verify = json.loads((run_copy / "verify" / "report.json").read_text())
    rows = verify["rows"][1:]
    from edge_tl.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["verify", str(run_copy), "--no-latency", "--max-accuracy-drop", "0", "--gate", "significant"])
    out = capsys.readouterr().out
    for row in rows:
        assert f"Δ top-1 {row['name']}: {row['change']['text']}" in out
    significant_drops = [r for r in rows if r["delta_top1_pts"] < 0 and r["change"]["significant"]]
    assert exit_info.value.code == (1 if significant_drops else 0)
    after = index.read_text()
    assert after != before and "--gate significant" not in before
    assert ("Gates passed" if not significant_drops else "Gates FAILED") in after and "gate significant" in after


def test_report_errors_and_a_bare_run(tmp_path: Path, digits_run: Path, capsys) -> None:
    from edge_tl.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "is not a run directory" in err and err.count("\n") == 1

    # A run straight from finetune: the page says which stages to run next instead of failing.
    import shutil

    run = Path(shutil.copytree(digits_run, tmp_path / "bare"))
    proc = report_without_torch(run)
    assert proc.returncode == 0, proc.stderr
    html = (run / "report" / "index.html").read_text()
    assert "run `edge-tl verify RUN`" in html and "run `edge-tl evaluate RUN`" in html
    assert 'data-artifact="checkpoint-best"' in html
