"""Deciding what to build: the source ONNX, the flags, and the on-device build plan.

Pure logic over the run's manifest and the target profile; nothing here needs
TensorRT. The plan is written into the run as ``compile/<target>-<precision>/``:

``build_engine.sh``
    run on the device from anywhere; it works from the run's root, checks the
    source ONNX's sha256, runs trtexec, refuses an engine built by another
    TensorRT than planned, and writes the engine's sidecar from trtexec's log.
``build_plan.json``
    the same decisions as data (argv lists, source artifact, release), for deploy.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from edge_tl import __version__, artifacts
from edge_tl.compile.dla import DLA_LAYERS_SOURCE
from edge_tl.compile.trtexec_flags import (
    BatchRange,
    BuildSpec,
    PrecisionDecision,
    SourceKind,
    banner_code,
    build_command,
    check_version,
    precision_decision,
    shell_join,
    timing_flags,
)
from edge_tl.errors import ConfigError, RunError
from edge_tl.input_contract import Layout, PixelType, contract_of
from edge_tl.runs import Artifact, Run, atomic_write_json, atomic_write_text
from edge_tl.targets import CalibrationRecipe, Precision, Target, TrtRelease, TrtVersion, target_names
from edge_tl.trt.sidecar import SIDECAR_FORMAT, SIDECAR_VERSION, sidecar_path

STAGE = "compile"
ENGINE_NAME = "model.engine"
SCRIPT_NAME = "build_engine.sh"
PLAN_NAME = "build_plan.json"
LOG_NAME = "build.log"
TIMES_NAME = "build_times.json"
LAYERS_NAME = "layers.json"
DEFAULT_BATCH = BatchRange(1, 1, 8)


def plan_dir(target: Target, precision: Precision) -> str:
    """Run-relative folder of one target+precision's engine and plan."""
    return f"compile/{target.name}-{precision.value}"


def engine_artifact_name(target: Target, precision: Precision) -> str:
    return artifacts.engine(target.name, precision.value)


def plan_artifact_name(target: Target, precision: Precision) -> str:
    return artifacts.build_plan(target.name, precision.value)


def timing_cache_path(target: Target, release: TrtRelease) -> str:
    # One cache per target and TensorRT release: tactics timed on one GPU model and
    # TensorRT version are reused by every later build of any precision there.
    return f"compile/timing-{target.name}-trt{release.version}.cache"


@dataclass(frozen=True)
class SourceChoice:
    """The ONNX (and calibration cache) an engine is built from."""

    onnx: Artifact
    kind: SourceKind
    recipe: CalibrationRecipe | None = None
    calib_cache: Artifact | None = None


def _require(run: Run, name: str, *, how: str) -> Artifact:
    if not run.has_artifact(name):
        have = ", ".join(a.name for a in run.artifacts(kind="onnx")) or "none"
        raise RunError(
            f"run {str(run.root)!r} has no {name!r} artifact (ONNX artifacts it has: {have}). First run: {how}"
        )
    return run.artifact(name)


