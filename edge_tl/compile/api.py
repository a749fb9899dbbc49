"""``compile_run``: a run's ONNX (or checkpoint) -> a TensorRT engine here, or a build plan for the device.

The build plan is always written (deploy runs it on the device). When TensorRT
imports here and this GPU has the target's compute capability, the engine is
also built now with the Python API (or torch-tensorrt with ``via``), with its
sidecar, and recorded as ``engine-<target>-<precision>``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from edge_tl.compile.plan import (
    DEFAULT_BATCH,
    ENGINE_NAME,
    LAYERS_NAME,
    LOG_NAME,
    SCRIPT_NAME,
    STAGE,
    BuildPlan,
    CompileRequest,
    engine_artifact_name,
    make_plan,
    plan_dir,
    write_plan,
)
from edge_tl.compile.trt_builder import BuildOutcome
from edge_tl.compile.trtexec_flags import BatchRange
from edge_tl.errors import ConfigError, RunError
from edge_tl.runs import Artifact, Run, atomic_write_text, sha256_file
from edge_tl.targets import Precision, Target, TargetKind, TrtVersion, load_target
from edge_tl.trt.sidecar import EngineMetadata, read_sidecar, write_sidecar
from edge_tl.trt.trt_api import api_path


class Via(str, Enum):
    ONNX = "onnx"
    TORCH_TENSORRT = "torch-tensorrt"


class BuildMode(str, Enum):
    AUTO = "auto"  # build here when TensorRT and a matching GPU are present, else plan only
    PLAN = "plan"  # plan only
    BUILD = "build"  # build here or fail saying why not


@dataclass(frozen=True)
class CompileResult:
    plan: BuildPlan | None  # None for --via torch-tensorrt (no ONNX, no trtexec)
    plan_artifact: Artifact | None
    engine_artifact: Artifact | None
    why_not_built: str | None  # set when only the plan was written

    @property
    def built(self) -> bool:
        return self.engine_artifact is not None


def _local_builder(target: Target) -> tuple[str | None, str | None]:
    """(``"python"`` or ``"trtexec"``, None) when this machine can build for ``target``; else (None, the reason)."""
    from edge_tl.compile.trt_builder import local_tensorrt_version
    from edge_tl.trt.cuda import local_gpu
    from edge_tl.trt.trtexec import find_trtexec

    gpu = local_gpu()
    if gpu is None:
        return None, "no CUDA GPU found here"
    if target.gpu is None or gpu.compute_capability != target.gpu.sm:
        want = target.gpu.sm if target.gpu else "none"
        return None, f"this GPU ({gpu.name}, compute capability {gpu.compute_capability}) is not the target's ({want})"
    version = local_tensorrt_version()
    if version is not None:
        try:
            api_path(TrtVersion.parse(version))
            return "python", None
        except ConfigError:
            pass  # an old TensorRT without our Python path: trtexec may still build it
    try:
        find_trtexec()
    except ConfigError:
        return None, "neither a TensorRT Python package edge-tl can drive (8.5+) nor trtexec is available here"
    return "trtexec", None


def layer_report(run: Run, plan: BuildPlan, layer_info: str, *, build_log: str, source: str) -> dict[str, Any]:
    """The per-layer summary of an engine built from ``plan``, from its layer information JSON (trtexec's
    ``--exportLayerInfo`` or IEngineInspector's) and, for DLA subgraphs, its build log."""
    from edge_tl.trt.layers import summarize_build

    return summarize_build(
        layer_info,
        where=f"{plan.directory}/{LAYERS_NAME}",
        build_log=build_log,
        precision=plan.precision.value,
        dla=plan.spec.dla_core is not None,
        recipe=plan.source.recipe.value if plan.source.recipe else None,
        kept_float=tuple(plan.source.onnx.details.get("float_layers") or ()),
        predicted_gpu_ops=plan.dla_gpu_fallback,
        onnx_path=run.path(plan.spec.onnx),
        batch=plan.spec.batch.opt if plan.spec.batch else 1,
        source=source,
    )


def say_layer_report(report: dict[str, Any], say: Callable[[str], None]) -> None:
    """One line of the precision mix, and a warning per finding (the same findings verify gates on)."""
    mix = report.get("compute_macs") or report.get("compute_layers") or {}
    total = sum(mix.values()) or 1
    unit = "MACs" if report.get("compute_macs") else "layers"
    parts = ", ".join(f"{k} {v * 100 / total:.1f}%" for k, v in sorted(mix.items()))
    dla = f"; DLA subgraphs {report['dla_subgraphs']}" if report.get("dla_subgraphs") else ""
    say(f"engine layers: Conv/Gemm/MatMul {unit} {parts or 'none'}{dla}")
    for finding in report.get("findings", ()):
        say(f"WARNING: {finding}")


def run_build_script(run: Run, plan: BuildPlan, *, timeout_s: float | None = 3600) -> Artifact:
    """Run the plan's ``build_engine.sh`` here (trtexec) and record the engine it wrote, with its sidecar."""
    script = run.path(plan.directory, SCRIPT_NAME)
    try:
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RunError(f"{str(script)!r} did not finish within {timeout_s} s") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
        raise RunError(f"{str(script)!r} failed (exit {proc.returncode}); last lines:\n{tail}")
    engine = run.path(plan.spec.engine)
    meta = read_sidecar(engine)
    info = run.path(plan.spec.export_layer_info) if plan.spec.export_layer_info else None
    if info is not None and info.is_file():
        log = run.path(plan.directory, LOG_NAME)
        report = layer_report(
            run,
            plan,
            info.read_text(encoding="utf-8"),
            build_log=log.read_text(encoding="utf-8", errors="replace") if log.is_file() else "",
            source=f"trtexec --exportLayerInfo ({plan.spec.export_layer_info})",
        )
        meta = dataclasses.replace(meta, layer_report=report)
        write_sidecar(engine, meta)
    return run.add_artifact(
        engine_artifact_name(plan.target, plan.precision),
        kind="engine",
        path=engine,
        stage=STAGE,
        precision=plan.precision.value,
        details=meta.to_dict(),
    )


def compile_run(
    run_dir: str | os.PathLike[str] | Run,
    *,
    target: str | os.PathLike[str] | Target,
    request: CompileRequest,
    via: Via = Via.ONNX,
    mode: BuildMode = BuildMode.AUTO,
    progress: Callable[[str], None] | None = None,
) -> CompileResult:
    say = progress or (lambda _msg: None)
    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    profile = load_target(target)
    if not profile.default_runtime.builds_engine:
        on = "CPU" if profile.kind is TargetKind.CPU else "GPU"
        raise ConfigError(
            f"target {profile.name!r} runs {profile.default_runtime.label} on the {on}: there is no engine to compile. "
            f"Quantize with `edge-tl quantize {run.root} --recipe {profile.calibration_recipe.value}` and bench the "
            "ONNX."
        )
    if via is Via.TORCH_TENSORRT:
        return _compile_torch_tensorrt(run, profile, request, mode=mode, say=say)
    plan = make_plan(run, profile, request)
    plan_record = write_plan(run, plan)
    say(f"build plan: {run.root / plan_record.path} (TensorRT {plan.release.version}, source {plan.source.onnx.name})")
    if plan.dla_gpu_fallback:
        ops = ", ".join(f"{op} x{n}" for op, n in plan.dla_gpu_fallback.items())
        say(f"DLA cannot take these operators; they will run on the GPU: {ops}")
    elif plan.dla_gpu_fallback is not None:
        say("DLA takes every operator type of this model (parameter restrictions are checked by the build)")
    if plan.dla_disputed:
        ops = ", ".join(f"{op} x{n}" for op, n in plan.dla_disputed.items())
        say(
            f"TensorRT's sources disagree whether DLA runs these on TensorRT {plan.release.version}: {ops}; "
            "the engine's layer report will say"
        )
    builder, why = (None, "--plan-only was asked") if mode is BuildMode.PLAN else _local_builder(profile)
    if builder is None:
        if mode is BuildMode.BUILD:
            raise ConfigError(f"cannot build the engine here: {why}. Run the build plan on the device instead.")
        say(f"engine not built here: {why}; run {plan_record.path} on the device")
        return CompileResult(plan, plan_record, None, why)
    if builder == "trtexec":
        engine = run_build_script(run, plan)
        say(f"engine: {run.root / engine.path} (trtexec)")
        if engine.details.get("layer_report"):
            say_layer_report(engine.details["layer_report"], say)
        return CompileResult(plan, plan_record, engine, None)
    from edge_tl.compile.trt_builder import PythonBuild, build_engine

    unsupported = [
        flag
        for flag, asked in (
            ("--version-compatible", plan.spec.version_compatible),
            ("--builder-optimization-level", plan.spec.builder_optimization_level is not None),
        )
        if asked
    ]
    if unsupported:
        # The plan decided them; a builder that cannot carry them out must not build without them.
        raise ConfigError(
            f"the TensorRT Python builder here does not carry out {' and '.join(unsupported)}: build with trtexec "
            f"(bash {plan_record.path}) or drop the option"
        )
    outcome = build_engine(PythonBuild.from_plan(run, plan))
    report = None
    if outcome.layer_info is not None and plan.spec.export_layer_info:
        atomic_write_text(run.path(plan.spec.export_layer_info), outcome.layer_info)
        report = layer_report(
            run, plan, outcome.layer_info, build_log="\n".join(outcome.log), source="IEngineInspector (JSON)"
        )
    source = {"artifact": plan.source.onnx.name, "path": plan.source.onnx.path, "sha256": plan.source.onnx.sha256}
    engine = _record_engine(
        run,
        outcome,
        name=engine_artifact_name(profile, plan.precision),
        target=profile,
        precision=plan.precision,
        io=(plan.spec.input_name, plan.output_name),
        chw=plan.spec.chw,
        batch=plan.spec.batch,
        source=source,
        builder="tensorrt-python",
        dla_core=plan.spec.dla_core,
        layer_report=report,
    )
    say(f"engine: {run.root / engine.path} (TensorRT {outcome.tensorrt_version})")
    if report is not None:
        say_layer_report(report, say)
    return CompileResult(plan, plan_record, engine, None)


def _compile_torch_tensorrt(
    run: Run, target: Target, request: CompileRequest, *, mode: BuildMode, say: Callable[[str], None]
) -> CompileResult:
    """Compile the fine-tuned PyTorch model on this GPU; recorded beside (not over) the ONNX-path engine."""
    from edge_tl.compile.torch_trt import build_with_torch_tensorrt
    from edge_tl.models import Preprocessing

    if target.kind is TargetKind.JETSON:
        raise ConfigError(
            f"--via torch-tensorrt compiles on this workstation's GPU, which is not a Jetson ({target.name!r}); "
            "use --via onnx to get an on-device build plan"
        )
    precision = target.check_precision(request.precision)
    target.check_dla(request.dla)
    if mode is BuildMode.PLAN:
        raise ConfigError("--via torch-tensorrt builds here and has no plan; drop --plan-only or use --via onnx")
    builder, why = _local_builder(target)
    if builder != "python":
        raise ConfigError(
            "--via torch-tensorrt cannot build here: "
            f"{why or 'torch-tensorrt needs TensorRT Python package, not only trtexec'}"
        )
    size = Preprocessing.from_dict(run.require("preprocessing", stage="compile")).input_size
    chw = (3, size, size)
    batch = request.batch or DEFAULT_BATCH
    directory = f"{plan_dir(target, precision)}-torch-tensorrt"
    outcome = build_with_torch_tensorrt(
        run, precision=precision, chw=chw, batch=batch, engine=run.path(directory, ENGINE_NAME)
    )
    checkpoint = run.artifact("checkpoint-best")
    engine = _record_engine(
        run,
        outcome,
        name=f"{engine_artifact_name(target, precision)}-torch-tensorrt",
        target=target,
        precision=precision,
        io=None,
        chw=chw,
        batch=batch,
        source={"artifact": checkpoint.name, "path": checkpoint.path, "sha256": checkpoint.sha256},
        builder="torch-tensorrt",
        dla_core=None,
    )
    say(f"engine: {run.root / engine.path} (torch-tensorrt, TensorRT {outcome.tensorrt_version})")
    return CompileResult(None, None, engine, None)


def _record_engine(
    run: Run,
    outcome: BuildOutcome,
    *,
    name: str,
    target: Target,
    precision: Precision,
    io: tuple[str, str] | None,
    chw: tuple[int, int, int],
    batch: BatchRange | None,
    source: dict[str, Any],
    builder: str,
    dla_core: int | None,
    layer_report: dict[str, Any] | None = None,
) -> Artifact:
    """Write the engine's build log and sidecar and record it in the manifest."""
    from edge_tl.trt.cuda import local_gpu

    gpu = local_gpu()
    (outcome.engine.parent / "build.log").write_text("\n".join(outcome.log) + "\n", encoding="utf-8")
    names = outcome.io_names or io
    if names is None:
        raise ConfigError(f"{builder} did not report the engine's tensor names")
    meta = EngineMetadata(
        tensorrt_version=outcome.tensorrt_version,
        gpu_name=gpu.name if gpu else "",
        compute_capability=gpu.compute_capability if gpu else "",
        precision=precision.value,
        input_name=names[0],
        output_name=names[1],
        chw=chw,
        batch=batch.to_dict() if batch else None,
        source=source,
        builder=builder,
        target=target.name,
        flags=outcome.flags,
        dla_core=dla_core,
        engine_sha256=sha256_file(outcome.engine),
        layer_report=layer_report,
    )
    write_sidecar(outcome.engine, meta)
    return run.add_artifact(
        name, kind="engine", path=outcome.engine, stage=STAGE, precision=precision.value, details=meta.to_dict()
    )
