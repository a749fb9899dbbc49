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
from edge_tl.compile.trtexec_flags import BatchRange, SourceKind
from edge_tl.errors import ConfigError, RunError
from edge_tl.runs import atomic_write_bytes
from edge_tl.targets import Precision
from edge_tl.trt.trt_api import ApiPath, TrtApi, make_logger

_MIB = 1 << 20


@dataclass(frozen=True)
class PythonBuild:
    """One Python-API build; paths are absolute."""

    onnx: Path
    engine: Path
    precision: Precision
    source_kind: SourceKind
    input_name: str
    chw: tuple[int, int, int]
    workspace_mib: int
    batch: BatchRange | None
    timing_cache: Path
    calib_cache: Path | None = None
    dla_core: int | None = None


@dataclass(frozen=True)
class BuildOutcome:
    engine: Path
    tensorrt_version: str
    flags: tuple[str, ...]
    log: tuple[str, ...]
    io_names: tuple[str, str] | None = None  # (input, output) when the builder named them itself


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
    logger, log = make_logger(api)
    flags: list[str] = []
    strongly_typed = api.path is ApiPath.TRT11 or (api.path is ApiPath.TRT10 and build.source_kind is SourceKind.QDQ)
    if api.path is ApiPath.TRT11 and build.source_kind is SourceKind.FP32 and build.precision is not Precision.FP32:
        raise ConfigError(
            f"TensorRT {api.version} builds {build.precision.value} only from an ONNX that carries it (Q/DQ or FP16)"
        )

    builder = api.mod("Builder")(logger)
    creation = api.mod("NetworkDefinitionCreationFlag")
    if api.path is ApiPath.TRT8:
        network_flags = 1 << int(api.get(creation, "EXPLICIT_BATCH"))
    elif strongly_typed:
        network_flags = 1 << int(api.get(creation, "STRONGLY_TYPED"))
        flags.append("strongly-typed")
    else:
        network_flags = 0  # TensorRT 10 networks are always explicit-batch
    network = api.get(builder, "create_network")(network_flags)
    parser = api.mod("OnnxParser")(network, logger)
    if not api.get(parser, "parse_from_file")(str(build.onnx)):
        errors = [str(api.get(api.get(parser, "get_error")(i), "desc")()) for i in range(api.get(parser, "num_errors"))]
        raise RunError(f"TensorRT {api.version} cannot parse {str(build.onnx)!r}: {'; '.join(errors) or 'no detail'}")

    config = api.get(builder, "create_builder_config")()
    api.get(config, "set_memory_pool_limit")(api.enum("MemoryPoolType", "WORKSPACE"), build.workspace_mib * _MIB)
    flags.append(f"workspace={build.workspace_mib}MiB")

    if not strongly_typed and build.precision in (Precision.FP16, Precision.INT8):
        api.get(config, "set_flag")(api.enum("BuilderFlag", "FP16"))
        flags.append("fp16")
    if not strongly_typed and build.precision is Precision.INT8:
        api.get(config, "set_flag")(api.enum("BuilderFlag", "INT8"))
        flags.append("int8")
        if build.source_kind is SourceKind.FP32:
            if build.calib_cache is None:
                raise ConfigError("INT8 from the FP32 ONNX needs a calibration cache (recipe tensorrt-int8-cache)")
            api.set(
                config,
                "int8_calibrator",
                _cache_calibrator(api, build.calib_cache, build.batch.opt if build.batch else 1),
            )
            flags.append(f"calib={build.calib_cache.name}")

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
        engine=build.engine, tensorrt_version=str(api.trt.__version__), flags=tuple(flags), log=tuple(log)
    )


def local_tensorrt_version() -> str | None:
    """TensorRT's version if its Python package imports here, else ``None``."""
    try:
        import tensorrt
    except Exception:  # noqa: BLE001 - any failure to import means "not usable here"
        return None
    return str(tensorrt.__version__)
