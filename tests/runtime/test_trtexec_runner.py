"""trtexec as a process: what ``run_trtexec`` and ``trtexec_bench_report`` accept, refuse and record.

The stand-in trtexec below replays real public logs (``tests/compile/fixtures``, each naming its source) and
writes ``--exportTimes`` records with the keys of ``exportJSONTrace`` (NVIDIA/TensorRT release/8.2 and later,
``samples/common/sampleReporting.cpp``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from edge_tl.bench.api import trtexec_bench_report
from edge_tl.bench.trtexec import (
    Summary,
    drop_warmup,
    parse_log,
    parse_times,
    run_trtexec,
    stats_from_summary,
    to_bench_results,
)
from edge_tl.errors import ConfigError, RunError
from edge_tl.trt import trtexec as trtexec_module
from edge_tl.trt.sidecar import EngineMetadata, write_sidecar
from edge_tl.trt.trtexec import find_trtexec

FIXTURES = Path(__file__).resolve().parents[1] / "compile" / "fixtures"

STANDIN = """#!/usr/bin/env bash
for arg in "$@"; do
  case "$arg" in --exportTimes=*) [ -n "${FAKE_TIMES:-}" ] && cp "$FAKE_TIMES" "${arg#--exportTimes=}" ;; esac
done
echo "argv: $*"
cat "$FAKE_LOG"
exit "${FAKE_RC:-0}"
"""


def _trace(starts: list[float]) -> list[dict[str, float]]:
    """exportJSONTrace records; a query's compute time is 1 ms plus a thousandth of its start."""
    return [
        {
            "startComputeMs": s,
            "endComputeMs": s + 1.0,
            "h2dMs": 0.01,
            "computeMs": 1.0 + s / 1000,
            "d2hMs": 0.02,
            "latencyMs": 1.03 + s / 1000,
        }
        for s in starts
    ]