def choose_source(
    run: Run, target: Target, precision: Precision, release: TrtRelease, *, dla: bool = False
) -> SourceChoice:
    """Pick the run's artifact for ``precision`` on ``release`` (see ``trtexec_flags`` for the table)."""
    root = str(run.root)
    if precision is Precision.FP32:
        return SourceChoice(_require(run, "onnx-fp32", how=f"edge-tl export {root} --precision fp32"), SourceKind.FP32)
    if precision is Precision.FP16:
        if release.version.major >= 11:
            onnx = _require(run, "onnx-fp16", how=f"edge-tl export {root} --precision fp16")
            return SourceChoice(onnx, SourceKind.FP16)
        return SourceChoice(_require(run, "onnx-fp32", how=f"edge-tl export {root} --precision fp32"), SourceKind.FP32)
    if precision is Precision.INT8:
        recipe = target.calibration_recipe_for(precision, dla=dla, tensorrt=release.version)
        if recipe is None:
            raise ConfigError(f"target {target.name!r} names no calibration recipe for INT8")
        quantize = f"edge-tl quantize {root} --recipe {recipe.value}"
        if recipe is CalibrationRecipe.TENSORRT_CACHE:
            # The cache header must name this release; quantize writes it from the target.
            shipped = target.name in target_names()
            quantize += f" --target {target.name if shipped else target.source} --tensorrt {release.version}"
        if recipe is CalibrationRecipe.TENSORRT_CACHE:
            onnx = _require(run, "onnx-fp32", how=f"edge-tl export {root} --precision fp32")
            cache = _require(run, f"calib-cache-{recipe.value}", how=quantize)
            _check_cache_header(run, cache, release, how=quantize)
            return SourceChoice(onnx, SourceKind.FP32, recipe=recipe, calib_cache=cache)
        if recipe is CalibrationRecipe.TENSORRT_QDQ:
            # Strongly typed (11.x): the float part must be FP16 in the graph itself, or it runs FP32.
            variant = "-fp16" if release.version.major >= 11 else ""
            return SourceChoice(
                _require(run, f"onnx-int8-{recipe.value}{variant}", how=quantize), SourceKind.QDQ, recipe=recipe
            )
        raise ConfigError(f"recipe {recipe.value!r} makes a model for ONNX Runtime, not for TensorRT")
    raise ConfigError(f"edge-tl compiles fp32, fp16 or int8 engines; {precision.value} is not supported yet")


def _check_cache_header(run: Run, cache: Artifact, release: TrtRelease, *, how: str) -> None:
    """A calibration cache names the exact TensorRT release that wrote it (``TRT-8502-EntropyCalibration2``
    is 8.5.2: ``getInferLibVersion()``); the plan accepts only its own release's header."""
    path = run.artifact_path(cache.name)
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        header = fh.readline().strip()
    match = re.fullmatch(r"TRT-(\d+)-\w+", header)
    if match is None:
        raise RunError(
            f"{str(path)!r} does not start with a TensorRT calibration-cache header (got {header[:40]!r}); "
            f"re-run: {how}"
        )
    code = int(match.group(1))
    if code != release.version.library_version:
        written = TrtVersion.from_library_version(code)
        raise RunError(
            f"{cache.name!r} was written for TensorRT {written} ({header}) but the plan is for TensorRT "
            f"{release.version} (header TRT-{release.version.library_version}-...): re-run {how}"
        )


def same_release(planned: TrtVersion, found: TrtVersion) -> bool:
    """An engine runs only on the TensorRT that built it, and a plan (its flags, its calibration cache header)
    is made for one release: builder and plan must agree on major, minor and patch (a build number may differ)."""
    return (planned.major, planned.minor, planned.patch) == (found.major, found.minor, found.patch)


def release_mismatch(planned: str, found: str, *, target: str, run: str = "RUN") -> str:
    """The one message of both builders (the Python builder and build_engine.sh's trtexec) for another release."""
    return (
        f"this plan is for TensorRT {planned} but the builder here is TensorRT {found}: build with TensorRT "
        f"{planned}, or re-plan for this one with: edge-tl compile {run} --target {target} --tensorrt {found}"
    )


def check_builder_release(planned: TrtVersion, found: str, *, target: str, run: str = "RUN") -> None:
    if not same_release(planned, TrtVersion.parse(found)):
        raise ConfigError(release_mismatch(str(planned), found, target=target, run=run))


@dataclass(frozen=True)
class CompileRequest:
    """What the user asked for (``edge-tl compile`` options)."""

    precision: Precision
    dla: bool = False
    dla_core: int = 0
    workspace_mib: int | None = None
    batch: BatchRange | None = None
    tensorrt: str | None = None  # a release listed by the target; default: the target's default
    version_compatible: bool = False  # an engine later TensorRT releases also run (8.6+)
    builder_optimization_level: int | None = None  # 0-5 (8.6+); None: TensorRT's default, 3
    build_only: bool = False  # trtexec builds and exits, timing nothing (deploy times the engine apart)

    def __post_init__(self) -> None:
        if self.dla_core < 0:
            raise ConfigError(f"--dla-core must be >= 0, got {self.dla_core}")
        if self.workspace_mib is not None and self.workspace_mib < 16:
            raise ConfigError(f"--workspace must be at least 16 MiB, got {self.workspace_mib}")


