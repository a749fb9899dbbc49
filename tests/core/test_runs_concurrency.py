"""The manifest under concurrent writers: real processes, each adding its own records at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from edge_tl.runs import Run

_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from edge_tl.runs import Run

    root, tag, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    run = Run.open(root)  # opened before the other writer's records exist
    while not go.exists():
        time.sleep(0.005)
    for i in range(40):
        f = root / f"{tag}-{i}.bin"
        f.write_bytes(tag.encode())
        run.add_artifact(f"{tag}-{i}", kind="report", path=f, stage=tag)
        run.update(**{f"section-{tag}": i})
    """
)


def test_two_processes_adding_records_keep_every_record(tmp_path: Path) -> None:
    root = tmp_path / "run"
    Run.create(root, classes=["a"])
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(root), tag, str(go)], stderr=subprocess.PIPE, text=True)
        for tag in ("quantize", "deploy")
    ]
    go.write_text("")
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    run = Run.open(root)
    names = {a.name for a in run.artifacts()}
    assert names == {f"{tag}-{i}" for tag in ("quantize", "deploy") for i in range(40)}
    # Sections set by one process survive the other's later writes too.
    assert run.get("section-quantize") == 39 and run.get("section-deploy") == 39
    assert run.get("classes") == ["a"]


def test_two_quantize_processes_started_together_both_keep_their_artifacts(digits_run: Path, tmp_path: Path) -> None:
    """The issue's case: two `edge-tl quantize` recipes on one run at once; the manifest keeps both."""
    import os
    import shutil

    import pytest

    pytest.importorskip("onnxruntime")
    from edge_tl.export import ExportConfig, Precision, export_run

    root = Path(shutil.copytree(digits_run, tmp_path / "run"))
    export_run(root, config=ExportConfig(precisions=(Precision.FP32,), parity_images=16))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "edge_tl", "quantize", str(root), "--recipe", recipe,
                          "--calib-samples", "16", "--threads", "1"], env=env, stderr=subprocess.PIPE, text=True)
        for recipe in ("onnxruntime-cpu-int8", "tensorrt-int8-cache")
    ]  # fmt: skip
    for proc in procs:
        assert proc.wait(timeout=600) == 0, proc.stderr.read() if proc.stderr else ""
    names = {a.name for a in Run.open(root).artifacts()}
    assert {
        "onnx-int8-onnxruntime-cpu-int8",
        "calib-table-onnxruntime-cpu-int8",
        "calib-cache-tensorrt-int8-cache",
    } <= names
    assert {"checkpoint-best", "onnx-fp32"} <= names
