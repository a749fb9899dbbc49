"""The build-plan generator in process: every field of a plan, the whole build_engine.sh, and each refusal word
for word.

Fast (no subprocess but bash where a script runs), so that ``tools/mutation.py compile-plan`` can run it per mutant.
The golden script in tests/compile/golden/ is what a user runs on the device; the bash tests in
test_compile_plan.py and test_trt_releases.py run such scripts against a stand-in trtexec.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_tl import __version__
from edge_tl.compile import BatchRange, CompileRequest, make_plan
from edge_tl.compile.dla import dla_verdict
from edge_tl.compile.plan import render_script, write_plan
from edge_tl.errors import ConfigError, RunError
from edge_tl.runs import Run
from edge_tl.targets import Precision, TrtVersion, load_target

GOLDEN = Path(__file__).parent / "golden"


def _orin_dla_plan(run: Run):
    return make_plan(
        run,
        load_target("jetson-agx-orin-64gb"),
        CompileRequest(precision=Precision.INT8, dla=True, dla_core=1, tensorrt="8.6"),
    )


def test_plan_record_has_every_decision(plan_run: Run) -> None:
    plan = _orin_dla_plan(plan_run)
    argv = [
        "trtexec",
        "--onnx=export/model.fp32.onnx",
        "--saveEngine=compile/jetson-agx-orin-64gb-int8/model.engine",
        "--minShapes=input:1x3x8x8",
        "--optShapes=input:1x3x8x8",
        "--maxShapes=input:1x3x8x8",
        "--memPoolSize=workspace:4096",
        "--int8",
        "--fp16",
        "--calib=quantize/tensorrt-int8-cache/calibration.cache",
        "--useDLACore=1",
        "--allowGPUFallback",
        "--timingCacheFile=compile/timing-jetson-agx-orin-64gb-trt8.6.2.cache",
        "--exportTimes=compile/jetson-agx-orin-64gb-int8/build_times.json",
        "--profilingVerbosity=detailed",
        "--exportLayerInfo=compile/jetson-agx-orin-64gb-int8/layers.json",
    ]
    assert plan.to_dict() == {
        "edge_tl_version": __version__,
        "target": "jetson-agx-orin-64gb",
        "tensorrt": {"version": "8.6.2", "cuda": "12.2", "jetpack": "6.0"},
        "precision": "int8",
        "source": {
            "artifact": "onnx-fp32",
            "path": "export/model.fp32.onnx",
            "sha256": plan_run.artifact("onnx-fp32").sha256,
            "kind": "fp32",
            "recipe": "tensorrt-int8-cache",
            "calib_cache": {
                "artifact": "calib-cache-tensorrt-int8-cache",
                "path": "quantize/tensorrt-int8-cache/calibration.cache",
                "sha256": plan_run.artifact("calib-cache-tensorrt-int8-cache").sha256,
            },
        },
        "engine": "compile/jetson-agx-orin-64gb-int8/model.engine",
        "sidecar": "compile/jetson-agx-orin-64gb-int8/model.engine.json",
        "input_name": "input",
        "output_name": "logits",
        "chw": [3, 8, 8],
        "batch": {"min": 1, "opt": 1, "max": 1},
        "workspace_mib": 4096,
        "dla_core": 1,
        "timing_cache": "compile/timing-jetson-agx-orin-64gb-trt8.6.2.cache",
        "build": {
            "strongly_typed": False,
            "fp16": True,
            "int8": True,
            "calib": "quantize/tensorrt-int8-cache/calibration.cache",
        },
        "build_options": {"version_compatible": False, "builder_optimization_level": None, "build_only": False},
        "trtexec_argv": argv,
        "timing": {
            "flags": ["--useSpinWait", "--useCudaGraph"],
            "data_transfers": True,
            "spin_wait": True,
            "cuda_graph": True,
        },
        "dla": {
            "core": 1,
            "gpu_fallback_ops": {},
            # a kAVG Reduce in the parser; DLA reduces max only but pools averages: the layer report decides
            "disputed_ops": {"GlobalAveragePool": 1},
            "why": {"GlobalAveragePool": dla_verdict("GlobalAveragePool", TrtVersion(8, 6, 2))[1]},
            "rules": "static shape (min = opt = max); FP16/INT8 only",
            "source": "https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/dla-layer-restrictions.html",
        },
        "working_directory": "the run directory",
    }
    assert plan.flags() == argv[1:]

    record = write_plan(plan_run, plan)
    assert (record.name, record.kind, record.stage, record.precision) == (
        "build-plan-jetson-agx-orin-64gb-int8",
        "build-plan",
        "compile",
        "int8",
    )
    assert record.path == "compile/jetson-agx-orin-64gb-int8/build_engine.sh"
    assert record.details == {
        "target": "jetson-agx-orin-64gb",
        "tensorrt": "8.6.2",
        "jetpack": "6.0",
        "plan": "compile/jetson-agx-orin-64gb-int8/build_plan.json",
        "engine": "compile/jetson-agx-orin-64gb-int8/model.engine",
        "source": "onnx-fp32",
        "calib_cache": "calib-cache-tensorrt-int8-cache",
        "trtexec": " ".join(argv),
    }
    script = plan_run.path(record.path)
    assert script.stat().st_mode & 0o111 == 0o111  # runnable as ./build_engine.sh too
    assert json.loads(plan_run.path("compile/jetson-agx-orin-64gb-int8/build_plan.json").read_text()) == plan.to_dict()


def test_build_script_is_the_golden_one(plan_run: Run) -> None:
    plan = _orin_dla_plan(plan_run)
    expected = (GOLDEN / "build_engine-orin-int8-dla-trt8.6.2.sh").read_text()
    expected = (
        expected.replace("{onnx_sha256}", plan.source.onnx.sha256)
        .replace("{cache_sha256}", plan.source.calib_cache.sha256)
        .replace("{version}", __version__)
    )
    assert render_script(plan) == expected


def test_fp16_plan_without_cache_or_dla(plan_run: Run) -> None:
    plan = make_plan(plan_run, load_target("ada"), CompileRequest(precision=Precision.FP16, workspace_mib=16))
    data = plan.to_dict()
    assert data["source"]["calib_cache"] is None and data["source"]["recipe"] is None and data["dla"] is None
    assert data["dla_core"] is None and data["workspace_mib"] == 16 and data["batch"] == {"min": 1, "opt": 1, "max": 8}
    script = render_script(plan)
    assert "calibration" not in script and script.count("sha256sum -c") == 1
    record = write_plan(plan_run, plan)
    assert record.details["calib_cache"] is None


def test_request_limits_word_for_word() -> None:
    with pytest.raises(ConfigError) as err:
        CompileRequest(precision=Precision.FP16, dla_core=-1)
    assert str(err.value) == "--dla-core must be >= 0, got -1"
    with pytest.raises(ConfigError) as err:
        CompileRequest(precision=Precision.FP16, workspace_mib=15)
    assert str(err.value) == "--workspace must be at least 16 MiB, got 15"
    assert CompileRequest(precision=Precision.FP16, workspace_mib=16, dla_core=0).workspace_mib == 16


def test_dla_range_refused_in_process(plan_run: Run) -> None:
    orin = load_target("jetson-agx-orin-64gb")
    with pytest.raises(ConfigError) as err:
        make_plan(plan_run, orin, CompileRequest(precision=Precision.FP16, dla=True, batch=BatchRange(1, 2, 8)))
    assert str(err.value) == (
        "DLA has no dynamic shapes (min = opt = max, and the runtime shape is the build shape); "
        "--batch 1,2,8 is a range: give one batch size, e.g. --batch 2"
    )
    with pytest.raises(ConfigError) as err:
        make_plan(plan_run, orin, CompileRequest(precision=Precision.FP16, dla=True, dla_core=2))
    assert str(err.value) == (
        "--dla-core 2 does not exist on 'jetson-agx-orin-64gb': it has 2 DLA core(s), numbered from 0"
    )


def test_missing_artifacts_name_the_command_that_makes_them(tmp_path: Path, run_factory) -> None:
    run = run_factory(tmp_path / "run", with_qdq=False, with_cache=False)
    root = str(run.root)
    with pytest.raises(RunError) as err:
        make_plan(run, load_target("jetson-agx-thor"), CompileRequest(precision=Precision.INT8))
    assert str(err.value) == (
        f"run {root!r} has no 'onnx-int8-tensorrt-int8-qdq-fp16' artifact "
        "(ONNX artifacts it has: onnx-fp32, onnx-fp16). "
        f"First run: edge-tl quantize {root} --recipe tensorrt-int8-qdq"
    )
    with pytest.raises(RunError) as err:
        make_plan(run, load_target("jetson-agx-orin-64gb"), CompileRequest(precision=Precision.INT8, dla=True))
    assert str(err.value) == (
        f"run {root!r} has no 'calib-cache-tensorrt-int8-cache' artifact "
        "(ONNX artifacts it has: onnx-fp32, onnx-fp16). "
        f"First run: edge-tl quantize {root} --recipe tensorrt-int8-cache --target jetson-agx-orin-64gb "
        "--tensorrt 10.3.0"
    )


def test_a_custom_target_is_named_by_its_file(tmp_path: Path, run_factory) -> None:
    run = run_factory(tmp_path / "run", with_cache=False)
    custom = tmp_path / "my-orin.toml"
    custom.write_text(
        Path(load_target("jetson-agx-orin-64gb").source)
        .read_text()
        .replace('name = "jetson-agx-orin-64gb"', 'name = "my-orin"')
    )
    with pytest.raises(RunError, match=rf"--target {custom} --tensorrt 10.3.0$"):
        make_plan(run, load_target(custom), CompileRequest(precision=Precision.INT8, dla=True))


def _record_again(run: Run, name: str) -> None:
    """Record an artifact's changed file anew (a changed file under its old record is refused before
    anything reads it; these tests are about what a recorded file holds)."""
    a = run.artifact(name)
    run.add_artifact(name, kind=a.kind, path=a.path, stage=a.stage, precision=a.precision, details=a.details)


def test_cache_header_must_be_a_header(plan_run: Run) -> None:
    cache = plan_run.path("quantize/tensorrt-int8-cache/calibration.cache")
    cache.write_text("not a cache at all, and a long first line that is cut\n")
    _record_again(plan_run, "calib-cache-tensorrt-int8-cache")  # as if quantize had written it: the header is judged
    with pytest.raises(RunError) as err:
        _orin_dla_plan(plan_run)
    assert str(err.value) == (
        f"{str(cache)!r} does not start with a TensorRT calibration-cache header "
        "(got 'not a cache at all, and a long first lin'); "
        "re-run: edge-tl quantize "
        + str(plan_run.root)
        + " --recipe tensorrt-int8-cache --target jetson-agx-orin-64gb --tensorrt 8.6.2"
    )


def test_opset_refusal_asks_to_quantize_again_for_qdq(tmp_path: Path, run_factory) -> None:
    # onnx/onnx-tensorrt 8.5-GA docs/operators.md: TensorRT 8.5 parses operators up to opset 17
    run = run_factory(tmp_path / "run", opset=18)
    xavier_nx, root = load_target("jetson-xavier-nx"), str(run.root)
    with pytest.raises(RunError) as err:
        make_plan(run, xavier_nx, CompileRequest(precision=Precision.INT8))
    assert str(err.value) == (
        "'onnx-int8-tensorrt-int8-qdq' is opset 18 but 'jetson-xavier-nx' (TensorRT 8.5.2) parses up "
        f"to opset 17; re-export with `edge-tl export {root} --opset 17` and quantize again"
    )
    with pytest.raises(RunError) as err:
        make_plan(run, xavier_nx, CompileRequest(precision=Precision.FP16))
    assert str(err.value) == (
        "'onnx-fp32' is opset 18 but 'jetson-xavier-nx' (TensorRT 8.5.2) parses up to opset 17; "
        f"re-export with `edge-tl export {root} --opset 17`"
    )


def test_onnx_details_are_checked(tmp_path: Path, run_factory) -> None:
    run = run_factory(tmp_path / "run", with_qdq=False, with_cache=False)
    record = run.artifact("onnx-fp32")
    run.add_artifact(
        "onnx-fp32",
        kind="onnx",
        path=record.path,
        stage="export",
        precision="fp32",
        details={**record.details, "input_shape": ["batch", 3, 8]},
    )
    with pytest.raises(RunError) as err:
        make_plan(run, load_target("ada"), CompileRequest(precision=Precision.FP16))
    assert str(err.value) == (
        "artifact 'onnx-fp32' has input shape ['batch', 3, 8]; edge-tl builds NCHW images of a fixed size"
    )
    details = {k: v for k, v in record.details.items() if k != "input_name"}
    run.add_artifact("onnx-fp32", kind="onnx", path=record.path, stage="export", precision="fp32", details=details)
    with pytest.raises(RunError) as err:
        make_plan(run, load_target("ada"), CompileRequest(precision=Precision.FP16))
    assert str(err.value) == (
        "artifact 'onnx-fp32' lacks details['input_name'] (input name/shape); re-run the stage that made it"
    )
    no_output = {k: v for k, v in record.details.items() if k != "output_name"}
    run.add_artifact("onnx-fp32", kind="onnx", path=record.path, stage="export", precision="fp32", details=no_output)
    assert make_plan(run, load_target("ada"), CompileRequest(precision=Precision.FP16)).output_name == "logits"


def test_missing_float_onnx_names_the_export_command(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "empty", classes=["a", "b"])
    root = str(run.root)
    cases = [
        ("ada", CompileRequest(precision=Precision.FP32), "onnx-fp32", "--precision fp32"),
        ("ada", CompileRequest(precision=Precision.FP16), "onnx-fp32", "--precision fp32"),  # 10.x: --fp16 on FP32
        ("jetson-agx-thor", CompileRequest(precision=Precision.FP16), "onnx-fp16", "--precision fp16"),  # 11.x
        ("jetson-agx-orin-64gb", CompileRequest(precision=Precision.INT8, dla=True), "onnx-fp32", "--precision fp32"),
    ]
    for target, request, name, how in cases:
        with pytest.raises(RunError) as err:
            make_plan(run, load_target(target), request)
        assert str(err.value) == (
            f"run {root!r} has no {name!r} artifact (ONNX artifacts it has: none). "
            f"First run: edge-tl export {root} {how}"
        )


def test_only_onnx_artifacts_are_listed_as_what_the_run_has(tmp_path: Path, run_factory) -> None:
    run = run_factory(tmp_path / "run", with_qdq=False)  # has a calibration cache, which is no ONNX
    with pytest.raises(RunError, match=r"\(ONNX artifacts it has: onnx-fp32, onnx-fp16\)\."):
        make_plan(run, load_target("jetson-orin-nano-8gb"), CompileRequest(precision=Precision.INT8))


def test_source_choice_defaults_to_the_gpu_and_refuses_other_precisions(plan_run: Run) -> None:
    from edge_tl.compile.plan import choose_source

    orin = load_target("jetson-agx-orin-64gb")
    gpu = choose_source(plan_run, orin, Precision.INT8, orin.release(None))  # no dla= : the GPU's Q/DQ path
    assert gpu.onnx.name == "onnx-int8-tensorrt-int8-qdq" and gpu.recipe.value == "tensorrt-int8-qdq"
    qdq = make_plan(plan_run, orin, CompileRequest(precision=Precision.INT8))
    assert qdq.to_dict()["source"]["recipe"] == "tensorrt-int8-qdq" and qdq.to_dict()["source"]["kind"] == "qdq"
    assert qdq.dla_gpu_fallback is None
    with pytest.raises(ConfigError) as err:
        make_plan(plan_run, load_target("ada"), CompileRequest(precision=Precision.FP8))
    assert str(err.value) == "edge-tl compiles fp32, fp16 or int8 engines; fp8 is not supported yet"
    with pytest.raises(ConfigError, match="^--dla was asked but target 'ada' has no DLA cores"):
        make_plan(plan_run, load_target("ada"), CompileRequest(precision=Precision.FP16, dla=True))


def test_a_binary_cache_is_refused_as_no_header(plan_run: Run) -> None:
    cache = plan_run.path("quantize/tensorrt-int8-cache/calibration.cache")
    cache.write_bytes(b"\xff\xfeTRT\n")
    _record_again(plan_run, "calib-cache-tensorrt-int8-cache")
    with pytest.raises(
        RunError, match=r"does not start with a TensorRT calibration-cache header \(got '\ufffd\ufffdTRT'\)"
    ):
        _orin_dla_plan(plan_run)


def test_fixed_batch_plans_record_no_batch(tmp_path: Path, run_factory) -> None:
    run = run_factory(tmp_path / "static", dynamic=False)
    plan = make_plan(run, load_target("ada"), CompileRequest(precision=Precision.FP16))
    assert plan.spec.batch is None and plan.to_dict()["batch"] is None
    assert '"batch": null' in render_script(plan)  # the sidecar written on the device says so too


def test_onnx_details_give_names_and_layout(tmp_path: Path, run_factory) -> None:
    run = run_factory(tmp_path / "run", with_qdq=False, with_cache=False)
    record = run.artifact("onnx-fp32")
    run.add_artifact(
        "onnx-fp32",
        kind="onnx",
        path=record.path,
        stage="export",
        precision="fp32",
        details={**record.details, "output_name": "probs", "input_shape": ["batch", 3, 8, 16]},
    )
    plan = make_plan(run, load_target("ada"), CompileRequest(precision=Precision.FP16))
    assert plan.output_name == "probs" and plan.spec.chw == (3, 8, 16)
    assert "--maxShapes=input:8x3x8x16" in plan.argv
    run.add_artifact(
        "onnx-fp32",
        kind="onnx",
        path=record.path,
        stage="export",
        precision="fp32",
        details={**record.details, "input_shape": ["batch", "channels", 8, 8]},
    )
    with pytest.raises(RunError, match="has input shape"):
        make_plan(run, load_target("ada"), CompileRequest(precision=Precision.FP16))


def test_release_override_sets_the_opset_limit(tmp_path: Path, run_factory) -> None:
    # onnx/onnx-tensorrt docs/operators.md: "up to Opset 17" on branch 8.6-GA, "opset 9 to opset 20" from 10.0-GA
    run = run_factory(tmp_path / "run", opset=18, with_qdq=False, with_cache=False)
    orin = load_target("jetson-agx-orin-64gb")
    assert make_plan(run, orin, CompileRequest(precision=Precision.FP16)).release.version.major == 10
    with pytest.raises(
        RunError, match="is opset 18 but 'jetson-agx-orin-64gb' \\(TensorRT 8.6.2\\) parses up to opset 17"
    ):
        make_plan(run, orin, CompileRequest(precision=Precision.FP16, tensorrt="8.6"))


def test_plans_can_be_rewritten(plan_run: Run) -> None:
    plan = make_plan(plan_run, load_target("ada"), CompileRequest(precision=Precision.FP16))
    write_plan(plan_run, plan)
    again = write_plan(plan_run, plan)  # re-planning into the same folder replaces the plan
    assert plan_run.path(again.path).read_text() == render_script(plan)
