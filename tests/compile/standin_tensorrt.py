"""STAND-IN for TensorRT's Python package (``import tensorrt``), for the builder tests on a machine without it.

It is not TensorRT. It has, per release path, exactly the names and enum values of that release that
edge-tl's builder touches, and records what the builder asked for:

* ``NetworkDefinitionCreationFlag``: 8.x ``EXPLICIT_BATCH = 0`` (no ``STRONGLY_TYPED``); 10.x
  ``EXPLICIT_BATCH = 0`` (deprecated), ``STRONGLY_TYPED = 1``; 11.x ``STRONGLY_TYPED = 0`` (deprecated:
  always strongly typed) and no ``EXPLICIT_BATCH`` (``include/NvInfer.h`` of release/8.6, 10.3, 11.0);
* ``BuilderFlag``: ``FP16``/``INT8`` on 8.x and 10.x; gone from 11.0's enum (release/11.0 NvInfer.h);
  calibrators gone from 11.x too (the bindings wheels, see test_trt_bindings_conformance.py);
* the ``IEngineInspector`` JSON of the "built" engine is what the stand-in trtexec writes for the same
  ONNX and flags (tests/deploy/standin_trtexec.py ``layer_info``), so both builders are judged alike.
"""

from __future__ import annotations

import importlib.util
import json
from enum import IntEnum
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

_STANDIN_TRTEXEC = Path(__file__).parent.parent / "deploy" / "standin_trtexec.py"


def _trtexec() -> ModuleType:
    spec = importlib.util.spec_from_file_location("standin_trtexec", _STANDIN_TRTEXEC)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def make_tensorrt(version: str) -> ModuleType:
    """A ``tensorrt`` module of release ``version`` ("8.6.1", "10.3.0", "11.4.0")."""
    major = int(version.split(".")[0])
    minor = int(version.split(".")[1])
    trt = ModuleType("tensorrt")
    trt.__version__ = version
    record: dict[str, Any] = {"network_flags": None, "builder_flags": [], "config": {}}
    trt.record = record  # what the builder asked for (not a TensorRT name)

    if major == 8:
        creation = IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1})
    elif major == 10:
        creation = IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    else:
        creation = IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1})
    trt.NetworkDefinitionCreationFlag = creation
    flags = {"DEBUG": 2, "GPU_FALLBACK": 3}
    if major < 11:
        flags.update({"FP16": 0, "INT8": 1})
    trt.BuilderFlag = IntEnum("BuilderFlag", flags)
    trt.MemoryPoolType = IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.DeviceType = IntEnum("DeviceType", {"GPU": 0, "DLA": 1})
    trt.ProfilingVerbosity = IntEnum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
    trt.LayerInformationFormat = IntEnum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})

    class ILogger:
        Severity = IntEnum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4})

        def __init__(self) -> None:
            pass

    trt.ILogger = ILogger

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.onnx: str | None = None

    class Parser:
        num_errors = 0

        def __init__(self, network: Network, logger: Any) -> None:
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            self.network.onnx = path
            return True

    class Config:
        def __init__(self) -> None:
            self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
            self.default_device_type = trt.DeviceType.GPU
            self.DLA_core = -1

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            record["config"]["workspace"] = size

        def set_flag(self, flag: Any) -> None:
            record["builder_flags"].append(flag.name)

        def add_optimization_profile(self, profile: Any) -> int:
            record["config"]["profile"] = profile.shapes
            return 0

        def create_timing_cache(self, data: bytes) -> Any:
            return SimpleNamespace(serialize=lambda: b"timing")

        def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
            return True

        def get_timing_cache(self) -> Any:
            return SimpleNamespace(serialize=lambda: b"timing")

    class Builder:
        num_DLA_cores = 2

        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> Network:
            record["network_flags"] = flags
            return Network(flags)

        def create_builder_config(self) -> Config:
            config = Config()
            record["config_object"] = config
            return config

        def create_optimization_profile(self) -> Any:
            profile = SimpleNamespace(shapes=None)
            profile.set_shape = lambda name, low, opt, high: setattr(profile, "shapes", (name, low, opt, high))
            return profile

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            strongly = major >= 11 or (major == 10 and bool(network.flags & (1 << int(creation["STRONGLY_TYPED"]))))
            opts: dict[str, str] = {}
            if strongly:
                opts["stronglyTyped"] = ""
            for name in record["builder_flags"]:
                if name in ("FP16", "INT8"):
                    opts[name.lower()] = ""
            if getattr(config, "int8_calibrator", None) is not None:
                opts["calib"] = "cache"
            if "profile" in record["config"]:
                name, _, opt, _ = record["config"]["profile"]
                opts["optShapes"] = f"{name}:{'x'.join(str(d) for d in opt)}"
            if config.default_device_type == trt.DeviceType.DLA:
                opts["useDLACore"] = str(config.DLA_core)
            standin = _trtexec()
            info = standin.layer_info(str(network.onnx), release=(major, minor), opts=opts)
            if "useDLACore" in opts:
                # The builder itself logs where the layers run, at info level (trtexec shows these lines as [TRT]).
                for line in standin.dla_log_lines(info):
                    self.logger.log(ILogger.Severity.INFO, line.removeprefix("[I] [TRT] "))
            if config.profiling_verbosity != trt.ProfilingVerbosity.DETAILED:
                info = json.dumps({"Layers": [x["Name"] for x in json.loads(info)["Layers"]]})
            return json.dumps({"standin_engine": info}).encode()

    trt.Builder = Builder
    trt.OnnxParser = Parser

    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Any:
            info = json.loads(bytes(data).decode())["standin_engine"]
            inspector = SimpleNamespace(get_engine_information=lambda fmt: info)
            return SimpleNamespace(create_engine_inspector=lambda: inspector)

    trt.Runtime = Runtime
    if major < 11:

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                pass

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    return trt
