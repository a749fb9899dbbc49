"""Build an engine with TensorRT's Python API (when TensorRT and the target GPU are here).

Thin by design: every decision (source ONNX, precision, shapes, workspace, DLA) was
made by :func:`edge_tl.compile.plan.make_plan`; this module only carries it out
with the code path of the TensorRT it finds (see :mod:`edge_tl.trt.trt_api`).
All TensorRT names go through :class:`~edge_tl.trt.trt_api.TrtApi`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_tl._lazy import lazy_import
from edge_tl.compile.plan import BuildPlan, check_builder_release
from edge_tl.compile.trtexec_flags import BatchRange, PrecisionDecision
from edge_tl.errors import ConfigError, RunError
from edge_tl.runs import Run, atomic_write_bytes
from edge_tl.targets import Precision, TrtVersion
from edge_tl.trt.trt_api import ApiPath, TrtApi, make_logger

_MIB = 1 << 20


@dataclass(frozen=True)
class PythonBuild:
    """One Python-API build; paths are absolute. Every field is the plan's (see :meth:`from_plan`)."""

    onnx: Path
    engine: Path
    precision: Precision
    decision: PrecisionDecision
    release: TrtVersion  # the TensorRT the plan was made for; another one here is refused
    input_name: str
    chw: tuple[int, int, int]
    workspace_mib: int
    batch: BatchRange | None
    timing_cache: Path
    calib_cache: Path | None = None
    dla_core: int | None = None
    target: str = "TARGET"
    run_root: str = "RUN"

    @classmethod
    def from_plan(cls, run: Run, plan: BuildPlan) -> "PythonBuild":
        spec = plan.spec
        return cls(
            onnx=run.path(spec.onnx),
            engine=run.path(spec.engine),
            precision=plan.precision,
            decision=plan.decision,
            release=plan.release.version,
            input_name=spec.input_name,
            chw=spec.chw,
            workspace_mib=spec.workspace_mib,
            batch=spec.batch,
            timing_cache=run.path(spec.timing_cache or f"{plan.directory}/timing.cache"),
            calib_cache=run.path(spec.calib_cache) if spec.calib_cache else None,
            dla_core=spec.dla_core,
            target=plan.target.name,
            run_root=str(run.root),
        )


@dataclass(frozen=True)
class BuildOutcome:
    engine: Path
    tensorrt_version: str
    flags: tuple[str, ...]
    log: tuple[str, ...]
    io_names: tuple[str, str] | None = None  # (input, output) when the builder named them itself
    layer_info: str | None = None  # IEngineInspector's JSON of the engine (None: torch-tensorrt builds)
    network_flags: int = 0  # what create_network was given (a bit mask of NetworkDefinitionCreationFlag)


def _cache_calibrator(api: TrtApi, cache: Path, batch_size: int) -> Any:
    """An entropy calibrator that only replays a calibration cache (no data needed on the device)."""
    base = api.mod("IInt8EntropyCalibrator2")
    data = cache.read_bytes()

    class CacheCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: Any) -> None:
            # No batches: TensorRT then takes every scale from read_calibration_cache.
            return None

        def read_calibration_cache(self) -> bytes:
            return data

        def write_calibration_cache(self, cache_bytes: Any) -> None:
            return None

    return CacheCalibrator()


