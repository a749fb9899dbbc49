"""INT8 calibration and quantization by recipe, with an accuracy budget (light to import:
onnx and onnxruntime are imported only when the work runs)."""

from edge_tl.quantize.api import (
    QuantizeConfig,
    QuantizeResult,
    QuantPrecision,
    quantize_run,
    resolve_recipe,
)
from edge_tl.quantize.recipes import (
    CalibMethod,
    OutputFormat,
    QuantDType,
    Recipe,
    list_recipes,
    load_recipe,
    parse_recipe,
)
from edge_tl.vocab import Precision

__all__ = [
    "CalibMethod",
    "OutputFormat",
    "Precision",
    "QuantDType",
    "QuantPrecision",
    "QuantizeConfig",
    "QuantizeResult",
    "Recipe",
    "list_recipes",
    "load_recipe",
    "parse_recipe",
    "quantize_run",
    "resolve_recipe",
]
