"""Calibration recipes: TOML files (top-level ``calibration/``, shipped as ``edge_tl.recipes``).

A recipe names how to calibrate (method, its parameters, samples), what to quantize
(op types, dtypes, per-channel or per-tensor, symmetric or not), what stays in
float, and what comes out (TensorRT-style Q/DQ, ONNX Runtime Q/DQ, or a TensorRT
calibration cache). Every field is checked on load (:mod:`edge_tl.tomlfile`); an error
names the file and the field.

A recipe is named by a string: a shipped name, ``NAME`` of a ``NAME.toml`` in a folder
of ``$EDGE_TL_RECIPES``, or a path. Target profiles name theirs the same way and are
checked by :func:`find_recipe` on load, which is why this module sits below both
:mod:`edge_tl.targets` and :mod:`edge_tl.quantize` and imports neither (nor onnx/torch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

from edge_tl import tomlfile
from edge_tl.errors import ConfigError
from edge_tl.tomlfile import Table, close_matches

SCHEMA_VERSION = 1
RECIPE_PACKAGE = "edge_tl.recipes"
#: Folders (separated like ``PATH``) searched for ``NAME.toml`` recipes after the shipped ones.
RECIPES_ENV = "EDGE_TL_RECIPES"


class CalibMethod(str, Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"


class OutputFormat(str, Enum):
    QDQ_TENSORRT = "qdq-tensorrt"  # our own placement, TensorRT's rules
    QDQ_ONNXRUNTIME = "qdq-onnxruntime"  # onnxruntime.quantization's QDQ writer
    TENSORRT_CACHE = "tensorrt-cache"  # FP32 ONNX + TensorRT calibration cache


class QuantDType(str, Enum):
    INT8 = "int8"
    UINT8 = "uint8"


@dataclass(frozen=True)
class CalibrationSpec:
    method: CalibMethod = CalibMethod.MINMAX
    percentile: float = 99.99
    num_bins: int = 2048
    num_samples: int = 512
    batch_size: int = 16


@dataclass(frozen=True)
class TensorSpec:
    dtype: QuantDType = QuantDType.INT8
    symmetric: bool = True
    per_channel: bool = False


@dataclass(frozen=True)
class PlacementSpec:
    op_types: tuple[str, ...] = ("Conv", "Gemm", "MatMul")
    residual_add: bool = True
    keep_float: tuple[str, ...] = ()  # node-name glob patterns


@dataclass(frozen=True)
class CacheSpec:
    algorithm: str = "EntropyCalibration2"
    cache_version: int = 8502  # TensorRT 8.5.2 (JetPack 5.1): major*1000 + minor*100 + patch


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    output: OutputFormat | str  # a shipped format, or the name of the format ``writer`` makes
    calibration: CalibrationSpec
    activations: TensorSpec
    weights: TensorSpec
    placement: PlacementSpec
    cache: CacheSpec | None = None
    source: str = ""  # where it was loaded from
    writer: str = ""  # "module:attribute" or "file.py:attribute" of a format's writer (edge_tl.quantize.writers)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "output": self.output.value if isinstance(self.output, OutputFormat) else self.output,
            "source": self.source,
            "calibration": {
                "method": self.calibration.method.value,
                "percentile": self.calibration.percentile,
                "num_bins": self.calibration.num_bins,
                "num_samples": self.calibration.num_samples,
                "batch_size": self.calibration.batch_size,
            },
            "activations": _tensor_dict(self.activations),
            "weights": _tensor_dict(self.weights),
            "placement": {
                "op_types": list(self.placement.op_types),
                "residual_add": self.placement.residual_add,
                "keep_float": list(self.placement.keep_float),
            },
        }
        if self.cache is not None:
            out["cache"] = {"algorithm": self.cache.algorithm, "cache_version": self.cache.cache_version}
        if self.writer:
            out["writer"] = self.writer
        return out


def _tensor_dict(spec: TensorSpec) -> dict[str, Any]:
    return {"dtype": spec.dtype.value, "symmetric": spec.symmetric, "per_channel": spec.per_channel}


# --------------------------------------------------------------------------- loading

_TOP_FIELDS = (
    "schema",
    "name",
    "description",
    "output",
    "writer",
    "calibration",
    "activations",
    "weights",
    "placement",
    "cache",
)
_CALIBRATION_FIELDS = ("method", "percentile", "num_bins", "num_samples", "batch_size")
_TENSOR_FIELDS = ("dtype", "symmetric", "per_channel")
_PLACEMENT_FIELDS = ("op_types", "residual_add", "keep_float")
_CACHE_FIELDS = ("algorithm", "cache_version")


def _tensor_spec(t: Table, *, per_channel_default: bool) -> TensorSpec:
    return TensorSpec(
        dtype=t.enum("dtype", QuantDType, QuantDType.INT8),
        symmetric=t.get("symmetric", bool, True),
        per_channel=t.get("per_channel", bool, per_channel_default),
    )


def parse_recipe(data: dict[str, Any], *, where: str) -> Recipe:
    """Build a :class:`Recipe` from parsed TOML, checking every field (errors name ``where``)."""
    top = Table(data, source=where, known=_TOP_FIELDS)
    schema = top.get("schema", int)
    if schema != SCHEMA_VERSION:
        raise top.fail("schema", f"is {schema}; this edge-tl reads schema {SCHEMA_VERSION}")
    name = top.get("name", str)
    if not name or "/" in name or name != name.strip():
        raise top.fail("name", f"{name!r} must be a plain name (it names files and artifacts)")
    description = top.get("description", str, "")
    # A format of one's own names its writer, which checks the output name when quantize loads it.
    writer = top.get("writer", str, "")
    output = top.get("output", str) if writer else top.enum("output", OutputFormat)
    if output in {f.value for f in OutputFormat}:
        output = OutputFormat(output)

    c = top.table("calibration", _CALIBRATION_FIELDS, required=False)
    calibration = CalibrationSpec(
        method=c.enum("method", CalibMethod, CalibMethod.MINMAX),
        percentile=float(c.get("percentile", (int, float), 99.99)),
        num_bins=c.get("num_bins", int, 2048),
        num_samples=c.get("num_samples", int, 512),
        batch_size=c.get("batch_size", int, 16),
    )
    if not 50.0 < calibration.percentile <= 100.0:
        raise c.fail("percentile", f"is {calibration.percentile}; give a value in (50, 100]")
    if calibration.num_bins < 128:
        raise c.fail("num_bins", f"is {calibration.num_bins}; it must be >= 128")
    if calibration.num_samples < 1 or calibration.batch_size < 1:
        raise ConfigError(f"{where}: fields 'calibration.num_samples' and 'calibration.batch_size' must be >= 1")

    activations = _tensor_spec(top.table("activations", _TENSOR_FIELDS, required=False), per_channel_default=False)
    weights = _tensor_spec(top.table("weights", _TENSOR_FIELDS, required=False), per_channel_default=True)
    if activations.per_channel:
        raise ConfigError(f"{where}: field 'activations.per_channel' must be false (activations are per tensor)")

    p = top.table("placement", _PLACEMENT_FIELDS, required=False)
    placement = PlacementSpec(
        op_types=p.strings("op_types", ("Conv", "Gemm", "MatMul")),
        residual_add=p.get("residual_add", bool, True),
        keep_float=p.strings("keep_float", ()),
    )

    cache = None
    if "cache" in top or output is OutputFormat.TENSORRT_CACHE:
        k = top.table("cache", _CACHE_FIELDS, required=False)
        cache = CacheSpec(
            algorithm=k.get("algorithm", str, "EntropyCalibration2"), cache_version=k.get("cache_version", int)
        )

    if output is OutputFormat.QDQ_TENSORRT:
        # TensorRT's explicit quantization only takes symmetric INT8 with zero point 0.
        for field_name, spec in (("activations", activations), ("weights", weights)):
            if spec.dtype is not QuantDType.INT8 or not spec.symmetric:
                raise ConfigError(
                    f"{where}: output 'qdq-tensorrt' needs {field_name} dtype 'int8' and symmetric = true "
                    f"(got {spec.dtype.value}, symmetric={spec.symmetric}); TensorRT takes zero point 0 only"
                )
    if "*" in placement.op_types and output is not OutputFormat.TENSORRT_CACHE:
        raise p.fail(
            "op_types",
            "may be ['*'] (every tensor) only with output 'tensorrt-cache'; Q/DQ outputs need the op types to "
            "quantize, e.g. ['Conv', 'Gemm', 'MatMul']",
        )
    if weights.dtype is not QuantDType.INT8:
        raise ConfigError(f"{where}: field 'weights.dtype' must be 'int8' (uint8 weights are not supported)")
    return Recipe(name, description, output, calibration, activations, weights, placement, cache, where, writer)


def list_recipes() -> list[str]:
    """Names of the recipes shipped with edge-tl."""
    root = resources.files(RECIPE_PACKAGE)
    return sorted(p.name[: -len(".toml")] for p in root.iterdir() if p.name.endswith(".toml"))


def recipe_dirs() -> list[Path]:
    """The folders named by ``$EDGE_TL_RECIPES`` (separated like ``PATH``), searched after the shipped ones."""
    return [Path(p).expanduser() for p in os.environ.get(RECIPES_ENV, "").split(os.pathsep) if p]


def _user_recipes() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else ():
            found.setdefault(path.stem, path)
    return found


def looks_like_path(value: str | os.PathLike[str]) -> bool:
    text = str(value)
    return text.endswith(".toml") or os.sep in text or "/" in text


def find_recipe(name_or_path: str | os.PathLike[str]) -> str:
    """Check that a recipe name or path resolves to a file, without reading it; returns the name or path.

    A name is a shipped recipe, else ``NAME.toml`` in a folder of ``$EDGE_TL_RECIPES``.
    """
    value = str(name_or_path)
    if looks_like_path(value):
        if not Path(value).expanduser().is_file():
            raise ConfigError(
                f"recipe file {value!r} does not exist; give a shipped recipe name ({', '.join(list_recipes())}) "
                "or a TOML path"
            )
        return value
    known = list_recipes() + sorted(set(_user_recipes()) - set(list_recipes()))
    if value not in known:
        close = close_matches(value, known)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown recipe {value!r}.{hint} Known recipes: {', '.join(known)}. To add one, write NAME.toml "
            f"(fields as in calibration/*.toml) and give its path, or put it in a folder named by ${RECIPES_ENV}."
        )
    return value


def load_recipe(name_or_path: str | os.PathLike[str]) -> Recipe:
    """A recipe by name (shipped, or in ``$EDGE_TL_RECIPES``) or a recipe TOML file by path."""
    value = find_recipe(name_or_path)
    if looks_like_path(value):
        path = Path(value).expanduser()
        recipe = parse_recipe(tomlfile.read(path, what="recipe"), where=str(path))
        return recipe
    if value in list_recipes():
        resource = resources.files(RECIPE_PACKAGE) / f"{value}.toml"
        where = f"{value}.toml"
        recipe = parse_recipe(tomlfile.loads(resource.read_text(encoding="utf-8"), source=where), where=where)
    else:
        path = _user_recipes()[value]
        recipe = parse_recipe(tomlfile.read(path, what="recipe"), where=str(path))
    if recipe.name != value:
        raise ConfigError(
            f"recipe {recipe.source}: field 'name' is {recipe.name!r} but the file is named {value!r}; make them equal"
        )
    return recipe
