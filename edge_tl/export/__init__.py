"""torch -> ONNX export with static padding, clean-up, FP16 and parity (light to import)."""

from edge_tl.export.api import (
    ARTIFACT_NAMES,
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    ExportConfig,
    ExportedModel,
    ExportResult,
    ParityTolerance,
    Precision,
    export_run,
)
from edge_tl.export.onnx_export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, Exporter

__all__ = [
    "ARTIFACT_NAMES",
    "DEFAULT_OPSET",
    "FP16_TOLERANCE",
    "FP32_TOLERANCE",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportConfig",
    "ExportResult",
    "ExportedModel",
    "Exporter",
    "ParityTolerance",
    "Precision",
    "export_run",
]
