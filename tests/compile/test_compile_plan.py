"""Build plans: golden trtexec command lines per TensorRT version, source choice, the CLI, build_engine.sh."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_tl.cli.main import cli
from edge_tl.compile import (
    BatchRange,
    BuildMode,
    BuildSpec,
    CompileRequest,
    SourceKind,
    Via,
    build_command,
    compile_run,
    make_plan,
)
from edge_tl.compile.plan import release_mismatch
from edge_tl.compile.trtexec_flags import banner_code, bench_command
from edge_tl.errors import ConfigError, RunError
from edge_tl.runs import Run
from edge_tl.targets import Precision, TrtVersion, load_target
from edge_tl.trt.sidecar import read_sidecar

# The releases JetPack 4.6.1+, 5.1, 6.0, 6.1/6.2 and 7.2.2 ship (NVIDIA JetPack release notes); 8.2 is the
# last with --workspace only (release/8.2 samples/common/sampleOptions.cpp has no --memPoolSize).
V82, V85, V86, V103, V114 = (
    TrtVersion(8, 2, 1),
    TrtVersion(8, 5, 2),
    TrtVersion(8, 6, 2),
    TrtVersion(10, 3, 0),
    TrtVersion(11, 4, 1),
)


def _spec(precision: Precision, kind: SourceKind, **kw) -> BuildSpec:
    base = dict(
        onnx="export/model.fp32.onnx",
        engine="compile/t-p/model.engine",
        precision=precision,
        source_kind=kind,
        input_name="input",
        chw=(3, 224, 224),
        workspace_mib=1024,
        batch=BatchRange(1, 1, 8),
    )
    base.update(kw)
    return BuildSpec(**base)


SHAPES = ["--minShapes=input:1x3x224x224", "--optShapes=input:1x3x224x224", "--maxShapes=input:8x3x224x224"]
HEAD = ["trtexec", "--onnx=export/model.fp32.onnx", "--saveEngine=compile/t-p/model.engine", *SHAPES]

STATIC = ["--minShapes=input:1x3x224x224", "--optShapes=input:1x3x224x224", "--maxShapes=input:1x3x224x224"]

GOLDEN = [
    # TensorRT 8.2 (JetPack 4.6.1+): --workspace, precision flags
    (V82, _spec(Precision.FP32, SourceKind.FP32), HEAD + ["--workspace=1024"]),
    (V82, _spec(Precision.FP16, SourceKind.FP32), HEAD + ["--workspace=1024", "--fp16"]),
    # TensorRT 8.5/8.6: --memPoolSize (8.4 deprecated --workspace), weakly typed INT8, calibration cache
    (V85, _spec(Precision.FP16, SourceKind.FP32), HEAD + ["--memPoolSize=workspace:1024", "--fp16"]),
    (
        V85,
        _spec(Precision.INT8, SourceKind.QDQ, onnx="q.onnx"),
        [HEAD[0], "--onnx=q.onnx", *HEAD[2:], "--memPoolSize=workspace:1024", "--int8", "--fp16"],
    ),
    (
        V86,
        _spec(
            Precision.INT8,
            SourceKind.FP32,
            calib_cache="c.cache",
            dla_core=1,
            timing_cache="t.cache",
            batch=BatchRange(1, 1, 1),
        ),
        [
            *HEAD[:3],
            *STATIC,
            "--memPoolSize=workspace:1024",
            "--int8",
            "--fp16",
            "--calib=c.cache",
            "--useDLACore=1",
            "--allowGPUFallback",
            "--timingCacheFile=t.cache",
        ],
    ),
    # TensorRT 10.x: memory pools; a Q/DQ ONNX weakly typed with --int8 --fp16 so float layers may run FP16
    (V103, _spec(Precision.FP16, SourceKind.FP32), HEAD + ["--memPoolSize=workspace:1024", "--fp16"]),
    (
        V103,
        _spec(Precision.INT8, SourceKind.QDQ, onnx="q.onnx", export_times="times.json"),
        [
            HEAD[0],
            "--onnx=q.onnx",
            *HEAD[2:],
            "--memPoolSize=workspace:1024",
            "--int8",
            "--fp16",
            "--exportTimes=times.json",
        ],
    ),
    (
        V103,
        _spec(Precision.INT8, SourceKind.FP32, calib_cache="c.cache"),
        HEAD + ["--memPoolSize=workspace:1024", "--int8", "--fp16", "--calib=c.cache"],
    ),
    # TensorRT 11.x: no precision flags at all, strongly typed from the ONNX
    (
        V114,
        _spec(Precision.FP32, SourceKind.FP32, batch=None),
        HEAD[:3] + ["--memPoolSize=workspace:1024", "--stronglyTyped"],
    ),
    (
        V114,
        _spec(Precision.FP16, SourceKind.FP16, onnx="h.onnx"),
        [HEAD[0], "--onnx=h.onnx", *HEAD[2:], "--memPoolSize=workspace:1024", "--stronglyTyped"],
    ),
    (
        V114,
        _spec(Precision.INT8, SourceKind.QDQ, onnx="q.onnx"),
        [HEAD[0], "--onnx=q.onnx", *HEAD[2:], "--memPoolSize=workspace:1024", "--stronglyTyped"],
    ),
]


@pytest.mark.parametrize("version, spec, expected", GOLDEN)
def test_golden_trtexec_commands(version: TrtVersion, spec: BuildSpec, expected: list[str]) -> None:
    assert build_command(spec, version) == expected


@pytest.mark.parametrize(
    "version, spec, message",
    [
        (V114, _spec(Precision.FP16, SourceKind.FP32), "has no --fp16 flag"),
        (V114, _spec(Precision.INT8, SourceKind.FP32, calib_cache="c"), "removed calibrators"),
        (V103, _spec(Precision.INT8, SourceKind.FP32), "needs a calibration cache"),
        (V103, _spec(Precision.INT8, SourceKind.QDQ, calib_cache="c"), "carries its own scales"),
        (V103, _spec(Precision.FP32, SourceKind.FP32, dla_core=0), "DLA runs FP16 and INT8 only"),
        (TrtVersion(9, 2), _spec(Precision.FP32, SourceKind.FP32), "TensorRT 9.2.0 is not supported"),
        (V103, _spec(Precision.FP16, SourceKind.FP32, dla_core=0), "DLA has no dynamic shapes: min = opt = max"),
    ],
)
def test_impossible_flag_combinations_are_refused(version: TrtVersion, spec: BuildSpec, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_command(spec, version)


def test_bench_command_and_version_banner() -> None:
    argv = bench_command("m.engine", V103, input_name="input", chw=(3, 8, 8), batch=4, export_times="t.json")
    assert argv == [
        "trtexec",
        "--loadEngine=m.engine",
        "--shapes=input:4x3x8x8",
        "--warmUp=500",
        "--duration=10",
        "--iterations=100",
        "--useSpinWait",
        "--useCudaGraph",
        "--exportTimes=t.json",
    ]
    # trtexec's banner prints NV_TENSORRT_VERSION: x1000 up to 9.x, x10000 from 10.0
    # (kNV_TENSORRT_VERSION_IMPL, include/NvInferRuntimeBase.h, NVIDIA/TensorRT release/8.6 and release/10.3)
    assert banner_code(V85) == "8502" and banner_code(V103) == "100300" and banner_code(V114) == "110401"
    assert BatchRange.parse("1,4,16") == BatchRange(1, 4, 16) and BatchRange.parse("2") == BatchRange(2, 2, 2)
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        BatchRange.parse("4,2,8")


def _edge_tl(*args: str) -> subprocess.CompletedProcess:
    """The real command, as a user runs it, from the Python under test (PATH may lack an unactivated venv's edge-tl)."""
    return subprocess.run([sys.executable, "-m", "edge_tl", *args], capture_output=True, text=True, timeout=120)


def test_jetson_nano_int8_fails_clearly(plan_run: Run) -> None:
    result = _edge_tl("compile", str(plan_run.root), "--target", "jetson-nano", "--precision", "int8")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: target 'jetson-nano' (maxwell, sm_53) has no fast INT8: it supports fp32, fp16. "
        "Build FP16 instead (--precision fp16)."
    )
    assert not plan_run.path("compile").exists()