@dataclass(frozen=True)
class BuildPlan:
    target: Target
    release: TrtRelease
    precision: Precision
    source: SourceChoice
    spec: BuildSpec
    directory: str  # run-relative
    output_name: str
    dla_gpu_fallback: dict[str, int] | None = None  # DLA builds: operator types DLA cannot take
    dla_disputed: dict[str, int] | None = None  # DLA builds: operator types the sources disagree on
    dla_reasons: dict[str, str] | None = None  # op_type -> the sources behind its verdict

    @property
    def argv(self) -> list[str]:
        return build_command(self.spec, self.release.version)

    @property
    def decision(self) -> PrecisionDecision:
        """Strong/weak typing, precision flags and calibration cache: what trtexec's flags say, for every builder."""
        return precision_decision(
            self.release.version, self.precision, self.spec.source_kind, calib=self.spec.calib_cache
        )

    @property
    def timing(self) -> tuple[list[str], dict[str, bool]]:
        """The trtexec flags deploy and bench time this engine with, and what its latencies then mean."""
        return timing_flags(self.release.version, cuda_graph=True, dla=self.spec.dla_core is not None)

    def flags(self) -> list[str]:
        return self.argv[1:]

    def to_dict(self) -> dict[str, Any]:
        return {
            "edge_tl_version": __version__,
            "target": self.target.name,
            "tensorrt": self.release.to_dict(),
            "precision": self.precision.value,
            "source": {
                "artifact": self.source.onnx.name,
                "path": self.source.onnx.path,
                "sha256": self.source.onnx.sha256,
                "kind": self.source.kind.value,
                "recipe": self.source.recipe.value if self.source.recipe else None,
                "calib_cache": (
                    {
                        "artifact": self.source.calib_cache.name,
                        "path": self.source.calib_cache.path,
                        "sha256": self.source.calib_cache.sha256,
                    }
                    if self.source.calib_cache
                    else None
                ),
            },
            "engine": self.spec.engine,
            "sidecar": str(sidecar_path(self.spec.engine).as_posix()),
            "input_name": self.spec.input_name,
            "output_name": self.output_name,
            "chw": list(self.spec.chw),
            "batch": self.spec.batch.to_dict() if self.spec.batch else None,
            "workspace_mib": self.spec.workspace_mib,
            "dla_core": self.spec.dla_core,
            "timing_cache": self.spec.timing_cache,
            "build": self.decision.to_dict(),
            "build_options": {
                "version_compatible": self.spec.version_compatible,
                "builder_optimization_level": self.spec.builder_optimization_level,
                "build_only": self.spec.build_only,
            },
            "trtexec_argv": self.argv,
            "timing": {"flags": self.timing[0], **self.timing[1]},
            "dla": None
            if self.spec.dla_core is None
            else {
                "core": self.spec.dla_core,
                "gpu_fallback_ops": self.dla_gpu_fallback,
                # the sources disagree on these; the engine's own layer report says where they ran
                "disputed_ops": self.dla_disputed,
                "why": self.dla_reasons,
                "rules": "static shape (min = opt = max); FP16/INT8 only",
                "source": DLA_LAYERS_SOURCE,
            },
            "working_directory": "the run directory",
        }


def _onnx_io(onnx: Artifact) -> tuple[str, str, tuple[int, int, int], bool]:
    details = onnx.details
    try:
        shape = list(details["input_shape"])
        input_name = str(details["input_name"])
        output_name = str(details.get("output_name", "logits"))
    except KeyError as exc:
        raise RunError(
            f"artifact {onnx.name!r} lacks details[{exc}] (input name/shape); re-run the stage that made it"
        ) from exc
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise RunError(f"artifact {onnx.name!r} has input shape {shape}; edge-tl builds NCHW images of a fixed size")
    dynamic = not isinstance(shape[0], int)
    return input_name, output_name, (shape[1], shape[2], shape[3]), dynamic


