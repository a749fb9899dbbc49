"""trtexec command lines, per TensorRT release.

Each flag below is in that release's option list (NVIDIA/TensorRT ``release/X.Y``
``samples/common/sampleOptions.cpp``; the lists are test data in
``tests/compile/trtexec_options/``):

========================  ===========================  ==============================  ==========================
what                      8.0/8.2 (JetPack 4.6.x)      8.4-10.x (JetPack 5, 6, 7.0)    11.x (JetPack 7.2.2+)
========================  ===========================  ==============================  ==========================
workspace                 ``--workspace=N`` (MiB)      ``--memPoolSize=workspace:N``   same as 10.x
FP16                      ``--fp16`` on the FP32 ONNX  ``--fp16`` on the FP32 ONNX     FP16 ONNX + ``--stronglyTyped``
INT8, Q/DQ ONNX           ``--int8 --fp16``            ``--int8 --fp16``               Q/DQ ONNX with an FP16 float
                                                                                       part + ``--stronglyTyped``
INT8, calibration cache   ``--int8 --fp16 --calib=F``  ``--int8 --fp16 --calib=F``     (removed: no calibrators)
========================  ===========================  ==============================  ==========================

``--memPoolSize`` appears in 8.4 (``--workspace`` deprecated there, gone from 10.0's
list); ``--stronglyTyped`` appears in 9.1; 11.0 drops ``--fp16``, ``--int8``, ``--best``
and ``--calib`` (trtexec then fails with "Unknown option"). On 10.x a Q/DQ ONNX is
built weakly typed with ``--int8 --fp16`` so that the layers outside Q/DQ pairs may
run in FP16 (docs/quantization.md says why); 11.x has only strong typing, so the ONNX
itself carries FP16 there.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from enum import Enum

from edge_tl.errors import ConfigError
from edge_tl.targets import Precision, TrtVersion

SUPPORTED_MAJORS = (8, 10, 11)


class SourceKind(str, Enum):
    """What the ONNX given to the builder carries."""

    FP32 = "fp32"  # float32 weights; precision comes from builder flags
    FP16 = "fp16"  # float16 weights (strongly typed builds)
    QDQ = "qdq"  # INT8 Q/DQ nodes (explicit quantization)


@dataclass(frozen=True)
class BatchRange:
    """The optimization profile of a dynamic batch dimension."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ConfigError(f"batch range must satisfy 1 <= min <= opt <= max, got {self.min},{self.opt},{self.max}")

    @classmethod
    def parse(cls, text: str) -> "BatchRange":
        """``"1,4,8"`` (min,opt,max) or ``"4"`` (all three)."""
        parts = [p.strip() for p in str(text).split(",")]
        if len(parts) not in (1, 3) or not all(p.isdigit() for p in parts):
            raise ConfigError(f"--batch {text!r}: give MIN,OPT,MAX (e.g. 1,1,8) or one batch size")
        values = [int(p) for p in parts] * (3 if len(parts) == 1 else 1)
        return cls(*values)

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    @property
    def static(self) -> bool:
        return self.min == self.opt == self.max


@dataclass(frozen=True)
class BuildSpec:
    """Everything a trtexec build command depends on. Paths are written as given."""

    onnx: str
    engine: str
    precision: Precision
    source_kind: SourceKind
    input_name: str
    chw: tuple[int, int, int]
    workspace_mib: int
    batch: BatchRange | None = None  # None: the ONNX has a fixed batch
    dla_core: int | None = None
    calib_cache: str | None = None
    timing_cache: str | None = None
    export_times: str | None = None
    export_layer_info: str | None = None  # the engine's per-layer report (JSON), see build_command
    version_compatible: bool = False
    builder_optimization_level: int | None = None
    build_only: bool = False


def check_version(version: TrtVersion) -> None:
    if version.major not in SUPPORTED_MAJORS:
        raise ConfigError(
            f"TensorRT {version} is not supported: edge-tl writes build flags for TensorRT "
            f"{', '.join(f'{m}.x' for m in SUPPORTED_MAJORS)}"
        )


def _shape(name: str, batch: int, chw: tuple[int, int, int]) -> str:
    return f"{name}:{batch}x{chw[0]}x{chw[1]}x{chw[2]}"