def test_orin_nano_int8_plan_uses_qdq_model_and_trt10_flags(plan_run: Run) -> None:
    result = _edge_tl(
        "compile", str(plan_run.root), "--target", "jetson-orin-nano-8gb", "--precision", "int8", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    assert "--int8 --fp16" in result.stdout
    run = Run.open(plan_run.root)
    record = run.artifact("build-plan-jetson-orin-nano-8gb-int8")
    assert record.kind == "build-plan" and record.details["tensorrt"] == "10.3.0" and record.details["jetpack"] == "6.2"
    assert record.details["source"] == "onnx-int8-tensorrt-int8-qdq"
    plan = json.loads(run.path(record.details["plan"]).read_text())
    argv = plan["trtexec_argv"]
    assert argv == [
        "trtexec",
        "--onnx=quantize/tensorrt-int8-qdq/model.int8.onnx",
        "--saveEngine=compile/jetson-orin-nano-8gb-int8/model.engine",
        "--minShapes=input:1x3x8x8",
        "--optShapes=input:1x3x8x8",
        "--maxShapes=input:8x3x8x8",
        "--memPoolSize=workspace:1024",
        "--int8",
        "--fp16",
        "--timingCacheFile=compile/timing-jetson-orin-nano-8gb-trt10.3.0.cache",
        "--exportTimes=compile/jetson-orin-nano-8gb-int8/build_times.json",
        "--profilingVerbosity=detailed",
        "--exportLayerInfo=compile/jetson-orin-nano-8gb-int8/layers.json",
    ]
    assert "--stronglyTyped" not in argv and "--workspace=1024" not in argv
    # every plan states how its engine is timed, so a latency means the same on every release
    assert plan["timing"] == {
        "flags": ["--useSpinWait", "--useCudaGraph"],
        "data_transfers": True,
        "spin_wait": True,
        "cuda_graph": True,
    }
    script = run.path(record.path).read_text()
    # the timing cache's path comes from the script's $timing_cache (a device folder when deploy sets one)
    cache = "--timingCacheFile=compile/timing-jetson-orin-nano-8gb-trt10.3.0.cache"
    assert cache in argv
    assert shlex.join(argv[1:]).replace(cache, '"--timingCacheFile=$timing_cache"') in script
    assert 'timing_cache="${EDGE_TL_TIMING_CACHE_DIR:-compile}"/timing-jetson-orin-nano-8gb-trt10.3.0.cache' in script
    assert not run.has_artifact("engine-jetson-orin-nano-8gb-int8")  # no TensorRT here: plan only


def test_jetpack5_profile_uses_trt85_flags_and_opset_17(plan_run: Run) -> None:
    result = compile_run(plan_run, target="jetson-xavier-nx", request=CompileRequest(precision=Precision.INT8))
    plan = result.plan
    assert plan.release.version == V85 and plan.release.jetpack == "5.1"
    # onnx/onnx-tensorrt 8.5-GA docs/operators.md: "TensorRT 8.5 supports operators up to Opset 17"
    assert plan.target.export_opset() == 17
    assert "--memPoolSize=workspace:1024" in plan.argv and "--int8" in plan.argv and "--fp16" in plan.argv
    assert not any(a.startswith(("--workspace", "--stronglyTyped")) for a in plan.argv)
    assert not result.built and result.why_not_built  # no GPU/TensorRT here: the reason is kept


def test_orin_release_override_and_dla_cache_path(plan_run: Run) -> None:
    agx = load_target("jetson-agx-orin-64gb")
    plan = make_plan(plan_run, agx, CompileRequest(precision=Precision.INT8, dla=True, dla_core=1, tensorrt="8.6"))
    assert plan.release.version == V86 and plan.release.jetpack == "6.0"
    assert plan.source.onnx.name == "onnx-fp32" and plan.source.calib_cache.name == "calib-cache-tensorrt-int8-cache"
    assert "--calib=quantize/tensorrt-int8-cache/calibration.cache" in plan.argv
    assert (
        "--useDLACore=1" in plan.argv
        and "--allowGPUFallback" in plan.argv
        and "--memPoolSize=workspace:4096" in plan.argv
    )
    # DLA: static shape (min = opt = max), never the default 1,1,8 range
    assert plan.spec.batch == BatchRange(1, 1, 1) and "--maxShapes=input:1x3x8x8" in plan.argv
    # the run's cache says TRT-8602 (8.6.2): TensorRT 10.3.0 (the default release) would refuse it, so the plan does
    with pytest.raises(
        RunError,
        match=r"written for TensorRT 8.6.2 \(TRT-8602-EntropyCalibration2\) but the plan is for TensorRT 10.3.0",
    ) as err:
        make_plan(plan_run, agx, CompileRequest(precision=Precision.INT8, dla=True))
    assert "TRT-100300-" in str(err.value)
    assert "--recipe tensorrt-int8-cache --target jetson-agx-orin-64gb --tensorrt 10.3.0" in str(err.value)
    # another patch release of the same minor is refused too (JetPack 5.1 ships 8.5.2, not 8.5.1)
    plan_run.path("quantize/tensorrt-int8-cache/calibration.cache").write_text(
        "TRT-8501-EntropyCalibration2\ninput: 3c810204\n"
    )
    cache = plan_run.artifact(
        "calib-cache-tensorrt-int8-cache"
    )  # recorded anew, as quantize would: the header is judged
    plan_run.add_artifact(cache.name, kind=cache.kind, path=cache.path, stage=cache.stage, details=cache.details)
    with pytest.raises(
        RunError,
        match=r"written for TensorRT 8.5.1 \(TRT-8501-EntropyCalibration2\) but the plan is for TensorRT 8.5.2",
    ):
        make_plan(plan_run, agx, CompileRequest(precision=Precision.INT8, dla=True, tensorrt="8.5.2"))
    with pytest.raises(ConfigError, match="--dla-core 2 does not exist"):
        make_plan(plan_run, agx, CompileRequest(precision=Precision.INT8, dla=True, dla_core=2, tensorrt="8.6"))
    # TensorRT 11 on AGX Orin: FP16 comes from the FP16 ONNX, strongly typed
    fp16 = make_plan(plan_run, agx, CompileRequest(precision=Precision.FP16, tensorrt="11.4"))
    assert fp16.source.onnx.name == "onnx-fp16" and "--stronglyTyped" in fp16.argv and "--fp16" not in fp16.argv


def test_missing_qdq_artifact_names_the_quantize_command(tmp_path: Path, run_factory) -> None:
    run = run_factory(tmp_path / "run", with_qdq=False)
    with pytest.raises(
        RunError, match=r"no 'onnx-int8-tensorrt-int8-qdq' artifact.*edge-tl quantize .* --recipe tensorrt-int8-qdq"
    ):
        compile_run(run, target="jetson-orin-nano-8gb", request=CompileRequest(precision=Precision.INT8))


def test_opset_above_target_and_fixed_batch_are_refused(tmp_path: Path, run_factory) -> None:
    run = run_factory(tmp_path / "hi", opset=19, with_qdq=False, with_cache=False)
    with pytest.raises(RunError, match=r"opset 19 but 'jetson-xavier-nx'.*--opset 17"):
        compile_run(run, target="jetson-xavier-nx", request=CompileRequest(precision=Precision.FP16))
    static = run_factory(tmp_path / "static", dynamic=False)
    plan = make_plan(static, load_target("t4"), CompileRequest(precision=Precision.FP16))
    assert not any(a.startswith("--minShapes") for a in plan.argv)
    with pytest.raises(ConfigError, match="fixed batch of 1"):
        make_plan(static, load_target("t4"), CompileRequest(precision=Precision.FP16, batch=BatchRange(1, 2, 4)))


def test_cpu_target_and_torch_tensorrt_on_jetson_are_refused(plan_run: Run) -> None:
    with pytest.raises(ConfigError, match="runs ONNX Runtime on the CPU"):
        compile_run(plan_run, target="x86-64", request=CompileRequest(precision=Precision.INT8))
    with pytest.raises(ConfigError, match="not a Jetson"):
        compile_run(
            plan_run, target="jetson-agx-thor", request=CompileRequest(precision=Precision.FP16), via=Via.TORCH_TENSORRT
        )
    with pytest.raises(ConfigError, match="cannot build the engine here"):
        compile_run(plan_run, target="t4", request=CompileRequest(precision=Precision.FP16), mode=BuildMode.BUILD)
    shown = CliRunner().invoke(cli, ["compile", "--help"])
    assert shown.exit_code == 0 and all(
        opt in shown.output for opt in ("--target", "--precision", "--dla", "--batch", "--tensorrt")
    )


# --------------------------------------------------------------------------- build_engine.sh, run for real

FAKE_TRTEXEC = """#!/usr/bin/env bash
# Stands in for trtexec: prints a real trtexec log and writes the engine file it was asked for.
for arg in "$@"; do
  case "$arg" in --saveEngine=*) printf 'plain engine bytes' > "${arg#--saveEngine=}" ;; esac
done
echo "args: $*" >&2
cat "$FAKE_LOG"
"""


def _fake_trtexec(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "trtexec"
    path.parent.mkdir()
    path.write_text(FAKE_TRTEXEC)
    path.chmod(0o755)
    return path


def _log_for(tmp_path: Path, fixtures: Path, banner: str) -> Path:
    """The real TensorRT 10.16 log with its banner rewritten to the version under test."""
    text = (fixtures / "trtexec-10.16-rtx6000-ada.log").read_text().replace("v101600", banner)
    text = text.replace("TensorRT version: 10.16.0", f"TensorRT version: {banner[1:3]}.{int(banner[3:5])}.0")
    path = tmp_path / f"{banner}.log"
    path.write_text(text)
    return path


needs_bash = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("sha256sum") is None, reason="needs bash and sha256sum"
)


@needs_bash
def test_build_engine_script_builds_and_writes_the_sidecar(plan_run: Run, tmp_path: Path, fixtures_dir: Path) -> None:
    result = compile_run(plan_run, target="ada", request=CompileRequest(precision=Precision.FP16))
    script = plan_run.path(result.plan_artifact.path)
    env = {
        **os.environ,
        "TRTEXEC": str(_fake_trtexec(tmp_path)),
        "FAKE_LOG": str(_log_for(tmp_path, fixtures_dir, "v100300")),
    }
    # Run from elsewhere: the script finds the run's root itself.
    proc = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    engine = plan_run.path("compile/ada-fp16/model.engine")
    assert engine.read_bytes() == b"plain engine bytes"  # nothing prepended
    meta = read_sidecar(engine)
    assert meta.tensorrt_version == "10.3.0" and meta.gpu_name == "NVIDIA RTX 6000 Ada Generation"
    assert meta.compute_capability == "8.9" and meta.precision == "fp16" and meta.builder == "trtexec"
    assert meta.source["artifact"] == "onnx-fp32" and meta.batch == {"min": 1, "opt": 1, "max": 8}
    assert "--fp16" in meta.flags and len(meta.engine_sha256) == 64
    assert "--memPoolSize=workspace:4096" in proc.stdout  # trtexec output is tee-d to the terminal and the log
    assert plan_run.path("compile/ada-fp16/build.log").read_text().startswith("args: ")


@needs_bash
def test_build_engine_script_refuses_another_tensorrt_and_a_changed_onnx(
    plan_run: Run, tmp_path: Path, fixtures_dir: Path
) -> None:
    result = compile_run(plan_run, target="ada", request=CompileRequest(precision=Precision.FP16))
    script = plan_run.path(result.plan_artifact.path)
    trtexec = _fake_trtexec(tmp_path)
    env = {**os.environ, "TRTEXEC": str(trtexec), "FAKE_LOG": str(_log_for(tmp_path, fixtures_dir, "v100800"))}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    # The same rule and message as the Python builder's (release_mismatch), with the found release spelled out.
    assert proc.returncode == 3
    assert proc.stderr.strip() == release_mismatch("10.3.0", "10.8.0", target="ada")
    assert "edge-tl compile RUN --target ada --tensorrt 10.8.0" in proc.stderr
    assert not plan_run.path("compile/ada-fp16/model.engine").exists()
    with plan_run.path("export/model.fp32.onnx").open("ab") as fh:
        fh.write(b"changed")
    env["FAKE_LOG"] = str(_log_for(tmp_path, fixtures_dir, "v100300"))
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "FAILED" in (proc.stdout + proc.stderr)


@needs_bash
def test_run_build_script_records_the_engine_for_bench_and_verify(
    plan_run: Run, tmp_path: Path, fixtures_dir: Path, monkeypatch
) -> None:
    from edge_tl.compile.api import run_build_script
    from edge_tl.runtime import open_runner
    from edge_tl.runtime.tensorrt_runner import TensorRTRunner

    result = compile_run(plan_run, target="ada", request=CompileRequest(precision=Precision.INT8))
    monkeypatch.setenv("TRTEXEC", str(_fake_trtexec(tmp_path)))
    monkeypatch.setenv("FAKE_LOG", str(_log_for(tmp_path, fixtures_dir, "v100800")))
    with pytest.raises(RunError, match=r"(?s)failed \(exit 3\).*this plan is for TensorRT 10.3.0"):
        run_build_script(plan_run, result.plan)
    monkeypatch.setenv("FAKE_LOG", str(_log_for(tmp_path, fixtures_dir, "v100300")))
    record = run_build_script(plan_run, result.plan)
    assert record.name == "engine-ada-int8" and record.kind == "engine"
    assert (
        record.details["builder"] == "trtexec" and record.details["source"]["artifact"] == "onnx-int8-tensorrt-int8-qdq"
    )
    runner = open_runner(Run.open(plan_run.root), artifact="engine-ada-int8")
    assert isinstance(runner, TensorRTRunner) and runner.meta.compute_capability == "8.9"
