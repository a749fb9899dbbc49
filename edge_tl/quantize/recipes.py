"""Calibration recipes: TOML files (top-level ``calibration/``, shipped as ``edge_tl.recipes``).

A recipe names how to calibrate (method, its parameters, samples), what to quantize
(op types, dtypes, per-channel or per-tensor, symmetric or not), what stays in
float, and what comes out (TensorRT-style Q/DQ, ONNX Runtime Q/DQ, or a TensorRT
calibration cache). Every field is checked on load; an error names the file and
the field.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

from edge_tl._lazy import lazy_import
from edge_tl.errors import ConfigError

SCHEMA_VERSION = 1
RECIPE_PACKAGE = "edge_tl.recipes"


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


class _Fields:
    """Typed field access on one TOML table; errors name the file and the dotted field."""

    def __init__(self, data: dict[str, Any], *, where: str, prefix: str = ""):
        self.data = data
        self.where = where
        self.prefix = prefix
        self.seen: set[str] = set()

    def _err(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"recipe {self.where}: field {self.prefix + key!r} {msg}")

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, choices: type[Enum] | None = None
    ) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is ...:
                raise self._err(key, "is missing")
            return default
        value = self.data[key]
        if choices is not None:
            allowed = [c.value for c in choices]
            if value not in allowed:
                raise self._err(key, f"is {value!r}; choose one of {allowed}")
            return choices(value)
        # bool is an int in Python; a recipe that says `num_samples = true` is wrong.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self._err(key, f"must be {_kind_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise self._err(key, f"must be {_kind_name(kind)}, got {value!r}")
        return value

    def table(self, key: str) -> _Fields:
        value = self.get(key, dict, {})
        return _Fields(value, where=self.where, prefix=f"{self.prefix}{key}.")

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(key, list, list(default))
        if not all(isinstance(v, str) and v for v in value):
            raise self._err(key, f"must be a list of non-empty strings, got {value!r}")
        return tuple(value)

    def no_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(
                f"recipe {self.where}: unknown field(s) {[self.prefix + u for u in unknown]}; "
                "check the spelling against calibration/*.toml"
            )


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _tensor_spec(t: _Fields, *, per_channel_default: bool) -> TensorSpec:
    spec = TensorSpec(
        dtype=t.get("dtype", str, QuantDType.INT8, choices=QuantDType),
        symmetric=t.get("symmetric", bool, True),
        per_channel=t.get("per_channel", bool, per_channel_default),
    )
    t.no_unknown()
    return spec


def parse_recipe(data: dict[str, Any], *, where: str) -> Recipe:
    """Build a :class:`Recipe` from parsed TOML, checking every field."""
    top = _Fields(data, where=where)
    schema = top.get("schema", int)
    if schema != SCHEMA_VERSION:
        raise ConfigError(f"recipe {where}: field 'schema' is {schema}; this edge-tl reads schema {SCHEMA_VERSION}")
    name = top.get("name", str)
    if not name or "/" in name or name != name.strip():
        raise ConfigError(f"recipe {where}: field 'name' {name!r} must be a plain name (it names files and artifacts)")
    description = top.get("description", str, "")
    # A format of one's own names its writer, which checks the output name when quantize loads it.
    writer = top.get("writer", str, "")
    output = top.get("output", str) if writer else top.get("output", str, choices=OutputFormat)
    if output in {f.value for f in OutputFormat}:
        output = OutputFormat(output)

    c = top.table("calibration")
    calibration = CalibrationSpec(
        method=c.get("method", str, CalibMethod.MINMAX, choices=CalibMethod),
        percentile=float(c.get("percentile", (int, float), 99.99)),
        num_bins=c.get("num_bins", int, 2048),
        num_samples=c.get("num_samples", int, 512),
        batch_size=c.get("batch_size", int, 16),
    )
    c.no_unknown()
    if not 50.0 < calibration.percentile <= 100.0:
        raise ConfigError(
            f"recipe {where}: field 'calibration.percentile' is {calibration.percentile}; give a value in (50, 100]"
        )
    if calibration.num_bins < 128:
        raise ConfigError(f"recipe {where}: field 'calibration.num_bins' is {calibration.num_bins}; it must be >= 128")
    if calibration.num_samples < 1 or calibration.batch_size < 1:
        raise ConfigError(f"recipe {where}: fields 'calibration.num_samples' and 'calibration.batch_size' must be >= 1")

    activations = _tensor_spec(top.table("activations"), per_channel_default=False)
    weights = _tensor_spec(top.table("weights"), per_channel_default=True)
    if activations.per_channel:
        raise ConfigError(f"recipe {where}: field 'activations.per_channel' must be false (activations are per tensor)")

    p = top.table("placement")
    placement = PlacementSpec(
        op_types=p.strings("op_types", ("Conv", "Gemm", "MatMul")),
        residual_add=p.get("residual_add", bool, True),
        keep_float=p.strings("keep_float", ()),
    )
    p.no_unknown()

    cache = None
    if "cache" in data or output is OutputFormat.TENSORRT_CACHE:
        k = top.table("cache")
        cache = CacheSpec(
            algorithm=k.get("algorithm", str, "EntropyCalibration2"), cache_version=k.get("cache_version", int)
        )
        k.no_unknown()
    top.no_unknown()

    if output is OutputFormat.QDQ_TENSORRT:
        # TensorRT's explicit quantization only takes symmetric INT8 with zero point 0.
        for field_name, spec in (("activations", activations), ("weights", weights)):
            if spec.dtype is not QuantDType.INT8 or not spec.symmetric:
                raise ConfigError(
                    f"recipe {where}: output 'qdq-tensorrt' needs {field_name} dtype 'int8' and symmetric = true "
                    f"(got {spec.dtype.value}, symmetric={spec.symmetric}); TensorRT takes zero point 0 only"
                )
    if "*" in placement.op_types and output is not OutputFormat.TENSORRT_CACHE:
        raise ConfigError(
            f"recipe {where}: field 'placement.op_types' may be ['*'] (every tensor) only with output "
            "'tensorrt-cache'; Q/DQ outputs need the op types to quantize, e.g. ['Conv', 'Gemm', 'MatMul']"
        )
    if weights.dtype is not QuantDType.INT8:
        raise ConfigError(f"recipe {where}: field 'weights.dtype' must be 'int8' (uint8 weights are not supported)")
    return Recipe(name, description, output, calibration, activations, weights, placement, cache, where, writer)


def _tomllib() -> ModuleType:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    return lazy_import("tomli", purpose="reading calibration recipes on Python 3.10")  # pragma: no cover


def list_recipes() -> list[str]:
    """Names of the recipes shipped with edge-tl."""
    root = resources.files(RECIPE_PACKAGE)
    return sorted(p.name[: -len(".toml")] for p in root.iterdir() if p.name.endswith(".toml"))


def load_recipe(name_or_path: str | os.PathLike[str]) -> Recipe:
    """A shipped recipe by name, or a recipe TOML file by path."""
    text: str
    where: str
    value = str(name_or_path)
    path = Path(value).expanduser()
    looks_like_path = value.endswith(".toml") or os.sep in value or "/" in value
    if looks_like_path:
        if not path.is_file():
            raise ConfigError(
                f"recipe file {value!r} does not exist; give a shipped recipe name ({', '.join(list_recipes())}) or a TOML path"
            )
        text, where = path.read_text(encoding="utf-8"), str(path)
    else:
        known = list_recipes()
        if value not in known:
            close = difflib.get_close_matches(value, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown recipe {value!r}.{hint} Shipped recipes: {', '.join(known)}; or give a path to a TOML file."
            )
        resource = resources.files(RECIPE_PACKAGE) / f"{value}.toml"
        text, where = resource.read_text(encoding="utf-8"), f"{value}.toml"
    toml = _tomllib()
    try:
        data = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise ConfigError(f"recipe {where} is not valid TOML: {exc}") from exc
    recipe = parse_recipe(data, where=where)
    if not looks_like_path and recipe.name != value:
        raise ConfigError(
            f"recipe {where}: field 'name' is {recipe.name!r} but the file is named {value!r}; make them equal"
        )
    return recipe