@dataclass(frozen=True)
class PrecisionDecision:
    """How an engine gets its precision: the one decision both builders carry out.

    ``strongly_typed``: every layer takes its type from the graph (network flag ``STRONGLY_TYPED``,
    trtexec ``--stronglyTyped``); then ``fp16``/``int8`` are off, as trtexec turns them off itself
    under ``--stronglyTyped`` (``release/10.3`` ``samples/common/sampleOptions.cpp``, around lines
    1231-1247). Otherwise ``fp16``/``int8`` are the builder flags (``BuilderFlag.FP16``/``INT8``,
    trtexec ``--fp16``/``--int8``) and ``calib`` the calibration cache of implicit INT8.
    """

    strongly_typed: bool = False
    fp16: bool = False
    int8: bool = False
    calib: str | None = None

    def __post_init__(self) -> None:
        if self.strongly_typed and (self.fp16 or self.int8 or self.calib):
            raise ConfigError("a strongly typed build takes its precision from the graph: no --fp16/--int8/--calib")

    @property
    def trtexec_flags(self) -> list[str]:
        if self.strongly_typed:
            return ["--stronglyTyped"]
        flags = (["--int8"] if self.int8 else []) + (["--fp16"] if self.fp16 else [])
        return flags + ([f"--calib={self.calib}"] if self.calib else [])

    @property
    def builder_flags(self) -> tuple[str, ...]:
        """The ``BuilderFlag`` members the Python builder sets (in trtexec's order: INT8, FP16)."""
        return tuple(name for name, on in (("INT8", self.int8), ("FP16", self.fp16)) if on)

    def to_dict(self) -> dict[str, object]:
        return {"strongly_typed": self.strongly_typed, "fp16": self.fp16, "int8": self.int8, "calib": self.calib}


def precision_decision(
    version: TrtVersion, precision: Precision, source: SourceKind, *, calib: str | None
) -> PrecisionDecision:
    """The precision part of a build for ``version``; refuses combinations a version cannot build."""
    check_version(version)
    if precision is Precision.FP32:
        if source is not SourceKind.FP32:
            raise ConfigError(f"an FP32 engine is built from the FP32 ONNX, not a {source.value} one")
        return PrecisionDecision(strongly_typed=version.major >= 11)
    if precision is Precision.FP16:
        if version.major >= 11:
            if source is not SourceKind.FP16:
                raise ConfigError(
                    f"TensorRT {version} has no --fp16 flag: FP16 engines are built strongly typed from the FP16 ONNX "
                    "(onnx-fp16); run `edge-tl export RUN --precision fp16`"
                )
            return PrecisionDecision(strongly_typed=True)
        if source is not SourceKind.FP32:
            raise ConfigError(
                f"TensorRT {version} builds FP16 from the FP32 ONNX with --fp16, not from a {source.value} ONNX"
            )
        return PrecisionDecision(fp16=True)
    if precision is Precision.INT8:
        if source is SourceKind.QDQ:
            if calib is not None:
                raise ConfigError("a Q/DQ ONNX carries its own scales: do not pass a calibration cache with it")
            # 8.x/10.x: weakly typed, so that the layers outside Q/DQ pairs may run FP16 (the FP32 Q/DQ ONNX
            # built strongly typed would run them FP32); 11.x: strongly typed from the FP16-float-part ONNX.
            if version.major >= 11:
                return PrecisionDecision(strongly_typed=True)
            return PrecisionDecision(int8=True, fp16=True)
        if source is SourceKind.FP32:
            if version.major >= 11:
                raise ConfigError(
                    f"TensorRT {version} removed calibrators and --int8: build INT8 from the Q/DQ ONNX "
                    "(recipe tensorrt-int8-qdq)"
                )
            if calib is None:
                # --int8 without --calib uses dummy scales: speed only, never accuracy ("in INT8 mode, random
                # weights are used", NVIDIA/TensorRT release/10.3 samples/trtexec/README.md).
                raise ConfigError("INT8 from the FP32 ONNX needs a calibration cache (recipe tensorrt-int8-cache)")
            return PrecisionDecision(int8=True, fp16=True, calib=calib)
        raise ConfigError("INT8 engines are built from a Q/DQ ONNX or from the FP32 ONNX with a calibration cache")
    raise ConfigError(f"trtexec builds fp32, fp16 or int8 engines; {precision.value} is not supported yet")