def make_plan(run: Run, target: Target, request: CompileRequest) -> BuildPlan:
    """Every decision of an engine build, checked against the target and the run."""
    precision = target.check_precision(request.precision)
    target.check_dla(request.dla)
    release = target.release(request.tensorrt)
    check_version(release.version)
    if request.dla and request.dla_core >= (target.gpu.dla_cores if target.gpu else 0):
        raise ConfigError(
            f"--dla-core {request.dla_core} does not exist on {target.name!r}: it has "
            f"{target.gpu.dla_cores if target.gpu else 0} DLA core(s), numbered from 0"
        )
    if request.dla:
        target.check_dla_release(release)
    contract = contract_of(run)
    if contract.dtype is not PixelType.FLOAT32 or contract.layout is not Layout.NCHW:
        # The engine's runners and its build shapes take the canonical NCHW float32 batch.
        raise ConfigError(
            f"run {str(run.root)!r} takes {contract.describe()} images; edge-tl builds TensorRT engines for float32 "
            "NCHW inputs: export the model with a float32 NCHW input (its normalisation may stay inside: import it "
            "with --input-range) and import that"
        )
    source = choose_source(run, target, precision, release, dla=request.dla)
    opset = source.onnx.details.get("opset")
    max_opset = target.max_opset_for(release.version)
    if isinstance(opset, int) and opset > max_opset:
        raise RunError(
            f"{source.onnx.name!r} is opset {opset} but {target.name!r} (TensorRT {release.version}) parses up to "
            f"opset {max_opset}; re-export with `edge-tl export {run.root} --opset {max_opset}`"
            + (" (an imported ONNX is converted by ONNX's version converter)" if source.onnx.stage == "import" else "")
            + (" and quantize again" if source.kind is SourceKind.QDQ else "")
        )
    input_name, output_name, chw, dynamic = _onnx_io(source.onnx)
    if dynamic and request.dla:
        # DLA has no dynamic shapes and runs only the build shape (TensorRT developer guide,
        # "DLA Supported Layers and Restrictions"): a range would silently put every layer on the GPU.
        wanted = request.batch or BatchRange(1, 1, 1)
        if not wanted.static:
            raise ConfigError(
                f"DLA has no dynamic shapes (min = opt = max, and the runtime shape is the build shape); "
                f"--batch {wanted.min},{wanted.opt},{wanted.max} is a range: give one batch size, "
                f"e.g. --batch {wanted.opt}"
            )
        batch = wanted
    elif dynamic:
        batch = request.batch or DEFAULT_BATCH
    else:
        fixed = source.onnx.details["input_shape"][0]
        if request.batch is not None and (request.batch.min, request.batch.max) != (fixed, fixed):
            raise ConfigError(
                f"{source.onnx.name!r} has a fixed batch of {fixed}; --batch {request.batch.min},{request.batch.opt},"
                f"{request.batch.max} needs an ONNX exported with --dynamic-batch"
            )
        batch = None
    directory = plan_dir(target, precision)
    spec = BuildSpec(
        onnx=source.onnx.path,
        engine=f"{directory}/{ENGINE_NAME}",
        precision=precision,
        source_kind=source.kind,
        input_name=input_name,
        chw=chw,
        workspace_mib=request.workspace_mib or target.workspace_mib or 1024,
        batch=batch,
        dla_core=request.dla_core if request.dla else None,
        calib_cache=source.calib_cache.path if source.calib_cache else None,
        timing_cache=timing_cache_path(target, release),
        export_times=f"{directory}/{TIMES_NAME}",
        export_layer_info=f"{directory}/{LAYERS_NAME}",
        version_compatible=request.version_compatible,
        builder_optimization_level=request.builder_optimization_level,
        build_only=request.build_only,
    )
    dla = None
    if request.dla:
        from edge_tl.compile.dla import predict_dla

        dla = predict_dla(run.path(source.onnx.path), tensorrt=release.version)
    plan = BuildPlan(
        target,
        release,
        precision,
        source,
        spec,
        directory,
        output_name,
        dla_gpu_fallback=dla.gpu if dla else None,
        dla_disputed=dla.disputed if dla else None,
        dla_reasons=dla.reasons if dla else None,
    )
    plan.argv  # noqa: B018 - builds the command now so that an impossible flag combination fails before writing
    return plan


