"""TensorRT engine building: build plans (pure), trtexec flags per version, Python-API and torch-tensorrt builders.

Light to import: TensorRT, torch and torch-tensorrt are imported only when an engine is built here.
"""

from edge_tl.compile.api import BuildMode, CompileResult, Via, compile_run, run_build_script
from edge_tl.compile.plan import (
    BuildPlan,
    CompileRequest,
    choose_source,
    make_plan,
    write_plan,
)
from edge_tl.compile.trtexec_flags import (
    BatchRange,
    BuildSpec,
    SourceKind,
    bench_command,
    build_command,
)
from edge_tl.trt.sidecar import EngineMetadata, read_sidecar, sidecar_path

__all__ = [
    "BatchRange",
    "BuildMode",
    "BuildPlan",
    "BuildSpec",
    "CompileRequest",
    "CompileResult",
    "EngineMetadata",
    "SourceKind",
    "Via",
    "bench_command",
    "build_command",
    "choose_source",
    "compile_run",
    "make_plan",
    "run_build_script",
    "read_sidecar",
    "sidecar_path",
    "write_plan",
]