def precision_flags(version: TrtVersion, precision: Precision, source: SourceKind, *, calib: str | None) -> list[str]:
    """The precision part of a trtexec build command (see :func:`precision_decision`)."""
    return precision_decision(version, precision, source, calib=calib).trtexec_flags


# The highest builder optimization level ("Valid values include integers from 0 to the maximum
# optimization level, which is currently 5", release/8.6 to release/11.1 sampleOptions.cpp; default 3).
MAX_BUILDER_OPTIMIZATION_LEVEL = 5


def build_option_flags(
    version: TrtVersion, *, version_compatible: bool, builder_optimization_level: int | None, build_only: bool
) -> list[str]:
    """The Jetson build options, one flag each, per release; a release without the flag refuses it.

    ========================  ===================  =====================================================
    option                    releases             trtexec flag (release/X.Y samples/common/sampleOptions.cpp)
    ========================  ===================  =====================================================
    version-compatible        8.6 and later        ``--versionCompatible`` (``--vc`` its synonym)
    builder opt. level 0-5    8.6 and later        ``--builderOptimizationLevel=N``
    build only                8.2 to 8.5           ``--buildOnly``
                              8.6 and later        ``--skipInference`` (8.6 deprecates ``--buildOnly`` for it)
    ========================  ===================  =====================================================
    """
    check_version(version)
    modern = (version.major, version.minor) >= (8, 6)
    flags = []
    if version_compatible:
        if not modern:
            raise ConfigError(
                f"TensorRT {version} cannot build version-compatible engines: --versionCompatible arrives in 8.6 "
                "(NVIDIA/TensorRT release/8.6 samples/common/sampleOptions.cpp); drop --version-compatible or plan "
                "for 8.6 or later"
            )
        flags.append("--versionCompatible")
    if builder_optimization_level is not None:
        if not 0 <= builder_optimization_level <= MAX_BUILDER_OPTIMIZATION_LEVEL:
            raise ConfigError(
                f"--builder-optimization-level must be 0 to {MAX_BUILDER_OPTIMIZATION_LEVEL} (TensorRT's default is 3),"
                f" got {builder_optimization_level}"
            )
        if not modern:
            raise ConfigError(
                f"TensorRT {version} has no builder optimization level: --builderOptimizationLevel arrives in 8.6 "
                "(NVIDIA/TensorRT release/8.6 samples/common/sampleOptions.cpp); drop --builder-optimization-level"
            )
        flags.append(f"--builderOptimizationLevel={builder_optimization_level}")
    if build_only:
        flags.append("--skipInference" if modern else "--buildOnly")
    return flags


def build_command(spec: BuildSpec, version: TrtVersion, *, trtexec: str = "trtexec") -> list[str]:
    """The argv of a trtexec engine build for ``version`` (golden-tested per major version)."""
    check_version(version)
    cmd = [trtexec, f"--onnx={spec.onnx}", f"--saveEngine={spec.engine}"]
    if spec.batch is not None:
        cmd += [
            f"--minShapes={_shape(spec.input_name, spec.batch.min, spec.chw)}",
            f"--optShapes={_shape(spec.input_name, spec.batch.opt, spec.chw)}",
            f"--maxShapes={_shape(spec.input_name, spec.batch.max, spec.chw)}",
        ]
    if (version.major, version.minor) < (8, 4):
        cmd.append(f"--workspace={spec.workspace_mib}")
    else:
        cmd.append(f"--memPoolSize=workspace:{spec.workspace_mib}")
    cmd += precision_flags(version, spec.precision, spec.source_kind, calib=spec.calib_cache)
    if spec.dla_core is not None:
        if spec.precision is Precision.FP32:
            raise ConfigError("DLA runs FP16 and INT8 only: choose --precision fp16 or int8, or --no-dla")
        if spec.batch is not None and not spec.batch.static:
            # "DLA does not support dynamic dimensions ... min, max, and opt values must be equal"
            # (TensorRT developer guide, DLA Supported Layers and Restrictions).
            raise ConfigError(
                "DLA has no dynamic shapes: min = opt = max is required, "
                f"got --batch {spec.batch.min},{spec.batch.opt},"
                f"{spec.batch.max}; give one batch size (e.g. --batch {spec.batch.opt})"
            )
        cmd += [f"--useDLACore={spec.dla_core}", "--allowGPUFallback"]
    cmd += build_option_flags(
        version,
        version_compatible=spec.version_compatible,
        builder_optimization_level=spec.builder_optimization_level,
        build_only=spec.build_only,
    )
    if spec.timing_cache is not None:
        cmd.append(f"--timingCacheFile={spec.timing_cache}")
    if spec.export_times is not None and not spec.build_only:  # a build-only run times nothing
        cmd.append(f"--exportTimes={spec.export_times}")
    if spec.export_layer_info is not None:
        # Each layer's precision and device, as IEngineInspector's JSON: --exportLayerInfo writes
        # getLayerInformation(kJSON), which names precisions only at detailed verbosity. Both flags are in
        # every supported release's option list (release/8.2 sampleOptions.cpp and trtexec.cpp onwards).
        cmd += ["--profilingVerbosity=detailed", f"--exportLayerInfo={spec.export_layer_info}"]
    return cmd


