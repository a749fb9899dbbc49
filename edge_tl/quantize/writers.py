"""What a recipe's ``output`` makes: one writer per output format, found by the format's name.

A writer is one of two kinds:

* :class:`ModelWriter`: a quantized ONNX model. quantize calibrates the tensors the writer names,
  builds the model, measures its top-1 against the original model, returns the layers the writer
  names to float one at a time while the accuracy budget is exceeded, times it and records it as
  ``onnx-int8-<recipe>`` (``qdq-tensorrt``, ``qdq-onnxruntime``).
* :class:`FileWriter`: a file a later build reads beside the FP32 model, whose accuracy can only be
  measured on what that build makes (``tensorrt-cache``).

The shipped formats are registered here by ``"module:attribute"`` and imported when first used.
A format of one's own is two files: a Python file defining a writer, and a recipe naming it,
``output = "<the writer's name>"`` and ``writer = "<module or file.py>:<attribute>"`` (a ``.py``
path is relative to the recipe's folder). Loading that recipe's writer registers it under its
name; a name already taken is refused, so a recipe cannot replace a shipped format.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_tl._lazy import import_attribute
from edge_tl.errors import ConfigError


class Writer(ABC):
    """Base of both kinds. ``recipe`` arguments are :class:`edge_tl.quantize.recipes.Recipe`,
    ``config`` a :class:`edge_tl.quantize.QuantizeConfig`, ``model`` the FP32 ``onnx.ModelProto``
    (every node named) and ``ranges`` the calibrated ``{tensor: TensorRange}``."""

    #: the recipe ``output`` this writer makes
    name: str = ""

    def check(self, recipe: Any, config: Any) -> None:
        """Refuse a job before any calibration; nothing to refuse by default."""
        return None

    @abstractmethod
    def tensors(self, model: Any, recipe: Any) -> list[str]:
        """The activations to calibrate."""


class ModelWriter(Writer):
    """A quantized ONNX model, measured and recorded by quantize (see the module docstring)."""

    #: also make the FP16-float-part variant of the model for strongly typed TensorRT builds
    strongly_typed_variant: bool = False

    @abstractmethod
    def layers(self, model: Any, recipe: Any) -> list[str]:
        """The quantized layers (node names) the accuracy budget may return to float."""

    @abstractmethod
    def build(self, model: Any, ranges: dict[str, Any], recipe: Any, float_layers: Sequence[str]) -> Any:
        """The quantized ``ModelProto``, with ``float_layers`` left in float; ``model`` is not changed."""


@dataclass(frozen=True)
class WrittenFile:
    """What a :class:`FileWriter` wrote, for the run's manifest."""

    path: Path
    artifact: str  # the artifact name it is recorded under
    kind: str  # the artifact kind
    details: dict[str, Any] = field(default_factory=dict)  # recorded beside the recipe, source and calibration
    note: str = ""  # told to the user with the result


class FileWriter(Writer):
    """A file for a later build (see the module docstring)."""

    @abstractmethod
    def write(self, model: Any, ranges: dict[str, Any], recipe: Any, config: Any, out_dir: Path) -> WrittenFile:
        """Write the file into ``out_dir`` (the recipe's folder of the run)."""


# Output format -> its writer, or the "module:attribute" of a shipped one not imported yet.
_WRITERS: dict[str, Writer | str] = {
    "qdq-tensorrt": "edge_tl.quantize.qdq_tensorrt:WRITER",
    "qdq-onnxruntime": "edge_tl.quantize.qdq_onnxruntime:WRITER",
    "tensorrt-cache": "edge_tl.quantize.trt_cache:WRITER",
}
_ORIGINS: dict[str, str] = {name: f"edge-tl ({spec})" for name, spec in _WRITERS.items()}


def register_writer(writer: Writer, *, origin: str = "") -> Writer:
    """Make ``writer`` the one for the output format ``writer.name``; a name can be taken once."""
    if not isinstance(writer, (ModelWriter, FileWriter)):
        raise ConfigError(f"{writer!r} is not a writer: subclass edge_tl.quantize.writers.ModelWriter or FileWriter")
    if not writer.name or writer.name != writer.name.strip():
        raise ConfigError(
            f"writer {type(writer).__name__} needs a plain name (the recipe's output), got {writer.name!r}"
        )
    existing = _WRITERS.get(writer.name)
    if existing is writer:
        return writer
    if existing is not None:
        raise ConfigError(
            f"output format {writer.name!r} is already registered (by {_ORIGINS[writer.name]}); "
            "give the new writer another name"
        )
    _WRITERS[writer.name] = writer
    _ORIGINS[writer.name] = origin or type(writer).__module__
    return writer


def list_writers() -> list[str]:
    """The registered output formats."""
    return sorted(_WRITERS)


def get_writer(name: str) -> Writer:
    """The writer registered for the output format ``name``."""
    found = _WRITERS.get(name)
    if found is None:
        close = difflib.get_close_matches(str(name), list(_WRITERS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown output format {name!r}.{hint} Registered: {', '.join(list_writers())}; a format of your own "
            'is named by its recipe\'s writer = "module:attribute"'
        )
    if isinstance(found, str):
        found = import_attribute(found)
        _WRITERS[name] = found
    return found


def writer_for(recipe: Any) -> Writer:
    """The writer of ``recipe``'s output: the one its ``writer`` field names, else the registered one."""
    if recipe.writer:
        writer = load_writer(recipe.writer, where=recipe.source)
        if writer.name != recipe.output:
            raise ConfigError(
                f"recipe {recipe.source}: field 'output' is {str(recipe.output)!r} but its writer {recipe.writer!r} "
                f"makes {writer.name!r}; make them equal"
            )
        register_writer(writer, origin=f"recipe {recipe.source} (writer {recipe.writer!r})")
    return get_writer(recipe.output)


def load_writer(spec: str, *, where: str) -> Writer:
    """The writer ``spec`` names: ``"package.module:attribute"`` (imported) or ``"file.py:attribute"``
    (a path relative to the folder of the recipe at ``where``). A file is loaded once per process."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise ConfigError(
            f"recipe {where}: field 'writer' is {spec!r}; give 'package.module:attribute' or 'file.py:attribute'"
        )
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_absolute():
            path = Path(where).parent / path
        module = _module_from_file(path.resolve(), where=where)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(
                f"recipe {where}: field 'writer' names module {target!r}, which cannot be imported ({exc})"
            ) from exc
    writer = getattr(module, attr, None)
    if not isinstance(writer, (ModelWriter, FileWriter)):
        raise ConfigError(
            f"recipe {where}: field 'writer' {spec!r} is {type(writer).__name__}, not a writer "
            "(an instance of edge_tl.quantize.writers.ModelWriter or FileWriter)"
        )
    return writer


def _module_from_file(path: Path, *, where: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"recipe {where}: field 'writer' names {str(path)!r}, which does not exist")
    # One module per file, so that a second recipe load finds the writer it registered the first time.
    name = "edge_tl_writer_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"recipe {where}: field 'writer' names {str(path)!r}, which Python cannot load")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
