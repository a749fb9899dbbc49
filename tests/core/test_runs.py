from __future__ import annotations

import json
import os

import pytest

from edge_tl.errors import RunError
from edge_tl.runs import MANIFEST_NAME, SCHEMA_VERSION, Run, atomic_write_bytes, sha256_file


def test_create_open_and_record_artifacts(tmp_path) -> None:
    run = Run.create(tmp_path / "r", classes=["a", "b"])
    (run.path("export")).mkdir()
    model = run.path("export", "m.onnx")
    model.write_bytes(b"onnx bytes")
    art = run.add_artifact(
        "onnx-fp32", kind="onnx", path=model, stage="export", precision="fp32", details={"opset": 17}
    )
    assert art.path == "export/m.onnx"
    assert art.sha256 == sha256_file(model)

    again = Run.open(tmp_path / "r")
    assert again.get("classes") == ["a", "b"]
    assert again.artifact("onnx-fp32").details == {"opset": 17}
    assert [a.name for a in again.artifacts(kind="onnx")] == ["onnx-fp32"]
    assert json.loads((tmp_path / "r" / MANIFEST_NAME).read_text())["schema_version"] == SCHEMA_VERSION


def test_tampered_artifact_is_detected(tmp_path) -> None:
    run = Run.create(tmp_path)
    f = run.path("x.bin")
    f.write_bytes(b"1")
    run.add_artifact("x", kind="report", path=f, stage="test")
    f.write_bytes(b"2")
    with pytest.raises(RunError, match="does not match the sha256"):
        run.artifact_path("x")


def test_open_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(RunError, match="does not exist"):
        Run.open(tmp_path / "missing")
    with pytest.raises(RunError, match="not an edge-tl run directory"):
        Run.open(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{broken")
    with pytest.raises(RunError, match="not valid JSON"):
        Run.open(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(RunError, match="Upgrade edge-tl"):
        Run.open(tmp_path)


def test_unknown_artifact_lists_known_ones(tmp_path) -> None:
    run = Run.create(tmp_path)
    with pytest.raises(RunError, match=r"has no artifact 'onnx-fp32' \(it has: none\)"):
        run.artifact("onnx-fp32")


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path, monkeypatch) -> None:
    target = tmp_path / "f.txt"
    target.write_bytes(b"old")

    def fail(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_write_gives_the_usual_file_mode(tmp_path) -> None:
    from edge_tl import runs

    path = atomic_write_bytes(tmp_path / "m.json", b"{}")
    assert path.stat().st_mode & 0o777 == 0o666 & ~runs._UMASK