def timing_flags(version: TrtVersion, *, cuda_graph: bool, dla: bool = False) -> tuple[list[str], dict[str, bool]]:
    """The flags that fix what trtexec's latencies mean, stated for every release, and that meaning.

    Up to 10.x trtexec includes host-device copies by default and CUDA graphs and spin-wait
    are off; 11.0 flips all three (copies excluded, graphs and spin-wait on) and makes
    ``--useCudaGraph``/``--noDataTransfers``/``--useSpinWait`` no-ops (``release/11.0``
    ``samples/common/sampleOptions.cpp``, InferenceOptions::parse). edge-tl always times with
    the copies included (so end-to-end is H2D + compute + D2H) and spin-wait on; CUDA graphs as asked,
    except on 11.x under DLA, where trtexec turns them off itself ("CUDA graphs and DLA offloading are
    not simultaneously supported", release/11.0 ``sampleOptions.cpp``): edge-tl then asks for none.
    Elsewhere a capture can still fail at run time; the bench record says so (``timing_truth``).
    """
    check_version(version)
    if dla and version.major >= 11:
        cuda_graph = False
    if version.major >= 11:
        flags = ["--includeDataTransfers"] + ([] if cuda_graph else ["--noCudaGraph"])
    else:
        flags = ["--useSpinWait"] + (["--useCudaGraph"] if cuda_graph else [])
    return flags, {"data_transfers": True, "spin_wait": True, "cuda_graph": cuda_graph}


def bench_command(
    engine: str,
    version: TrtVersion,
    *,
    input_name: str,
    chw: tuple[int, int, int],
    batch: int | None,
    export_times: str,
    warmup_ms: int = 500,
    duration_s: int = 10,
    iterations: int = 100,
    cuda_graph: bool = True,
    dla_core: int | None = None,
    trtexec: str = "trtexec",
) -> list[str]:
    """The argv that times an existing engine; the per-iteration times go to ``export_times``."""
    check_version(version)
    cmd = [trtexec, f"--loadEngine={engine}"]
    if batch is not None:
        cmd.append(f"--shapes={_shape(input_name, batch, chw)}")
    cmd += [f"--warmUp={warmup_ms}", f"--duration={duration_s}", f"--iterations={iterations}"]
    cmd += timing_flags(version, cuda_graph=cuda_graph, dla=dla_core is not None)[0]
    if dla_core is not None:
        cmd.append(f"--useDLACore={dla_core}")
    cmd.append(f"--exportTimes={export_times}")
    return cmd


def banner_code(version: TrtVersion) -> str:
    """trtexec's banner number for ``version``: ``[TensorRT v8502]`` is 8.5.2, ``v100300`` is 10.3.0.

    The banner prints ``NV_TENSORRT_VERSION`` (``samples/common/logging.h``), the same number as
    ``getInferLibVersion()`` and a calibration cache's header.
    """
    return str(version.library_version)


def shell_join(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
