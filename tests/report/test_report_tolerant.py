"""Result files the report reads may come from another edge-tl version or a half-finished deploy:
missing or extra fields must never stop the page (no torch needed here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("jinja2")
pytest.importorskip("matplotlib")

from edge_tl.report import refresh_report, write_report


def _run(root: Path) -> Path:
    root.mkdir()
    (root / "manifest.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "backbone": {"name": "efficientnet_lite0"},
                "classes": ["a", "b"],
                "artifacts": {},
            }
        )
    )
    return root


def _device(root: Path, name: str, results: list[dict], **files: object) -> None:
    folder = root / "deploy" / name
    folder.mkdir(parents=True)
    (folder / "accuracy.json").write_text(json.dumps({"host": name, "results": results}))
    for file_name, content in files.items():
        (folder / f"{file_name}.json").write_text(json.dumps(content))


def test_device_results_with_missing_and_new_fields(tmp_path: Path) -> None:
    root = _run(tmp_path / "run")
    _device(root, "bare", [{"artifact": "engine-x-fp16", "num_images": 10, "top1": 0.9}])
    _device(
        root,
        "rich",
        [
            {
                "artifact": "engine-orin-int8",
                "precision": "int8",
                "num_images": 400,
                "top1": 0.95,
                "reference_top1": 0.97,
                "lost": 9,
                "gained": 1,
                "latency_ms": {"p50": 1.5, "p99": 2.0, "batch_size": 1},
                "gpu_compute": {"p50_ms": 1.25, "p99_ms": 1.5, "mean_ms": 1.3},
                "end_to_end": {"p50": 1.75, "p99": 2.25},
                "energy_mj_per_image": 4.5,
                "power_mean_mw": 6000.0,
                "clocks_locked": True,
                "build": {"seconds": 81.5, "layers_dla": 40, "layers_gpu": 3},
            }
        ],
        probe={"host": "orin", "jetpack": "6.1", "tensorrt": "10.3.0.30", "power_mode": "MAXN", "dla_cores": 2},
    )
    (root / "deploy" / "broken").mkdir()
    (root / "deploy" / "broken" / "accuracy.json").write_text("{not json")

    html = write_report(root).index.read_text()
    assert 'id="device-bare"' in html and 'id="device-rich"' in html and 'id="device-broken"' not in html
    rich = html[html.index('id="device-rich"') :]
    # Both latency definitions, whichever key spelling (p50 or p50_ms) the result used.
    assert '<td>GPU compute</td><td class="num">1.250</td><td class="num">1.500</td>' in rich
    assert '<td>end to end (H2D + compute + D2H)</td><td class="num">1.750</td><td class="num">2.250</td>' in rich
    assert "energy_mj_per_image 4.5" in rich and "mean power 6000 mW" in rich
    assert "<dt>clocks locked</dt><dd>yes</dd>" in rich and "<dt>power mode</dt><dd>MAXN</dd>" in rich
    assert "<dt>layers_dla</dt><dd>40</dd>" in rich
    # Exact paired counts: 9 lost, 1 gained of 400 is -2.00 pt, p = 2 * 11/1024 = 0.0215.
    assert "-2.00 pt (95% CI" in html and "distinguishable from noise on 400 images (exact McNemar p = 0.0215)" in html
    bare = html[html.index('id="device-bare"') : html.index('id="device-rich"')]
    assert "no latency recorded" in bare and "No energy measured" in bare


def test_refresh_only_when_a_report_exists_and_is_out_of_date(tmp_path: Path) -> None:
    import os

    root = _run(tmp_path / "run")
    assert refresh_report(root) is None and not (root / "report").exists()
    index = write_report(root).index
    assert refresh_report(root) is None  # nothing recorded since
    stamp = index.stat().st_mtime_ns
    os.utime(root / "manifest.json", ns=(stamp + 10**9, stamp + 10**9))
    refreshed = refresh_report(root)
    assert refreshed is not None and refreshed.index == index and index.stat().st_mtime_ns > stamp
    assert refresh_report(tmp_path / "not-a-run") is None


def test_command_line_is_recorded_only_while_the_command_runs(tmp_path: Path) -> None:
    from edge_tl.cli.main import main
    from edge_tl.runs import Run, record_invocation

    root = _run(tmp_path / "run")
    (root / "weights.bin").write_bytes(b"x")
    record_invocation("edge-tl export run")
    Run.open(root).add_artifact("during", kind="checkpoint", path=root / "weights.bin", stage="test")
    with pytest.raises(SystemExit) as done:
        main(["report", str(root)])
    assert done.value.code == 0
    Run.open(root).add_artifact("after", kind="checkpoint", path=root / "weights.bin", stage="test")
    records = json.loads((root / "manifest.json").read_text())["artifacts"]
    assert records["during"]["command"] == "edge-tl export run"
    assert "command" not in records["after"]  # made through the Python API after the command ended


def test_engine_layer_report_table_and_precision_mix(tmp_path: Path) -> None:
    """An engine's per-layer report: its summary from the manifest, its table from the layer information file
    beside it (NVIDIA's published ResNet-18 QAT export, tests/compile/fixtures/layer_info/SOURCE.md)."""
    import shutil

    from edge_tl.trt.layers import parse_layer_info, summarize

    root = _run(tmp_path / "run")
    fixture = Path(__file__).parent.parent / "compile" / "fixtures" / "layer_info" / "trex-resnet-a100-qat.graph.json"
    engine_dir = root / "compile" / "a100-int8"
    engine_dir.mkdir(parents=True)
    (engine_dir / "model.engine").write_bytes(b"engine")
    shutil.copy(fixture, engine_dir / "layers.json")
    layers = parse_layer_info(fixture.read_text(), where="fixture")
    report = summarize(layers, precision="int8", dla=False, recipe="tensorrt-int8-qdq", source="fixture")
    other = root / "compile" / "a100-fp16"
    other.mkdir(parents=True)
    (other / "model.engine").write_bytes(b"engine")
    (other / "layers.json").symlink_to(fixture)  # outside the run: never followed
    from edge_tl.runs import Run

    run = Run.open(root)
    run.add_artifact("engine-a100-int8", kind="engine", path="compile/a100-int8/model.engine", stage="compile",
                     precision="int8", details={"layer_report": report})  # fmt: skip
    fp16 = {**report, "compute_layers": {"fp16": 21}, "compute_macs": None}
    run.add_artifact("engine-a100-fp16", kind="engine", path="compile/a100-fp16/model.engine", stage="compile",
                     precision="fp16", details={"layer_report": fp16})  # fmt: skip
    html = write_report(root).index.read_text()
    section = html[html.index('id="engine-layers"') : html.index('id="training"')]
    assert section.count("<tr><td><code>") == len(layers) == 37  # one row per layer of the int8 engine only
    assert "<td><code>MaxPool_12</code></td><td>Pooling</td><td>fp32</td><td>GPU</td>" in section
    assert "FP32 layers in this INT8 engine: <code>MaxPool_12</code>" in section
    assert "The layer information file is not in the run." in section  # the symlinked one
    assert 'alt="share of Conv/Gemm/MatMul work per precision in each engine" src="data:image/png;base64,' in section
