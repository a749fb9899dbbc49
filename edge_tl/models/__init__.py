"""Backbones and their preprocessing contracts (light: torch is imported only to build)."""

from edge_tl.models.checkpoint import load_run_model
from edge_tl.models.preprocessing import Preprocessing
from edge_tl.models.registry import (
    BackboneSpec,
    Weights,
    WeightsSource,
    build_model,
    get_backbone,
    list_backbones,
)

__all__ = [
    "BackboneSpec",
    "Preprocessing",
    "Weights",
    "WeightsSource",
    "build_model",
    "get_backbone",
    "list_backbones",
    "load_run_model",
]
