"""Import source kinds, registered like runner backends (``edge_tl/runtime/registry.py``).

A kind names a module function ``open_x(request: ImportRequest) -> SourceModel`` as a
``"module:function"`` string, imported only when used, so this module stays light.
Adding a source is one module and one :func:`register_source` call.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from edge_tl._lazy import import_attribute
from edge_tl.artifacts import CHECKPOINT_BEST, ONNX_FP32
from edge_tl.errors import ConfigError
from edge_tl.importers.base import ImportRequest, SourceModel


@dataclass(frozen=True)
class SourceKind:
    name: str
    opener: str  # "module:function"
    reference: str  # what becomes the reference every later artifact is compared with
    description: str = ""

    def load_opener(self) -> Callable[[ImportRequest], SourceModel]:
        return import_attribute(self.opener)


_SOURCES: dict[str, SourceKind] = {}


def register_source(kind: SourceKind) -> SourceKind:
    if kind.name in _SOURCES:
        raise ConfigError(f"import source {kind.name!r} is already registered")
    _SOURCES[kind.name] = kind
    return kind


def list_sources() -> list[SourceKind]:
    return list(_SOURCES.values())


def get_source(name: str) -> SourceKind:
    if name not in _SOURCES:
        close = difflib.get_close_matches(name, list(_SOURCES), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown import source {name!r}.{hint} Known: {', '.join(_SOURCES)}")
    return _SOURCES[name]


register_source(
    SourceKind(
        "pytorch",
        opener="edge_tl.importers.pytorch:open_weights",
        reference=CHECKPOINT_BEST,
        description="an edge-tl backbone or timm:<name> plus a local weights file (state dict, timm, torchvision or "
        "Lightning checkpoint)",
    )
)
register_source(
    SourceKind(
        "pretrained",
        opener="edge_tl.importers.pytorch:open_pretrained",
        reference=CHECKPOINT_BEST,
        description="a pretrained backbone as it is, with its 1000-class ImageNet head",
    )
)
register_source(
    SourceKind(
        "onnx",
        opener="edge_tl.importers.onnx:open_onnx",
        reference=ONNX_FP32,
        description="an ONNX classifier (NCHW float32 image in, logits out); the ONNX FP32 model is the reference",
    )
)
register_source(
    SourceKind(
        "torchscript",
        opener="edge_tl.importers.programs:open_torchscript",
        reference=ONNX_FP32,
        description="a TorchScript file (torch.jit.save); exported to ONNX here, which becomes the reference",
    )
)
register_source(
    SourceKind(
        "exported-program",
        opener="edge_tl.importers.programs:open_exported",
        reference=ONNX_FP32,
        description="a torch.export program (.pt2, torch.export.save); exported to ONNX here, which becomes the "
        "reference",
    )
)
