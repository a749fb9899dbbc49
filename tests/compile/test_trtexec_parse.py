"""trtexec output -> bench records, on real public logs of TensorRT 8.4, 10.13 and 10.16."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from edge_tl.bench.api import trtexec_bench_report
from edge_tl.bench.trtexec import (
    parse_log,
    parse_times,
    run_trtexec,
    to_bench_results,
)
from edge_tl.errors import ConfigError, RunError
from edge_tl.trt.sidecar import EngineMetadata, write_sidecar


def _fixture(fixtures_dir: Path, name: str) -> str:
    text = (fixtures_dir / name).read_text()
    assert text.startswith("# source: https://"), f"{name} must name its public source on its first line"
    return text


def test_tensorrt_8_jetson_xavier_log(fixtures_dir: Path) -> None:
    result = parse_log(_fixture(fixtures_dir, "trtexec-8.4-jetson-agx-xavier.log"))
    assert result.tensorrt_version == "8.4.0" and result.passed
    assert result.throughput_qps == pytest.approx(41087.7)
    gpu, lat = result.gpu_compute, result.latency
    assert (gpu.min_ms, gpu.max_ms, gpu.mean_ms, gpu.median_ms) == (0.375977, 0.403564, 0.388221, 0.388443)
    assert gpu.percentiles == {99.0: 0.393188}  # 8.4 printed only the 99th percentile
    assert lat.mean_ms == 0.402238 and lat.mean_ms > gpu.mean_ms  # end to end includes the copies
    assert result.metrics["h2d"].mean_ms == 0.0104126 and result.metrics["d2h"].max_ms == 0.00537109


def test_tensorrt_10_log_with_device_and_percentiles(fixtures_dir: Path) -> None:
    result = parse_log(_fixture(fixtures_dir, "trtexec-10.16-rtx6000-ada.log"))
    assert result.tensorrt_version == "10.16.0" and result.passed
    assert result.gpu_name == "NVIDIA RTX 6000 Ada Generation" and result.compute_capability == "8.9"
    assert result.queries == 55177 and result.throughput_qps == 18392
    assert result.gpu_compute.percentiles == {90.0: 0.0378418, 95.0: 0.0429688, 99.0: 0.0952148}
    assert result.gpu_compute_cv == pytest.approx(0.620202)
    bench = to_bench_results(result, batch_size=1)
    gpu, e2e = bench["gpu_compute"], bench["end_to_end"]
    assert bench["source"] == "summary"
    assert (gpu.mean_ms, gpu.p50_ms, gpu.p90_ms, gpu.p99_ms, gpu.iterations) == (
        0.0334352,
        0.0297852,
        0.0378418,
        0.0952148,
        55177,
    )
    assert (e2e.mean_ms, e2e.p95_ms, e2e.max_ms) == (0.0431899, 0.0548096, 0.882324)
    assert math.isnan(gpu.std_ms)  # the summary does not print it; never invented
    assert gpu.throughput_ips == pytest.approx(1000 / 0.0334352)


def test_partial_summary_without_timestamps_or_gpu_compute(fixtures_dir: Path) -> None:
    result = parse_log(_fixture(fixtures_dir, "trtexec-10.13-jetson-agx-thor-summary.log"))
    assert result.tensorrt_version is None and not result.passed
    assert result.latency.percentiles == {90.0: 664.195, 95.0: 666.219, 99.0: 684.747}
    assert result.gpu_compute is None
    with pytest.raises(RunError, match="no gpu_compute summary"):
        to_bench_results(result, batch_size=1)


def _records(compute: list[float], *, legacy: bool) -> list[dict[str, float]]:
    h2d, d2h = ("inMs", "outMs") if legacy else ("h2dMs", "d2hMs")
    return [{h2d: 0.01, "computeMs": c, d2h: 0.02, "latencyMs": c + 0.03} for c in compute]


@pytest.mark.parametrize("legacy", [True, False])
def test_export_times_give_exact_statistics(legacy: bool) -> None:
    compute = list(np.linspace(1.0, 2.0, 101))
    stats = parse_times(_records(compute, legacy=legacy), batch_size=4)
    assert stats["gpu_compute"].p50_ms == pytest.approx(1.5) and stats["gpu_compute"].iterations == 101
    assert stats["end_to_end"].mean_ms == pytest.approx(1.53)
    assert stats["gpu_compute"].std_ms == pytest.approx(float(np.std(compute, ddof=1)))
    with pytest.raises(RunError, match="lack"):
        parse_times([{"computeMs": 1.0}], batch_size=1)


FAKE = """#!/usr/bin/env bash
for arg in "$@"; do
  case "$arg" in --exportTimes=*) cp "$FAKE_TIMES" "${arg#--exportTimes=}" ;; esac