def _sidecar_template(plan: BuildPlan) -> dict[str, Any]:
    """The sidecar fields known before the build; the script fills in the GPU and TensorRT version."""
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "precision": plan.precision.value,
        "input_name": plan.spec.input_name,
        "output_name": plan.output_name,
        "chw": list(plan.spec.chw),
        "batch": plan.spec.batch.to_dict() if plan.spec.batch else None,
        "source": {"artifact": plan.source.onnx.name, "path": plan.source.onnx.path, "sha256": plan.source.onnx.sha256},
        "builder": "trtexec",
        "target": plan.target.name,
        "flags": plan.flags(),
        "dla_core": plan.spec.dla_core,
    }


def render_script(plan: BuildPlan) -> str:
    """``build_engine.sh``: every value is shell-quoted; the script runs from the run's root."""
    q = shell_join
    argv = plan.argv
    log = f"{plan.directory}/{LOG_NAME}"
    engine = plan.spec.engine
    expected = banner_code(plan.release.version)
    checks = [f"{plan.source.onnx.sha256}  {plan.source.onnx.path}"]
    if plan.source.calib_cache is not None:
        checks.append(f"{plan.source.calib_cache.sha256}  {plan.source.calib_cache.path}")
    fixed = json.dumps(_sidecar_template(plan), sort_keys=True)
    lines = [
        "#!/usr/bin/env bash",
        f"# Build the {plan.precision.value.upper()} engine for {plan.target.name} with {plan.release.describe()}.",
        f"# Written by edge-tl {__version__}; run it on the device: bash {plan.directory}/{SCRIPT_NAME}",
        "# Set TRTEXEC to use another trtexec binary.",
        "set -euo pipefail",
        'cd "$(dirname "$0")/../.."',
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        'if [ ! -x "$TRTEXEC" ]; then',
        "  echo "
        + q(["trtexec not found: install TensorRT (" + plan.release.describe() + ") or set TRTEXEC=/path/to/trtexec"])
        + " >&2",
        "  exit 2",
        "fi",
        "# The ONNX (and cache) must be the ones this plan was made for.",
        *(f"echo {q([c])} | sha256sum -c --quiet -" for c in checks),
        f"mkdir -p {q([plan.directory])}",
        *_cache_check_lines(plan),
        *_timing_cache_lines(plan),
        f'"$TRTEXEC" {_trtexec_args(argv[1:])} 2>&1 | tee {q([log])}',
        "# An engine only runs on the TensorRT that built it: refuse a different one.",
        f"built=$(sed -n 's/.*\\[TensorRT v\\([0-9]*\\)\\].*/\\1/p' {q([log])} | head -n 1)",
        f'if [ "$built" != {q([expected])} ]; then',
        # The banner number as a release: x1000 up to 9.x, x10000 from 10.0 (NV_TENSORRT_VERSION).
        '  if [ "${built:-0}" -ge 100000 ]; then found="$((built / 10000)).$((built / 100 % 100)).$((built % 100))"; '
        'else found="$((${built:-0} / 1000)).$((${built:-0} / 100 % 10)).$((${built:-0} % 100))"; fi',
        f"  echo {q([release_mismatch(str(plan.release.version), '@FOUND@', target=plan.target.name)])}".replace(
            "@FOUND@", "'\"$found\"'"
        )
        + " >&2",
        f"  rm -f {q([engine])}; exit 3",
        "fi",
        "# Where the layers run: on DLA builds the builder logs one '[DlaLayer] {ForeignNode[first...last]}' line per",
        "# DLA subgraph (one opaque node however many layers it holds) and one '[GpuLayer] ...' line per GPU layer.",
        f"dla_subgraphs=$(grep -c '\\[DlaLayer\\]' {q([log])} || true)",
        f"gpu_layers=$(grep -c '\\[GpuLayer\\]' {q([log])} || true)",
        f"gpu=$(sed -n 's/.*Selected Device: //p' {q([log])} | head -n 1)",
        f"cc=$(sed -n 's/.*Compute Capability: //p' {q([log])} | head -n 1)",
        f"trt=$(sed -n 's/.*TensorRT version: //p' {q([log])} | head -n 1)",
        f'trt="${{trt:-{plan.release.version}}}"',
        f"sha=$(sha256sum {q([engine])} | cut -d ' ' -f 1)",
        f"fixed={q([fixed])}",
        "# Sidecar: the fixed fields plus what only the device knows.",
        'printf \'{"tensorrt_version": "%s", "gpu_name": "%s", "compute_capability": "%s", '
        '"engine_sha256": "%s", "created": "%s", "layers": {"dla_subgraphs": %s, "gpu_layers": %s}, %s\\n\' '
        '"$trt" "$gpu" "$cc" "$sha" "$(date -u +%Y-%m-%dT%H:%M:%S+00:00)" "${dla_subgraphs:-0}" "${gpu_layers:-0}" '
        '"${fixed#\\{}" > '
        f"{q([str(sidecar_path(engine).as_posix())])}",
        f'echo "engine: {engine} (TensorRT $trt, $gpu, sm $cc)"',
        "",
    ]
    return "\n".join(lines)


