"""TensorRT facts per release, each pinned to the source it comes from.

Nothing here runs TensorRT: the facts are read from NVIDIA/TensorRT's release branches
(``include/NvInferVersion.h``, ``include/NvInferRuntimeBase.h``, ``samples/common/sampleOptions.cpp``,
``samples/common/sampleReporting.cpp``, ``samples/trtexec/trtexec.cpp``), onnx/onnx-tensorrt's
``docs/operators.md`` and NVIDIA's documentation, named at each test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_tl.bench.trtexec import _version_from_banner, drop_warmup, parse_log, run_trtexec, to_bench_results
from edge_tl.compile import BatchRange, CompileRequest, make_plan
from edge_tl.errors import ConfigError, RunError
from edge_tl.runs import Run
from edge_tl.targets import CalibrationRecipe, Precision, TrtVersion, load_target
from edge_tl.trt.sidecar import read_sidecar

NEEDS_BASH = pytest.mark.skipif(os.name != "posix", reason="build_engine.sh needs bash")


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize(
    "code, version",
    [
        # 8.x: major*1000 + minor*100 + patch (kNV_TENSORRT_VERSION_IMPL, include/NvInferRuntimeBase.h, release/8.6)
        ("8201", "8.2.1"),
        ("8400", "8.4.0"),
        ("8502", "8.5.2"),
        ("8602", "8.6.2"),
        # 10.x and later: major*10000 + minor*100 + patch (same constant, release/10.3)
        ("100300", "10.3.0"),
        ("101303", "10.13.3"),
        ("101600", "10.16.0"),
        ("110401", "11.4.1"),
    ],
)
def test_banner_and_cache_codes_decode_per_release(code: str, version: str) -> None:
    assert _version_from_banner(code) == version
    assert TrtVersion.parse(version).library_version == int(code)


def test_profiles_carry_the_exact_jetpack_releases() -> None:
    # JetPack 4.6 ships TensorRT 8.0.1 and 4.6.1+ ships 8.2.1; 5.1 ships 8.5.2; 6.0 ships 8.6.2; 6.1/6.2 ship
    # 10.3.0 (NVIDIA JetPack release notes, developer.nvidia.com/embedded/jetpack-archive); TensorRT 11.4.1 on
    # JetPack 7.2.2+ for AGX Orin
    # (docs.nvidia.com/deeplearning/tensorrt/11.4.1/inference-library/dla-strongly-typed-networks.html).
    nano, xavier, orin = (
        load_target("jetson-nano"),
        load_target("jetson-agx-xavier"),
        load_target("jetson-agx-orin-32gb"),
    )
    assert [(str(r.version), r.jetpack) for r in nano.releases] == [("8.2.1", "4.6.1")]
    assert {(str(r.version), r.jetpack) for r in xavier.releases} == {("8.5.2", "5.1"), ("8.2.1", "4.6.1")}
    assert {(str(r.version), r.jetpack) for r in orin.releases} == {
        ("10.3.0", "6.2"),
        ("10.3.0", "6.1"),
        ("8.6.2", "6.0"),
        ("8.5.2", "5.1"),
        ("11.4.1", "7.2.2"),
    }
    assert orin.release("11.4").version == TrtVersion(11, 4, 1)  # MAJOR.MINOR names the one listed patch
    with pytest.raises(ConfigError, match="does not list TensorRT 11.4.0"):
        orin.release("11.4.0")
    # TX2 modes 0-4 (Jetson Linux R32.7 developer guide, "Power Management for Jetson TX2 Series Devices")
    assert (
        "1 = MAXQ, 2 = MAXP_CORE_ALL, 3 = MAXP_CORE_ARM, 4 = MAXP_CORE_DENVER" in load_target("jetson-tx2").power_notes
    )
    # desktop 8.6.1 runs CUDA 11.0 to 12.1 (TensorRT 8.6.1 support matrix,
    # docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-861/support-matrix/index.html)
    assert load_target("t4").release("8.6").cuda == "11.0-12.1"
    assert "unverified" in load_target("jetson-agx-thor").power_notes


def test_max_opset_follows_the_release_not_the_device() -> None:
    # onnx/onnx-tensorrt docs/operators.md: 8.2-GA "up to Opset 13"; 8.4-GA/8.5-GA/8.6-GA "up to Opset 17";
    # 10.0-GA "opset 9 to opset 20". HardSwish (opset 14) is "N" on 8.2-GA and "Y" on 8.4-GA.
    assert [TrtVersion.parse(v).max_opset for v in ("8.2.1", "8.4.0", "8.5.2", "8.6.2", "10.3.0", "11.4.1")] == [
        13,
        17,
        17,
        17,
        20,
        20,
    ]
    xavier = load_target("jetson-agx-xavier")
    assert xavier.export_opset(tensorrt="8.2.1") == 13 and xavier.export_opset() == 17
    with pytest.raises(ConfigError, match="opset 14 is above what target 'jetson-agx-xavier' parses"):
        xavier.export_opset(14, tensorrt="8.2.1")


# --------------------------------------------------------------------------- DLA


def _cache(run: Run, code: int) -> None:
    """Re-record the run's calibration cache with the header of TensorRT ``code``, as quantize would."""
    path = run.path("quantize/tensorrt-int8-cache/calibration.cache")
    path.write_text(f"TRT-{code}-EntropyCalibration2\ninput: 3c810204\n")
    run.add_artifact(
        "calib-cache-tensorrt-int8-cache", kind="calibration-cache", path=path, stage="quantize", precision="int8"
    )