done
echo "argv: $*"
cat "$FAKE_LOG"
exit "${FAKE_RC:-0}"
"""


def _fake_trtexec_and_engine(
    tmp_path: Path, fixtures_dir: Path, monkeypatch, compute_ms: list[float]
) -> tuple[Path, Path]:
    """A stand-in trtexec replaying the real 10.16 log (its times are ``compute_ms``) and an engine with a sidecar."""
    (tmp_path / "bin").mkdir()
    trtexec = tmp_path / "bin" / "trtexec"
    trtexec.write_text(FAKE)
    trtexec.chmod(0o755)
    times = tmp_path / "records.json"
    times.write_text(json.dumps(_records(compute_ms, legacy=False)))
    monkeypatch.setenv("FAKE_TIMES", str(times))
    monkeypatch.setenv("FAKE_LOG", str(fixtures_dir / "trtexec-10.16-rtx6000-ada.log"))
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine")
    write_sidecar(
        engine,
        EngineMetadata(
            tensorrt_version="10.16.0",
            gpu_name="NVIDIA RTX 6000 Ada Generation",
            compute_capability="8.9",
            precision="fp16",
            input_name="input",
            output_name="logits",
            chw=(3, 8, 8),
            batch={"min": 1, "opt": 1, "max": 8},
            source={"artifact": "onnx-fp32"},
            builder="trtexec",
            target="ada",
        ),
    )
    return trtexec, engine


def test_trtexec_runner_maps_a_real_process_onto_a_bench_report(
    tmp_path: Path, fixtures_dir: Path, monkeypatch
) -> None:
    trtexec, engine = _fake_trtexec_and_engine(tmp_path, fixtures_dir, monkeypatch, [0.5, 0.6, 0.7, 0.8])
    report = trtexec_bench_report(engine, batch_sizes=(1, 4), duration_s=1, iterations=4, trtexec=str(trtexec))
    data = report.to_dict()
    assert data["runner"]["backend"] == "trtexec" and data["runner"]["clock"] == "trtexec-gpu-compute"
    assert [r["batch_size"] for r in data["results"]] == [1, 4]
    assert data["results"][0]["mean_ms"] == pytest.approx(0.65)
    assert data["runner"]["end_to_end"][1]["mean_ms"] == pytest.approx(0.68)
    assert data["runner"]["trtexec"][0]["gpu_name"] == "NVIDIA RTX 6000 Ada Generation"
    log = (tmp_path / "trtexec-bench" / "bench-b4.log").read_text()
    assert "--shapes=input:4x3x8x8" in log and "--useCudaGraph" in log
    with pytest.raises(ConfigError, match="outside the engine's profile"):
        trtexec_bench_report(engine, batch_sizes=(16,), trtexec=str(trtexec))
    monkeypatch.setenv("FAKE_RC", "1")
    with pytest.raises(RunError, match=r"trtexec failed \(exit 1\)"):
        run_trtexec([str(trtexec)], log_path=tmp_path / "x.log", times_path=None, batch_size=1)
    assert os.path.getsize(tmp_path / "x.log") > 0


def test_bench_cli_with_trtexec_backend_times_an_engine(tmp_path: Path, fixtures_dir: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from edge_tl.cli.main import cli

    _, engine = _fake_trtexec_and_engine(tmp_path, fixtures_dir, monkeypatch, [0.4, 0.5, 0.6])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            str(engine),
            "--backend",
            "trtexec",
            "--batch-size",
            "1,2",
            "--iterations",
            "7",
            "--cuda-graph",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["runner"]["backend"] == "trtexec" and [r["batch_size"] for r in data["results"]] == [1, 2]
    assert data["results"][0]["p50_ms"] == pytest.approx(0.5)
    # the named latencies: GPU compute (computeMs) and end to end (latencyMs = compute + 0.03 ms of copies)
    assert [g["p50_ms"] for g in data["gpu_compute"]] == pytest.approx([0.5, 0.5])
    assert [e["mean_ms"] for e in data["end_to_end"]] == pytest.approx([0.53, 0.53])
    assert data["runner"]["timing"] == {"data_transfers": True, "spin_wait": True, "cuda_graph": True}
    log = (tmp_path / "trtexec-bench" / "bench-b2.log").read_text()
    assert "--iterations=7" in log and "--useCudaGraph" in log and "--shapes=input:2x3x8x8" in log

    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not an engine")
    refused = CliRunner().invoke(cli, ["bench", str(onnx_file), "--backend", "trtexec"])
    assert refused.exit_code != 0 and "times TensorRT engines" in str(refused.exception)


def test_passed_is_the_one_final_verdict_line_not_a_substring(fixtures_dir: Path) -> None:
    # trtexec prints "&&&& RUNNING ..." first and one verdict line last (samples/common/logging.h,
    # Logger::reportTestResult in NVIDIA/TensorRT); the verdict is PASSED, FAILED or WAIVED.
    log = _fixture(fixtures_dir, "trtexec-10.16-rtx6000-ada.log")
    assert parse_log(log).passed
    failed = log.replace("&&&& PASSED TensorRT.trtexec", "&&&& FAILED TensorRT.trtexec")
    assert not parse_log(failed).passed
    # A FAILED run whose output goes on to mention a PASSED line (a wrapper echoing an older log, a
    # plugin's message): the substring check took either for a pass.
    echoed = failed + "[E] previous run: &&&& PASSED TensorRT.trtexec [TensorRT v101600]\n"
    assert not parse_log(echoed).passed
    twice = failed + "&&&& PASSED TensorRT.trtexec [TensorRT v101600] # trtexec --onnx=model.onnx\n"
    assert not parse_log(twice).passed
    assert not parse_log(log.replace("&&&& PASSED TensorRT.trtexec", "&&&& WAIVED TensorRT.trtexec")).passed
    # Stopped before its verdict: only the RUNNING line.
    assert not parse_log(log.split("&&&& PASSED")[0]).passed
