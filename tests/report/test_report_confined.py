"""The page is mailed and attached to CI: it embeds and reads only the run's own files, whatever a
manifest names (no torch needed here)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

pytest.importorskip("jinja2")
matplotlib = pytest.importorskip("matplotlib")

from markupsafe import escape  # noqa: E402  (jinja2's own escaping)

from edge_tl.report import write_report  # noqa: E402

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU\n-----END OPENSSH PRIVATE KEY-----\n"


def _png() -> bytes:
    from matplotlib.figure import Figure

    buffer = io.BytesIO()
    Figure(figsize=(1, 1)).savefig(buffer, format="png")
    return buffer.getvalue()


def _run(root: Path, evaluation: dict, data: dict | None = None) -> Path:
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps({
        "schema_version": 1, "backbone": {"name": "efficientnet_lite0"}, "classes": ["a", "b"], "artifacts": {},
        "evaluation": evaluation, "data": data or {},
    }))  # fmt: skip
    return root


def _page(root: Path) -> str:
    return write_report(root).index.read_text(encoding="utf-8")


def _embedded(page: str) -> list[bytes]:
    return [base64.b64decode(part.split('"', 1)[0]) for part in page.split("data:image/png;base64,")[1:]]


def test_a_confusion_matrix_recorded_outside_the_run_is_never_embedded(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text(KEY)
    secret = base64.b64encode(key.read_bytes()).decode()
    for name, recorded in (("absolute", str(key)), ("dotdot", "../id_ed25519"), ("symlink", "evaluate/cm.png")):
        root = _run(tmp_path / name, {"confusion_matrix_png": recorded})
        if name == "symlink":
            (root / "evaluate").mkdir()
            (root / "evaluate" / "cm.png").symlink_to(key)
        page = _page(root)
        assert secret not in page and "OPENSSH" not in page
        assert str(escape(f"No confusion matrix: the manifest records it at {recorded!r}, outside the run.")) in page


def test_an_embedded_image_must_be_a_png_by_its_bytes(tmp_path):
    root = _run(tmp_path / "run", {"confusion_matrix_png": "evaluate/confusion_matrix.png"})
    (root / "evaluate").mkdir()
    (root / "evaluate" / "confusion_matrix.png").write_text(KEY)  # a run-owned path, but not an image
    page = _page(root)
    assert "OPENSSH" not in page and base64.b64encode(KEY.encode()).decode() not in page
    assert str(escape("No confusion matrix: 'evaluate/confusion_matrix.png' is not a PNG image")) in page
    png = _png()
    (root / "evaluate" / "confusion_matrix.png").write_bytes(png)
    assert png in _embedded(_page(root))


def test_a_split_file_outside_the_run_is_not_read(tmp_path):
    outside = tmp_path / "split.json"
    outside.write_text(json.dumps({"train": [["x.png", 0]] * 7, "val": [["y.png", 1]] * 5}))
    root = _run(tmp_path / "run", {}, {"split_file": "../split.json"})
    page = _page(root)
    inside = _run(tmp_path / "inside", {}, {"split_file": "split.json"})
    (inside / "split.json").write_text(outside.read_text())
    # The same file read inside the run gives the per-class counts; from outside it gives nothing.
    assert ">7<" in _page(inside) and ">7<" not in page