def build_engine(build: PythonBuild, *, api: TrtApi | None = None) -> BuildOutcome:
    """Build and serialize an engine; raises with the builder's log when TensorRT refuses."""
    if api is None:
        api = TrtApi(lazy_import("tensorrt", purpose="building a TensorRT engine"))
    # The plan's release and the one here must be the same (one rule with build_engine.sh's trtexec check).
    check_builder_release(build.release, str(api.trt.__version__), target=build.target, run=build.run_root)
    logger, log = make_logger(api)
    flags: list[str] = []
    decision = build.decision

    builder = api.mod("Builder")(logger)
    creation = api.mod("NetworkDefinitionCreationFlag")
    network_flags = 0  # TensorRT 10+ networks are always explicit-batch
    if api.path is ApiPath.TRT8:
        network_flags |= 1 << int(api.get(creation, "EXPLICIT_BATCH"))
    if decision.strongly_typed:
        network_flags |= 1 << int(api.get(creation, "STRONGLY_TYPED"))
        flags.append("strongly-typed")
    network = api.get(builder, "create_network")(network_flags)
    parser = api.mod("OnnxParser")(network, logger)
    if not api.get(parser, "parse_from_file")(str(build.onnx)):
        errors = [str(api.get(api.get(parser, "get_error")(i), "desc")()) for i in range(api.get(parser, "num_errors"))]
        raise RunError(f"TensorRT {api.version} cannot parse {str(build.onnx)!r}: {'; '.join(errors) or 'no detail'}")

    config = api.get(builder, "create_builder_config")()
    api.get(config, "set_memory_pool_limit")(api.enum("MemoryPoolType", "WORKSPACE"), build.workspace_mib * _MIB)
    flags.append(f"workspace={build.workspace_mib}MiB")

    for name in decision.builder_flags:
        api.get(config, "set_flag")(api.enum("BuilderFlag", name))
        flags.append(name.lower())
    if decision.calib is not None:
        if build.calib_cache is None:
            raise ConfigError("the plan names a calibration cache but the build was given none; re-run edge-tl compile")
        api.set(
            config, "int8_calibrator", _cache_calibrator(api, build.calib_cache, build.batch.opt if build.batch else 1)
        )
        flags.append(f"calib={build.calib_cache.name}")
    # Detailed verbosity makes the engine say each layer's precision and device (IEngineInspector below).
    api.set(config, "profiling_verbosity", api.enum("ProfilingVerbosity", "DETAILED"))

    if build.batch is not None:
        profile = api.get(builder, "create_optimization_profile")()
        c, h, w = build.chw
        api.get(profile, "set_shape")(
            build.input_name, (build.batch.min, c, h, w), (build.batch.opt, c, h, w), (build.batch.max, c, h, w)
        )
        api.get(config, "add_optimization_profile")(profile)
        flags.append(f"batch={build.batch.min},{build.batch.opt},{build.batch.max}")

    if build.dla_core is not None:
        available = int(api.get(builder, "num_DLA_cores"))
        if build.dla_core >= available:
            raise ConfigError(
                f"--dla-core {build.dla_core} asked but this device reports {available} DLA core(s) "
                "(builder.num_DLA_cores); use --no-dla or a lower core"
            )
        api.set(config, "default_device_type", api.enum("DeviceType", "DLA"))
        api.set(config, "DLA_core", build.dla_core)
        api.get(config, "set_flag")(api.enum("BuilderFlag", "GPU_FALLBACK"))
        flags += [f"dla={build.dla_core}", "gpu-fallback"]

    previous = build.timing_cache.read_bytes() if build.timing_cache.is_file() else b""
    cache = api.get(config, "create_timing_cache")(previous)
    api.get(config, "set_timing_cache")(cache, False)

    serialized = api.get(builder, "build_serialized_network")(network, config)
    if serialized is None:
        tail = "\n".join(log[-20:])
        raise RunError(f"TensorRT {api.version} could not build {str(build.onnx)!r}; builder log tail:\n{tail}")
    atomic_write_bytes(build.engine, bytes(memoryview(serialized)))
    atomic_write_bytes(
        build.timing_cache, bytes(memoryview(api.get(api.get(config, "get_timing_cache")(), "serialize")()))
    )
    return BuildOutcome(
        engine=build.engine,
        tensorrt_version=str(api.trt.__version__),
        flags=tuple(flags),
        log=tuple(log),
        layer_info=engine_layer_info(api, logger, serialized),
        network_flags=network_flags,
    )


def engine_layer_info(api: TrtApi, logger: Any, serialized: Any) -> str:
    """The engine's own per-layer report: ``IEngineInspector.get_engine_information`` as JSON, the same
    text trtexec writes with ``--exportLayerInfo`` (``samples/common/sampleReporting.cpp``, release/10.3)."""
    engine = api.get(api.mod("Runtime")(logger), "deserialize_cuda_engine")(serialized)
    if engine is None:
        raise RunError(f"TensorRT {api.version} could not load the engine it just built")
    inspector = api.get(engine, "create_engine_inspector")()
    return str(api.get(inspector, "get_engine_information")(api.enum("LayerInformationFormat", "JSON")))


def local_tensorrt_version() -> str | None:
    """TensorRT's version if its Python package imports here, else ``None``."""
    try:
        import tensorrt
    except Exception:  # noqa: BLE001 - any failure to import means "not usable here"
        return None
    return str(tensorrt.__version__)
