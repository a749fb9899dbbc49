"""``edge-tl import``: bring a model trained elsewhere; one module per source kind."""

from edge_tl.importers.api import ImportResult, import_model
from edge_tl.importers.base import ImportRequest, PreprocessingOptions, SourceModel
from edge_tl.importers.registry import SourceKind, get_source, list_sources, register_source

__all__ = [
    "ImportRequest",
    "ImportResult",
    "PreprocessingOptions",
    "SourceKind",
    "SourceModel",
    "get_source",
    "import_model",
    "list_sources",
    "register_source",
]