# Set by deploy to a device folder outside releases/ (each publish replaces a release): the timing cache
# there, one file per target and TensorRT release, is reused by every later build on that device.
TIMING_CACHE_ENV = "EDGE_TL_TIMING_CACHE_DIR"


def _timing_cache_lines(plan: BuildPlan) -> list[str]:
    if plan.spec.timing_cache is None:
        return []
    folder, _, name = plan.spec.timing_cache.rpartition("/")
    return [
        f"# The timing cache: in ${TIMING_CACHE_ENV} when set (deploy keeps it outside releases/), else in the run.",
        f'timing_cache="${{{TIMING_CACHE_ENV}:-{folder or "."}}}"/{shell_join([name])}',
    ]


def _trtexec_args(args: list[str]) -> str:
    """The quoted trtexec arguments, the timing cache's path taken from the script's ``$timing_cache``."""
    return " ".join(
        '"--timingCacheFile=$timing_cache"' if a.startswith("--timingCacheFile=") else shell_join([a]) for a in args
    )


def _cache_check_lines(plan: BuildPlan) -> list[str]:
    """Before ``--calib``: the cache's header must name the device's exact TensorRT, which
    trtexec prints as ``[TensorRT vN]`` before anything else, even for ``--help``
    (``samples/trtexec/trtexec.cpp``: reportTestStart precedes parseHelp, every release)."""
    cache = plan.source.calib_cache
    if cache is None:
        return []
    q = shell_join
    fix = (
        f"edge-tl quantize RUN --recipe {CalibrationRecipe.TENSORRT_CACHE.value} --target {plan.target.name} "
        f"--tensorrt X.Y.Z (X.Y.Z: this device's TensorRT)"
    )
    return [
        "# A calibration cache is read only by the exact TensorRT release named in its header.",
        "device=$(\"$TRTEXEC\" --help 2>&1 | sed -n 's/.*\\[TensorRT v\\([0-9]*\\)\\].*/\\1/p' | head -n 1)",
        f"header=$(head -n 1 {q([cache.path])} | sed -n 's/^TRT-\\([0-9]*\\)-.*/\\1/p')",
        'if [ "$header" != "$device" ]; then',
        f'  echo "the calibration cache {cache.path} is for TensorRT v$header but this trtexec is v$device; '
        f'write the right one with: {fix}" >&2',
        "  exit 4",
        "fi",
    ]


def write_plan(run: Run, plan: BuildPlan) -> Artifact:
    """Write ``build_engine.sh`` and ``build_plan.json`` into the run and record the plan."""
    folder = run.path(plan.directory)
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / SCRIPT_NAME
    atomic_write_text(script, render_script(plan))
    script.chmod(0o755)
    atomic_write_json(folder / PLAN_NAME, plan.to_dict())
    return run.add_artifact(
        plan_artifact_name(plan.target, plan.precision),
        kind="build-plan",
        path=script,
        stage=STAGE,
        precision=plan.precision.value,
        details={
            "target": plan.target.name,
            "tensorrt": str(plan.release.version),
            "jetpack": plan.release.jetpack,
            "plan": f"{plan.directory}/{PLAN_NAME}",
            "engine": plan.spec.engine,
            "source": plan.source.onnx.name,
            "calib_cache": plan.source.calib_cache.name if plan.source.calib_cache else None,
            "trtexec": shell_join(plan.argv),
        },
    )
