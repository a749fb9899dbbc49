"""The TensorRT Python names edge-tl uses, per code path, in one table.

The builder (:mod:`edge_tl.compile.trt_builder`) and the runner
(:mod:`edge_tl.runtime.tensorrt_runner`) reach TensorRT only through
:class:`TrtApi`, which refuses a name its code path does not declare here. A test
reads the real pybind11 module of each release's bindings wheel
(``tensorrt-bindings`` 8.6.1, ``tensorrt-cu12-bindings`` 10.3.0,
``tensorrt-cu13-bindings`` 11.4) and checks that every declared name is in it, so
code written against the documentation is also checked against the binaries.

Code paths:

* ``trt8`` (8.5, 8.6: JetPack 5 and 6.0): explicit-batch network flag, builder
  precision flags, entropy calibrator from a cache file.
* ``trt10`` (10.x: JetPack 6.1/6.2, desktops): no explicit-batch flag (always
  explicit), strong typing available, calibrator still present (deprecated
  since 10.1).
* ``trt11`` (11.x): no FP16/INT8 builder flags and no calibrators; every network
  strongly typed.
"""

from __future__ import annotations

from enum import Enum
from types import ModuleType
from typing import Any

from edge_tl.errors import ConfigError
from edge_tl.targets import TrtVersion


class ApiPath(str, Enum):
    TRT8 = "trt8"
    TRT10 = "trt10"
    TRT11 = "trt11"


def api_path(version: TrtVersion) -> ApiPath:
    if version.major == 8 and version.minor >= 5:
        return ApiPath.TRT8
    if version.major == 10:
        return ApiPath.TRT10
    if version.major == 11:
        return ApiPath.TRT11
    raise ConfigError(
        f"the TensorRT Python path supports 8.5/8.6, 10.x and 11.x; this is TensorRT {version}. "
        "Use the on-device build plan (trtexec) instead."
    )


# Names used on every path: ONNX parsing, memory pool, profile, timing cache, DLA,
# serialization, and the name-based I/O API of the runner (8.5+).
_COMMON = frozenset(
    {
        # module level
        "Builder",
        "OnnxParser",
        "Runtime",
        "ILogger",
        "MemoryPoolType",
        "BuilderFlag",
        "DeviceType",
        "TensorIOMode",
        "DataType",
        "NetworkDefinitionCreationFlag",
        "Severity",
        # enum members
        "WORKSPACE",
        "GPU_FALLBACK",
        "DLA",
        "INPUT",
        "FLOAT",
        "HALF",
        "INT8",
        "VERBOSE",
        "INFO",
        "WARNING",
        "ERROR",
        "INTERNAL_ERROR",
        # builder / network / parser / config
        "create_network",
        "create_builder_config",
        "create_optimization_profile",
        "add_optimization_profile",
        "build_serialized_network",
        "num_DLA_cores",
        "parse_from_file",
        "num_errors",
        "get_error",
        "desc",
        "set_memory_pool_limit",
        "set_flag",
        "set_shape",
        "default_device_type",
        "DLA_core",
        "create_timing_cache",
        "set_timing_cache",
        "get_timing_cache",
        "serialize",
        # runtime / engine / context
        "deserialize_cuda_engine",
        "create_execution_context",
        "num_io_tensors",
        "get_tensor_name",
        "get_tensor_mode",
        "get_tensor_dtype",
        "get_tensor_shape",
        "set_input_shape",
        "set_tensor_address",
        "execute_async_v3",
        # the engine's per-layer report (IEngineInspector; ProfilingVerbosity::kDETAILED names precisions)
        "ProfilingVerbosity",
        "DETAILED",
        "profiling_verbosity",
        "create_engine_inspector",
        "get_engine_information",
        "LayerInformationFormat",
        "JSON",
        # methods of ours that TensorRT calls (logger, calibrator): their names must match the base classes
        "log",
    }
)

# Per-path additions (and, by their absence, what a path must not touch).
_PRECISION_FLAGS = frozenset({"FP16"})  # BuilderFlag.FP16 (INT8 is shared with DataType.INT8 above)
_CALIBRATOR = frozenset(
    {
        "IInt8EntropyCalibrator2",
        "int8_calibrator",
        "get_batch",
        "get_batch_size",
        "read_calibration_cache",
        "write_calibration_cache",
    }
)

TRT_NAMES: dict[ApiPath, frozenset[str]] = {
    ApiPath.TRT8: _COMMON | _PRECISION_FLAGS | _CALIBRATOR | {"EXPLICIT_BATCH"},
    ApiPath.TRT10: _COMMON | _PRECISION_FLAGS | _CALIBRATOR | {"STRONGLY_TYPED"},
    ApiPath.TRT11: _COMMON | {"STRONGLY_TYPED"},
}

# Names a path must NOT find in its release: checked by the conformance test so
# that the table's split between paths stays true (e.g. calibrators gone in 11).
TRT_ABSENT: dict[ApiPath, frozenset[str]] = {
    ApiPath.TRT8: frozenset({"STRONGLY_TYPED"}),
    ApiPath.TRT10: frozenset(),
    ApiPath.TRT11: frozenset({"int8_calibrator", "IInt8EntropyCalibrator2", "EXPLICIT_BATCH", "FP16"}),
}


class TrtApi:
    """Access to a TensorRT module restricted to the names its code path declares."""

    def __init__(self, trt: ModuleType, version: TrtVersion | None = None) -> None:
        self.trt = trt
        self.version = version or TrtVersion.parse(trt.__version__)
        self.path = api_path(self.version)
        self.names = TRT_NAMES[self.path]

    def _check(self, name: str) -> None:
        if name not in self.names:
            # A programming error, not a user error: the table and the code disagree.
            raise RuntimeError(
                f"edge-tl uses TensorRT attribute {name!r} on path {self.path.value} "
                "without declaring it in trt_api.TRT_NAMES"
            )

    def get(self, obj: Any, name: str) -> Any:
        self._check(name)
        return getattr(obj, name)

    def set(self, obj: Any, name: str, value: Any) -> None:
        self._check(name)
        setattr(obj, name, value)

    def mod(self, name: str) -> Any:
        """A module-level class or enum, e.g. ``api.mod("BuilderFlag")``."""
        return self.get(self.trt, name)

    def enum(self, cls: str, member: str) -> Any:
        return self.get(self.mod(cls), member)


def make_logger(api: TrtApi) -> tuple[Any, list[str]]:
    """A TensorRT logger that keeps every message (they go into the run's build log)."""
    lines: list[str] = []
    severity = api.get(api.mod("ILogger"), "Severity")
    names = {}
    for label in ("VERBOSE", "INFO", "WARNING", "ERROR", "INTERNAL_ERROR"):
        names[api.get(severity, label)] = label

    base = api.mod("ILogger")

    class CapturingLogger(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)

        def log(self, sev: Any, msg: str) -> None:
            lines.append(f"[{names.get(sev, str(sev))}] {msg}")

    return CapturingLogger(), lines