def test_dla_cli_plans_a_static_shape_and_refuses_a_range(plan_run: Run) -> None:
    _cache(plan_run, 100300)  # JetPack 6.x, the AGX Orin default
    base = [
        sys.executable,
        "-m",
        "edge_tl",
        "compile",
        str(plan_run.root),
        "--target",
        "jetson-agx-orin-32gb",
        "--precision",
        "int8",
        "--dla",
    ]
    ok = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    plan = json.loads(plan_run.path("compile/jetson-agx-orin-32gb-int8/build_plan.json").read_text())
    assert plan["batch"] == {"min": 1, "opt": 1, "max": 1}
    assert "--maxShapes=input:1x3x8x8" in plan["trtexec_argv"] and "--useDLACore=0" in plan["trtexec_argv"]
    # the tiny model's Conv and Flatten are DLA layer types; GlobalAveragePool (a kAVG Reduce) is disputed
    assert plan["dla"]["gpu_fallback_ops"] == {} and plan["dla"]["source"].startswith("https://docs.nvidia.com/")
    assert plan["dla"]["disputed_ops"] == {"GlobalAveragePool": 1}
    refused = subprocess.run([*base, "--batch", "1,1,8"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert "DLA has no dynamic shapes (min = opt = max, and the runtime shape is the build shape)" in refused.stderr
    assert "--batch 1,1,8 is a range" in refused.stderr


def test_dla_recipe_rules_per_release(plan_run: Run, tmp_path: Path) -> None:
    orin = load_target("jetson-agx-orin-64gb")
    # 8.x/10.x: DLA INT8 from the calibration cache (implicit quantization; TensorRT 8.x developer guide,
    # "Working with DLA": DLA does not support explicit quantization)
    assert orin.calibration_recipe_for("int8", dla=True, tensorrt="8.5") is CalibrationRecipe.TENSORRT_CACHE
    assert orin.calibration_recipe_for("int8", dla=True) is CalibrationRecipe.TENSORRT_CACHE
    assert orin.calibration_recipe_for("int8", dla=False) is CalibrationRecipe.TENSORRT_QDQ
    # 11.4.1 builds DLA strongly typed (TensorRT 11.4.1 "Strongly Typed Networks for DLA"): Q/DQ ONNX, no flags
    assert orin.calibration_recipe_for("int8", dla=True, tensorrt="11.4.1") is CalibrationRecipe.TENSORRT_QDQ
    plan = make_plan(plan_run, orin, CompileRequest(precision=Precision.INT8, dla=True, tensorrt="11.4.1"))
    assert plan.source.onnx.name == "onnx-int8-tensorrt-int8-qdq-fp16" and plan.source.calib_cache is None
    assert "--stronglyTyped" in plan.argv and not {"--int8", "--fp16"} & set(plan.argv)
    # 11.4.0 has no JetPack support, so no DLA ("DLA is not supported for ... NVIDIA JetPack ... in TensorRT 11.4.0",
    # docs.nvidia.com/deeplearning/tensorrt/11.4.0/inference-library/dla-strongly-typed-networks.html)
    text = Path(orin.source).read_text().replace('version = "11.4.1"', 'version = "11.4.0"')
    custom = tmp_path / "jetson-agx-orin-64gb.toml"
    custom.write_text(text)
    with pytest.raises(
        ConfigError, match=r"TensorRT 11.4.0 has no DLA on Jetson .* use --tensorrt 10.3.0 or drop --dla"
    ):
        make_plan(plan_run, load_target(custom), CompileRequest(precision=Precision.FP16, dla=True, tensorrt="11.4.0"))
    with pytest.raises(ConfigError, match="DLA runs FP16 and INT8 only"):
        make_plan(plan_run, orin, CompileRequest(precision=Precision.FP32, dla=True))
    fixed = make_plan(plan_run, orin, CompileRequest(precision=Precision.FP16, dla=True, batch=BatchRange(4, 4, 4)))
    assert fixed.spec.batch == BatchRange(4, 4, 4) and "--fp16" in fixed.argv


# --------------------------------------------------------------------------- build_engine.sh on the device

FAKE = """#!/usr/bin/env bash
# Stands in for trtexec: the banner first (reportTestStart), then, for a build, the replayed log.
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v$FAKE_CODE] # trtexec $*"
for arg in "$@"; do
  case "$arg" in --help) exit 0 ;; --saveEngine=*) printf 'engine' > "${arg#--saveEngine=}" ;; esac
done
cat "$FAKE_LOG"
echo "&&&& PASSED TensorRT.trtexec [TensorRT v$FAKE_CODE] # trtexec $*"
"""


@NEEDS_BASH
def test_build_script_compares_the_cache_header_with_the_device_banner(plan_run: Run, tmp_path: Path) -> None:
    _cache(plan_run, 8502)  # JetPack 5.1
    xavier = load_target("jetson-agx-xavier")
    plan = make_plan(plan_run, xavier, CompileRequest(precision=Precision.INT8, dla=True, dla_core=1))
    from edge_tl.compile.plan import write_plan

    script = plan_run.path(write_plan(plan_run, plan).path)
    fake = tmp_path / "trtexec"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    log = tmp_path / "build.log"
    # Layer placement as TensorRT's builder logs it on a DLA build (info level, "---------- Layers Running on
    # DLA ----------" then "[DlaLayer] {ForeignNode[...]}" lines, as in public trtexec DLA build logs). Each
    # DlaLayer line is one DLA subgraph (here two, of several layers each), each GpuLayer line one layer.
    log.write_text(
        "[I] [TRT] ---------- Layers Running on DLA ----------\n"
        "[I] [TRT] [DlaLayer] {ForeignNode[/stem/conv/Conv.../blocks.0/act/Relu]}\n"
        "[I] [TRT] [DlaLayer] {ForeignNode[/blocks.2/conv/Conv.../head/pool/GlobalAveragePool]}\n"
        "[I] [TRT] ---------- Layers Running on GPU ----------\n[I] [TRT] [GpuLayer] SHUFFLE: flatten\n"
        "[I] [TRT] [GpuLayer] COPY: reformat\n"
    )
    env = {**os.environ, "TRTEXEC": str(fake), "FAKE_LOG": str(log), "FAKE_CODE": "8201"}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4
    assert (
        "the calibration cache quantize/tensorrt-int8-cache/calibration.cache is for TensorRT v8502 but this trtexec "
        "is v8201"
    ) in proc.stderr
    assert (
        "edge-tl quantize RUN --recipe tensorrt-int8-cache --target jetson-agx-xavier --tensorrt X.Y.Z" in proc.stderr
    )
    assert not plan_run.path(plan.spec.engine).exists()  # stopped before the build
    env["FAKE_CODE"] = "8502"
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    meta = read_sidecar(plan_run.path(plan.spec.engine))
    assert (
        meta.layers == {"dla_subgraphs": 2, "gpu_layers": 2} and meta.dla_core == 1 and meta.tensorrt_version == "8.5.2"
    )


# --------------------------------------------------------------------------- trtexec output per release


def test_tensorrt_8_2_summary_keeps_latency_apart_from_end_to_end_host_latency(fixtures_dir: Path) -> None:
    result = parse_log((fixtures_dir / "trtexec-8.2-jetson-nano.log").read_text())
    assert result.tensorrt_version == "8.2.1" and result.passed
    # "Latency" (H2D + compute + D2H) is 13.8259 ms; 8.2's "End-to-End Host Latency" (13.8394) must not replace it
    lat, gpu = result.latency, result.gpu_compute
    assert (lat.min_ms, lat.max_ms, lat.mean_ms, lat.median_ms) == (13.7075, 14.8861, 13.8259, 13.7999)
    assert lat.percentiles == {99.0: 14.8121}
    assert (gpu.mean_ms, gpu.median_ms) == (13.6963, 13.6698)
    bench = to_bench_results(result, batch_size=1)
    assert bench["end_to_end"].mean_ms == 13.8259 and bench["gpu_compute"].p99_ms == 14.6803


def _trace(starts: list[float]) -> list[dict[str, float]]:
    """exportJSONTrace records (keys of release/8.2 samples/common/sampleReporting.cpp)."""
    return [
        {
            "startComputeMs": s,
            "endComputeMs": s + 1.0,
            "h2dMs": 0.1,
            "computeMs": 1.0 if s >= 200 else 9.0,
            "d2hMs": 0.1,
            "latencyMs": 1.2 if s >= 200 else 9.2,
            "endToEndMs": 1.3,
        }
        for s in starts
    ]


def test_pre_8_5_times_drop_their_warmup_records() -> None:
    # 8.2/8.4 export the whole trace; their summary skips computeStart < warmUp (isNotWarmup). 8.5 exports
    # only the timed queries (exportJSONTrace(trace, fileName, nbWarmups)), release/8.5 sampleReporting.cpp.
    records = _trace([0.0, 100.0, 199.9, 200.0, 300.0])
    assert [r["startComputeMs"] for r in drop_warmup(records, tensorrt="8.2.1", warmup_ms=200)] == [200.0, 300.0]
    assert [r["startComputeMs"] for r in drop_warmup(records, tensorrt="8.4.0", warmup_ms=200)] == [200.0, 300.0]
    assert drop_warmup(records, tensorrt="8.5.2", warmup_ms=200) == records
    assert drop_warmup(records, tensorrt="8.5.0", warmup_ms=200) == records  # from 8.5.0 on, not only later patches
    log = parse_log("&&&& PASSED TensorRT.trtexec [TensorRT v8201] # trtexec\n")
    bench = to_bench_results(log, batch_size=1, times=records, warmup_ms=200)
    assert bench["gpu_compute"].iterations == 2 and bench["gpu_compute"].max_ms == 1.0
    assert bench["end_to_end"].mean_ms == pytest.approx(1.2)


@pytest.mark.parametrize(
    "script, message",
    [
        # exit 0 without "&&&& PASSED": not a success (trtexec reports PASSED last, gLogger.reportPass)
        ("echo '&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec'; exit 0", r"trtexec failed \(exit 0\)"),
        # trtexec's own failure on an unknown flag (release/11.0 samples/trtexec/trtexec.cpp: "Unknown option")
        (
            "echo '[E] Unknown option: --fp16 '; "
            "echo '&&&& FAILED TensorRT.trtexec [TensorRT v110401] # trtexec --fp16'; exit 1",
            r"(?s)trtexec failed \(exit 1\).*Unknown option: --fp16",
        ),
    ],
)
def test_trtexec_runs_that_did_not_pass_are_refused(tmp_path: Path, script: str, message: str) -> None:
    fake = tmp_path / "trtexec"
    fake.write_text(f"#!/usr/bin/env bash\n{script}\n")
    fake.chmod(0o755)
    with pytest.raises(RunError, match=message):
        run_trtexec([str(fake)], log_path=tmp_path / "t.log", times_path=None, batch_size=1)
    assert (tmp_path / "t.log").read_text().startswith("&&&& RUNNING") or "Unknown option" in (
        tmp_path / "t.log"
    ).read_text()


# --------------------------------------------------------------------------- the runner's shape check


def test_runner_refuses_a_shape_outside_the_profile(tmp_path: Path) -> None:
    from edge_tl.runtime.tensorrt_runner import TensorRTRunner
    from edge_tl.trt.sidecar import EngineMetadata, write_sidecar

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plain")
    write_sidecar(
        engine,
        EngineMetadata(
            tensorrt_version="10.3.0",
            gpu_name="Orin",
            compute_capability="8.7",
            precision="fp16",
            input_name="input",
            output_name="logits",
            chw=(3, 8, 8),
            batch={"min": 2, "opt": 2, "max": 4},
            source={},
            builder="trtexec",
            target="jetson-orin-nano-8gb",
        ),
    )
    runner = TensorRTRunner(engine)

    class Context:  # IExecutionContext.set_input_shape returns false for a shape outside the profile
        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            return 2 <= shape[0] <= 4

    class Api:
        def get(self, obj, name):
            return getattr(obj, name)

    class Buffers:
        def to_device(self, ptr, array) -> None:
            pass

    runner._api, runner._context, runner._buffers, runner._max_batch = Api(), Context(), Buffers(), 4
    runner._inputs = {"input": (0, np.float32)}
    runner._require_active = lambda: None
    assert runner.prepare(np.zeros((2, 3, 8, 8), np.float32)) == 2
    with pytest.raises(ConfigError, match=r"input shape \(1, 3, 8, 8\) is outside engine .* profile \(batch 2..4"):
        runner.prepare(np.zeros((1, 3, 8, 8), np.float32))


def test_engine_checks_compare_the_patch_release() -> None:
    # "version numbers must match (in major, minor, patch, and build)" for a serialized engine
    # (TensorRT release notes, "Release Properties"): 8.6.1 (desktop) is not 8.6.2 (JetPack 6.0).
    from edge_tl.runtime.tensorrt_runner import check_engine_compatible
    from edge_tl.trt.cuda import GpuInfo
    from edge_tl.trt.sidecar import EngineMetadata

    meta = EngineMetadata(
        tensorrt_version="8.6.2",
        gpu_name="Orin",
        compute_capability="8.7",
        precision="int8",
        input_name="input",
        output_name="logits",
        chw=(3, 8, 8),
        batch=None,
        source={},
        builder="trtexec",
        target="jetson-agx-orin-32gb",
    )
    check_engine_compatible(meta, tensorrt_version="8.6.2.3", gpu=GpuInfo("Orin", "8.7"), engine="m.engine")
    with pytest.raises(RunError, match="built with TensorRT 8.6.2 but this machine has TensorRT 8.6.1"):
        check_engine_compatible(meta, tensorrt_version="8.6.1", gpu=GpuInfo("Orin", "8.7"), engine="m.engine")


def test_timing_flags_state_one_latency_definition_per_release() -> None:
    # Up to 10.x transfers are included by default and graphs/spin-wait are opt-in; 11.0 flips all three and
    # makes --useCudaGraph/--noDataTransfers/--useSpinWait no-ops (release/11.0 samples/common/sampleOptions.cpp).
    from edge_tl.compile.trtexec_flags import timing_flags

    meaning = {"data_transfers": True, "spin_wait": True, "cuda_graph": True}
    assert timing_flags(TrtVersion(8, 2, 1), cuda_graph=True) == (["--useSpinWait", "--useCudaGraph"], meaning)
    assert timing_flags(TrtVersion(10, 3, 0), cuda_graph=False) == (["--useSpinWait"], {**meaning, "cuda_graph": False})
    assert timing_flags(TrtVersion(11, 4, 1), cuda_graph=True) == (["--includeDataTransfers"], meaning)
    assert timing_flags(TrtVersion(11, 4, 1), cuda_graph=False) == (
        ["--includeDataTransfers", "--noCudaGraph"],
        {**meaning, "cuda_graph": False},
    )
    with pytest.raises(ConfigError, match="TensorRT 9.2.0 is not supported"):
        timing_flags(TrtVersion(9, 2, 0), cuda_graph=True)
