"""The quantize stage's view of calibration recipes, defined in :mod:`edge_tl.calibration`
(below both the target profiles, which name a recipe, and this stage)."""

from edge_tl.calibration import (
    SCHEMA_VERSION,
    CacheSpec,
    CalibMethod,
    CalibrationSpec,
    OutputFormat,
    PlacementSpec,
    QuantDType,
    Recipe,
    TensorSpec,
    find_recipe,
    list_recipes,
    load_recipe,
    parse_recipe,
)

__all__ = [
    "SCHEMA_VERSION",
    "CacheSpec",
    "CalibMethod",
    "CalibrationSpec",
    "OutputFormat",
    "PlacementSpec",
    "QuantDType",
    "Recipe",
    "TensorSpec",
    "find_recipe",
    "list_recipes",
    "load_recipe",
    "parse_recipe",
]
