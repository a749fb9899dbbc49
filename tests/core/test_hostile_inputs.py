"""Generated hostile inputs (hypothesis, a bounded and repeatable budget) for the manifest reader and
the trtexec log parser: each ends in a typed refusal or a correct result, never a traceback, and a
reader replaces nothing."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edge_tl.errors import EdgeTLError  # noqa: E402
from edge_tl.runs import MANIFEST_NAME, Run  # noqa: E402

#: Bounded and the same on every run (derandomize): a CI failure reproduces on a laptop.
BUDGET = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
#: Values a hand edit or another tool puts where edge-tl wrote something else.
HOSTILE_PATHS = st.sampled_from(["", "/etc/passwd", "../../outside", "a/../../b", "\0", ".", "export", "m.onnx"])


def _valid() -> dict:
    return {
        "schema_version": 1,
        "created": "2026-01-01T00:00:00+00:00",
        "backbone": {"name": "resnet18"},
        "preprocessing": {"input_size": 32},
        "classes": ["a", "b"],
        "data": {"split_file": "split.json"},
        "evaluation": {"confusion_matrix_png": "evaluate/confusion_matrix.png"},
        "metrics": {"val_top1": 0.9},
        "stages": {"export": {"status": "done"}},
        "artifacts": {
            "onnx-fp32": {
                "name": "onnx-fp32", "kind": "onnx", "path": "m.onnx", "sha256": "0" * 64, "stage": "export",
            }
        },
    }  # fmt: skip


@st.composite
def manifests(draw) -> object:
    """A whole JSON value, or edge-tl's manifest with one field anywhere replaced by hostile JSON."""
    if draw(st.booleans()):
        return draw(JSON)
    manifest = _valid()
    keys = [("top", k) for k in manifest] + [("artifact", k) for k in manifest["artifacts"]["onnx-fp32"]]
    where, key = draw(st.sampled_from(keys))
    value = draw(HOSTILE_PATHS if key in ("path", "split_file") else JSON)
    if where == "top":
        manifest[key] = value
    else:
        manifest["artifacts"]["onnx-fp32"][key] = value
    return manifest


def _read_everything(root: Path) -> None:
    """Every reader of a run's records, as the stages and the report call them."""
    from edge_tl.report.collect import collect
    from edge_tl.ship.stages import Stage, artifact_hashes, own_outputs_changed

    try:
        run = Run.open(root)
        for artifact in list(run.artifacts()):
            try:
                run.artifact_path(artifact.name)
            except EdgeTLError:
                pass
        run.stage_record("export")
        artifact_hashes(run, {"export"})
        own_outputs_changed(run, Stage("export", lambda: None, {}))
    except EdgeTLError:
        pass
    try:
        collect(root)
    except (EdgeTLError, ValueError):  # ValueError: collect's "missing or not JSON", said by write_report
        pass


@BUDGET
@given(manifest=manifests())
def test_the_manifest_reader_refuses_hostile_manifests_in_one_typed_line(manifest) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "run"
        root.mkdir()
        (root / "m.onnx").write_bytes(b"onnx")
        (Path(tmp) / "outside").write_text("not the run's")
        text = json.dumps(manifest)
        (root / MANIFEST_NAME).write_text(text)
        before = sorted(p.relative_to(tmp).as_posix() for p in Path(tmp).rglob("*"))
        _read_everything(root)
        # Nothing replaced, nothing written by a reader.
        assert (root / MANIFEST_NAME).read_text() == text
        assert sorted(p.relative_to(tmp).as_posix() for p in Path(tmp).rglob("*")) == before


# ---------------------------------------------------------------- trtexec's log

_LOG = (Path(__file__).parents[1] / "compile" / "fixtures" / "trtexec-10.16-rtx6000-ada.log").read_text()
_LINES = _LOG.splitlines()
NUMBERS = st.sampled_from(["inf", "nan", "1e999", "-1", "1.2.3", "e", "-", "0", "1e-400", "9" * 20, "", "1e5"])


@st.composite
def logs(draw) -> str:
    """trtexec's real log with lines dropped, repeated or cut, and numbers replaced by hostile ones."""
    lines = list(_LINES)
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "repeat", "cut", "number", "status"]))
        if action == "drop":
            del lines[i]
        elif action == "repeat":
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        elif action == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif action == "number":
            import re

            # Mostly the lines the parser reads numbers from: the summary and the device lines.
            measured = [j for j, line in enumerate(lines) if re.search(r"ms\b|qps|%|Capability|queries", line)]
            i = draw(st.sampled_from(measured)) if measured else i
            numbers = list(re.finditer(r"\d+(?:\.\d+)?", lines[i]))
            if numbers:
                m = draw(st.sampled_from(numbers))
                lines[i] = lines[i][: m.start()] + draw(NUMBERS) + lines[i][m.end() :]
        else:
            lines.insert(i, f"&&&& {draw(st.sampled_from(['PASSED', 'FAILED', 'RUNNING', 'WAIVED']))} TensorRT.trtexec")
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))


@BUDGET
@given(text=logs())
def test_the_trtexec_log_parser_refuses_hostile_logs_in_one_typed_line(text) -> None:
    import math

    from edge_tl.bench.trtexec import parse_log, to_bench_results

    try:
        result = parse_log(text)
        bench = to_bench_results(result, batch_size=1)
    except EdgeTLError:
        return
    assert result.throughput_qps is None or math.isfinite(result.throughput_qps)
    # What it gives is a measurement: finite, non-negative, and ordered as statistics are.
    for stats in (bench["gpu_compute"], bench["end_to_end"]):
        values = [stats.min_ms, stats.p50_ms, stats.mean_ms, stats.max_ms]
        assert all(math.isfinite(v) and v >= 0 for v in values), values
        assert stats.min_ms <= stats.p50_ms <= stats.max_ms and stats.min_ms <= stats.mean_ms <= stats.max_ms