@pytest.fixture
def standin(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "bin" / "trtexec"
    path.parent.mkdir()
    path.write_text(STANDIN)
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_LOG", str(FIXTURES / "trtexec-8.2-jetson-nano.log"))
    monkeypatch.delenv("FAKE_TIMES", raising=False)
    monkeypatch.delenv("FAKE_RC", raising=False)
    return path


def _times(tmp_path: Path, monkeypatch, starts: list[float]) -> Path:
    records = tmp_path / "records.json"
    records.write_text(json.dumps(_trace(starts)))
    monkeypatch.setenv("FAKE_TIMES", str(records))
    return tmp_path / "times.json"


# --------------------------------------------------------------------------- run_trtexec


def test_pre_8_5_warmup_comes_from_the_command_or_trtexecs_default(standin: Path, tmp_path: Path, monkeypatch) -> None:
    # trtexec's default --warmUp is 200 ms (defaultWarmUp{200.F}, NVIDIA/TensorRT release/8.2
    # samples/common/sampleOptions.h); 8.2 exports the warm-up queries too, so they are dropped here.
    times = _times(tmp_path, monkeypatch, [0.0, 150.0, 200.0, 250.0, 300.0, 400.0])
    default = run_trtexec(
        [str(standin), f"--exportTimes={times}"], log_path=tmp_path / "a.log", times_path=times, batch_size=1
    )
    assert default["source"] == "exportTimes" and default["gpu_compute"].iterations == 4  # 200 ms itself is timed
    assert default["gpu_compute"].min_ms == pytest.approx(1.2)
    given = run_trtexec(
        [str(standin), "--warmUp=300", f"--exportTimes={times}"],
        log_path=tmp_path / "b.log",
        times_path=times,
        batch_size=2,
    )
    assert given["gpu_compute"].iterations == 2 and given["end_to_end"].min_ms == pytest.approx(1.33)
    assert given["gpu_compute"].batch_size == 2
    assert given["trtexec"]["tensorrt_version"] == "8.2.1"


def test_without_times_the_summary_is_used(standin: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_LOG", str(FIXTURES / "trtexec-10.16-rtx6000-ada.log"))
    none = run_trtexec([str(standin)], log_path=tmp_path / "a.log", times_path=None, batch_size=1)
    assert none["source"] == "summary" and none["gpu_compute"].mean_ms == 0.0334352
    # asked for a times file that trtexec did not write: the summary, not a crash
    missing = run_trtexec([str(standin)], log_path=tmp_path / "b.log", times_path=tmp_path / "never.json", batch_size=1)
    assert missing["source"] == "summary" and missing["end_to_end"].iterations == 55177
    assert (tmp_path / "a.log").read_text().startswith("argv: \n")  # the whole output is kept


def test_failures_keep_the_log_and_quote_its_last_15_lines(standin: Path, tmp_path: Path, monkeypatch) -> None:
    log = tmp_path / "failing.log"
    log.write_text(
        "".join(f"line {i}\n" for i in range(1, 21)) + "&&&& FAILED TensorRT.trtexec [TensorRT v100300] # trtexec\n"
    )
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_RC", "1")
    kept = tmp_path / "kept.log"
    with pytest.raises(RunError) as err:
        run_trtexec([str(standin)], log_path=kept, times_path=None, batch_size=1)
    tail = "\n".join(
        [*(f"line {i}" for i in range(7, 21)), "&&&& FAILED TensorRT.trtexec [TensorRT v100300] # trtexec"]
    )
    assert str(err.value) == f"trtexec failed (exit 1); log kept at {str(kept)!r}. Last lines:\n{tail}"
    assert kept.read_text().startswith("argv: \nline 1\n")


def test_a_missing_binary_and_a_hung_trtexec_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cannot run '/nonexistent/trtexec': "):
        run_trtexec(["/nonexistent/trtexec", "--help"], log_path=tmp_path / "a.log", times_path=None, batch_size=1)
    hung = tmp_path / "hung"
    hung.write_text("#!/usr/bin/env bash\nexec sleep 30\n")
    hung.chmod(0o755)
    with pytest.raises(RunError, match=r"^trtexec did not finish within 0.5 s$"):
        run_trtexec([str(hung)], log_path=tmp_path / "b.log", times_path=None, batch_size=1, timeout_s=0.5)


def test_find_trtexec_looks_on_path_then_where_jetpack_installs_it(tmp_path: Path, monkeypatch, standin: Path) -> None:
    monkeypatch.setenv("PATH", str(standin.parent))
    assert find_trtexec() == str(standin)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    real_access = os.access
    # JetPack's trtexec lives in /usr/src/tensorrt/bin, off PATH: the public Jetson Nano log in
    # tests/compile/fixtures/trtexec-8.2-jetson-nano.log was run as /usr/src/tensorrt/bin/trtexec
    for present in ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec"):
        monkeypatch.setattr(
            trtexec_module.os, "access", lambda p, mode, present=present: p == present and mode == os.X_OK
        )
        assert find_trtexec() == present
    monkeypatch.setattr(trtexec_module.os, "access", lambda p, mode: False)
    with pytest.raises(ConfigError) as err:
        find_trtexec()
    assert (
        str(err.value) == "trtexec not found on PATH or in /usr/src/tensorrt/bin: install TensorRT (JetPack ships it)"
    )
    monkeypatch.setattr(trtexec_module.os, "access", real_access)


# --------------------------------------------------------------------------- parsing and mapping


def test_the_version_line_alone_names_the_release() -> None:
    # a log whose banner line was lost (only its tail kept) still names the release: trtexec's main prints
    # "TensorRT version: " NV_TENSORRT_MAJOR.MINOR.PATCH (NVIDIA/TensorRT samples/trtexec/trtexec.cpp)
    assert parse_log("[06/01/2026-10:00:00] [I] TensorRT version: 10.3.0\n").tensorrt_version == "10.3.0"
    # the version line wins over the banner when both are there
    both = parse_log("&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # trtexec\n[I] TensorRT version: 8.5.2\n")
    assert both.tensorrt_version == "8.5.2" and not both.passed


def test_tensorrt_8_0_prints_its_library_version_and_is_read_as_8_0_1() -> None:
    # release/8.0 samples/trtexec/trtexec.cpp: gLogInfo << "TensorRT version: " << getInferLibVersion(),
    # so 8.0.1 prints 8001 (8.2 on print MAJOR.MINOR.PATCH). Its exportJSONTrace writes the warm-ups too
    # (release/8.0 samples/common/sampleReporting.cpp), so they are dropped as on 8.2.
    log = "&&&& RUNNING TensorRT.trtexec [TensorRT v8001] # trtexec\n[I] TensorRT version: 8001\n&&&& PASSED\n"
    result = parse_log(log)
    assert result.tensorrt_version == "8.0.1"
    bench = to_bench_results(result, batch_size=1, times=_trace([0.0, 100.0, 200.0, 300.0]), warmup_ms=200)
    assert bench["gpu_compute"].iterations == 2 and bench["gpu_compute"].min_ms == pytest.approx(1.2)


@pytest.mark.parametrize(
    "warning",
    [
        # release/8.2 to release/10.x samples/common/sampleInference.cpp, when the capture fails
        "[W] The specified --useCudaGraph flag has been ignored. The inference will be launched without using CUDA "
        "graph launch.",
        # release/11.0 samples/common/sampleInference.cpp, same place
        "[W] CUDA graph capture failed. The inference will be launched without using CUDA graph.",
        # release/11.0 samples/common/sampleOptions.cpp, under --useDLACore
        "[W] CUDA graphs and DLA offloading are not simultaneously supported. The CUDA graph option has been "
        "disabled (alternatively, you may run without the `--useDLACore` option).",
    ],
)
def test_a_dropped_cuda_graph_is_recorded_as_not_used(standin: Path, tmp_path: Path, monkeypatch, warning) -> None:
    plain = (FIXTURES / "trtexec-10.16-rtx6000-ada.log").read_text()
    assert not parse_log(plain).cuda_graph_dropped
    log = tmp_path / "dropped.log"
    log.write_text(plain.replace("[I] === Performance summary ===", f"{warning}\n[I] === Performance summary ==="))
    assert parse_log(log.read_text()).cuda_graph_dropped
    monkeypatch.setenv("FAKE_LOG", str(log))
    report = trtexec_bench_report(_engine(tmp_path, batch=None), trtexec=str(standin)).to_dict()
    assert report["runner"]["timing"] == {"data_transfers": True, "spin_wait": True, "cuda_graph": False}
    assert report["runner"]["trtexec"][0]["cuda_graph_dropped"] is True


def test_summary_mapping_keeps_every_field_and_invents_nothing() -> None:
    result = parse_log((FIXTURES / "trtexec-8.4-jetson-agx-xavier.log").read_text())
    bench = to_bench_results(result, batch_size=16)
    gpu, e2e = bench["gpu_compute"], bench["end_to_end"]
    assert math.isnan(gpu.p90_ms) and math.isnan(gpu.p95_ms) and gpu.p99_ms == 0.393188  # 8.4 prints only p99
    assert math.isnan(gpu.cv) and math.isnan(e2e.std_ms)
    assert (gpu.batch_size, e2e.batch_size, gpu.min_ms, e2e.min_ms) == (16, 16, 0.375977, result.latency.min_ms)
    assert gpu.iterations == e2e.iterations == (result.queries or 0)
    assert bench["trtexec"] == {
        "tensorrt_version": "8.4.0",
        "gpu_name": result.gpu_name,
        "compute_capability": result.compute_capability,
        "throughput_qps": 41087.7,
        "queries": result.queries,
        "gpu_compute_cv": result.gpu_compute_cv,
        "cuda_graph_dropped": False,
    }
    ada = to_bench_results(parse_log((FIXTURES / "trtexec-10.16-rtx6000-ada.log").read_text()), batch_size=1)
    assert ada["trtexec"] == {
        "tensorrt_version": "10.16.0",
        "gpu_name": "NVIDIA RTX 6000 Ada Generation",
        "compute_capability": "8.9",
        "throughput_qps": 18392.0,
        "queries": 55177,
        "gpu_compute_cv": pytest.approx(0.620202),
        "cuda_graph_dropped": False,
    }
    assert ada["end_to_end"].iterations == 55177
    zero = stats_from_summary(Summary(0.0, 0.0, 0.0, 0.0), batch_size=1, iterations=1)
    assert zero.throughput_ips == math.inf and math.isnan(zero.p99_ms)


def test_summary_without_a_query_count_reports_zero_iterations() -> None:
    log = "\n".join(
        line
        for line in (FIXTURES / "trtexec-10.16-rtx6000-ada.log").read_text().splitlines()
        if "Timing trace has" not in line
    )
    bench = to_bench_results(parse_log(log), batch_size=1)
    assert bench["gpu_compute"].iterations == 0 and bench["end_to_end"].iterations == 0


def test_times_records_refused_with_their_reason() -> None:
    with pytest.raises(RunError) as err:
        parse_times([], batch_size=1)
    assert str(err.value) == "the --exportTimes file has no records: trtexec timed nothing"
    with pytest.raises(RunError) as err:
        drop_warmup([{"computeMs": 1.0}], tensorrt="8.2.1", warmup_ms=200)
    assert str(err.value) == "--exportTimes records of TensorRT 8.2.1 lack 'startComputeMs': not a trtexec timing file"
    with pytest.raises(RunError) as err:
        to_bench_results(parse_log(""), batch_size=1)
    assert str(err.value) == (
        "trtexec output has no gpu_compute, latency summary; was the engine timed (no --skipInference)?"
    )
    # given no warm-up, a pre-8.5 trace keeps every record, the one that started at 0 ms included
    kept = to_bench_results(parse_log("[TensorRT v8201]"), batch_size=1, times=_trace([0.0, 0.5]))
    assert kept["gpu_compute"].iterations == 2 and kept["source"] == "exportTimes"


# --------------------------------------------------------------------------- trtexec_bench_report


def _engine(tmp_path: Path, *, batch: dict | None, dla_core: int | None = None) -> Path:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    write_sidecar(
        engine,
        EngineMetadata(
            tensorrt_version="10.3.0",
            gpu_name="Orin",
            compute_capability="8.7",
            precision="int8",
            input_name="input",
            output_name="logits",
            chw=(3, 8, 8),
            batch=batch,
            source={"artifact": "onnx-fp32"},
            builder="trtexec",
            target="jetson-agx-orin-64gb",
            dla_core=dla_core,
        ),
    )
    return engine


def test_bench_report_defaults_and_every_runner_field(standin: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_LOG", str(FIXTURES / "trtexec-10.16-rtx6000-ada.log"))
    _times(tmp_path, monkeypatch, [300.0, 310.0])
    engine = _engine(tmp_path, batch={"min": 1, "opt": 2, "max": 4}, dla_core=1)
    report = trtexec_bench_report(engine, batch_sizes=(4,), trtexec=str(standin))  # the profile's max is allowed
    argv = (tmp_path / "trtexec-bench" / "bench-b4.log").read_text().splitlines()[0].split()[1:]
    assert argv == [
        f"--loadEngine={engine}",
        "--shapes=input:4x3x8x8",
        "--warmUp=500",
        "--duration=10",
        "--iterations=100",
        "--useSpinWait",
        "--useCudaGraph",
        "--useDLACore=1",
        f"--exportTimes={tmp_path / 'trtexec-bench' / 'times-b4.json'}",
    ]
    data = report.to_dict()
    runner = data["runner"]
    assert {
        k: runner[k] for k in ("name", "backend", "device", "clock", "path", "tensorrt", "precision", "timing")
    } == {
        "name": "m.engine",
        "backend": "trtexec",
        "device": "cuda",
        "clock": "trtexec-gpu-compute",
        "path": str(engine),
        "tensorrt": "10.3.0",
        "precision": "int8",
        "timing": {"data_transfers": True, "spin_wait": True, "cuda_graph": True},
    }
    assert data["target"] == str(engine) and data["environment"]
    assert data["config"]["batch_sizes"] == [4]
    assert data["config"]["warmup"]["seconds"] == 0.5
    assert (data["config"]["measure"]["seconds"], data["config"]["measure"]["min_iterations"]) == (10.0, 100)
    assert data["results"][0]["mean_ms"] == pytest.approx(1.305)


def test_bench_report_passes_its_options_and_a_fixed_batch_has_no_shapes(
    standin: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("FAKE_LOG", str(FIXTURES / "trtexec-10.16-rtx6000-ada.log"))
    engine = _engine(tmp_path, batch=None)
    report = trtexec_bench_report(engine, duration_s=3, iterations=7, cuda_graph=False, trtexec=str(standin))
    argv = (tmp_path / "trtexec-bench" / "bench-b1.log").read_text().splitlines()[0].split()[1:]
    assert argv[:5] == [f"--loadEngine={engine}", "--warmUp=500", "--duration=3", "--iterations=7", "--useSpinWait"]
    assert not any(a.startswith(("--shapes", "--useCudaGraph", "--useDLACore")) for a in argv)
    data = report.to_dict()
    assert data["runner"]["timing"]["cuda_graph"] is False
    assert (data["config"]["measure"]["seconds"], data["config"]["measure"]["min_iterations"]) == (3.0, 7)
    hung = tmp_path / "hung"
    hung.write_text("#!/usr/bin/env bash\nexec sleep 30\n")
    hung.chmod(0o755)
    with pytest.raises(RunError, match="did not finish within 0.5 s"):
        trtexec_bench_report(engine, trtexec=str(hung), timeout_s=0.5)
