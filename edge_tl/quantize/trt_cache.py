"""TensorRT's calibration cache text format: writer and reader.

First line ``TRT-<version>-<algorithm>`` (e.g. ``TRT-8502-EntropyCalibration2`` from TensorRT 8.5.2;
``getInferLibVersion()``, so the patch release is part of it), then
one line per tensor ``<onnx tensor name>: <8 hex digits>``: the IEEE-754 float32 bit
pattern of the scale ``amax / 127``, most significant byte first. This is what
``trtexec --calib=FILE`` and a calibrator's ``read_calibration_cache`` consume; the
tensor names are the ONNX tensor names, so a cache belongs to one exported graph and
one TensorRT version.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_tl.artifacts import calib_cache
from edge_tl.errors import ConfigError, RunError
from edge_tl.quantize.graph import float_activations, matches
from edge_tl.quantize.observers import INT8_LEVELS, TensorRange
from edge_tl.quantize.writers import FileWriter, WrittenFile
from edge_tl.runs import atomic_write_text

_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
CACHE_FILE = "calibration.cache"


def scale_hex(amax: float) -> str:
    """``amax`` -> the cache's hex scale (amax 2.0 -> ``3c810204``)."""
    return struct.pack(">f", float(amax) / INT8_LEVELS).hex()


def hex_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text))[0]


@dataclass(frozen=True)
class CalibrationCache:
    version: int
    algorithm: str
    scales: dict[str, float]  # tensor name -> scale (amax / 127), in file order

    def amax(self, name: str) -> float:
        return self.scales[name] * INT8_LEVELS

    def to_text(self) -> str:
        lines = [f"TRT-{self.version}-{self.algorithm}"]
        for name, scale in self.scales.items():
            if not name or "\n" in name or "\r" in name:
                raise ConfigError(f"tensor name {name!r} cannot be written to a TensorRT cache (one line per tensor)")
            lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
        return "\n".join(lines) + "\n"


def cache_from_amax(
    amax: dict[str, float], *, version: int, algorithm: str = "EntropyCalibration2"
) -> CalibrationCache:
    return CalibrationCache(version, algorithm, {name: float(value) / INT8_LEVELS for name, value in amax.items()})


def write_cache(path: str | os.PathLike[str], cache: CalibrationCache) -> Path:
    return atomic_write_text(path, cache.to_text())


def parse_cache(text: str, *, where: str = "cache") -> CalibrationCache:
    lines = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"{where} is empty; a TensorRT cache starts with 'TRT-<version>-<algorithm>'")
    match = _HEADER.match(lines[0].strip())
    if not match:
        raise ConfigError(
            f"{where}: first line {lines[0]!r} is not a TensorRT cache header 'TRT-<version>-<algorithm>'"
        )
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        # Tensor names may themselves contain ':' (e.g. 'onnx::Conv_12'): split at the last one.
        name, sep, value = line.rpartition(":")
        value = value.strip()
        if not sep or not name or not re.fullmatch(r"[0-9a-fA-F]{8}", value):
            raise ConfigError(f"{where} line {number}: {line!r} is not '<tensor>: <8 hex digits>'")
        scales[name] = hex_scale(value)
    return CalibrationCache(int(match.group(1)), match.group(2), scales)


def read_cache(path: str | os.PathLike[str]) -> CalibrationCache:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"calibration cache {str(path)!r} does not exist") from exc
    return parse_cache(text, where=str(path))


def target_cache_version(target: str | None, tensorrt: str | None = None) -> int | None:
    """The TensorRT library version a cache for ``target`` (one of its ``tensorrt`` releases) must carry."""
    if target is None:
        return None
    from edge_tl.targets import load_target

    profile = load_target(target)
    release = profile.release(tensorrt)
    if release.version.major >= 11:
        raise ConfigError(
            f"target {profile.name!r} builds with TensorRT {release.version}, which cannot read a calibration cache "
            "(calibrators were removed in TensorRT 11): use --recipe tensorrt-int8-qdq, or a TensorRT 10 release "
            "of the target (--tensorrt)"
        )
    return release.version.library_version


class CacheWriter(FileWriter):
    """``output = "tensorrt-cache"``: the FP32 model's every float activation (but ``keep_float``) in a cache."""

    name = "tensorrt-cache"

    def check(self, recipe: Any, config: Any) -> None:
        # a target whose TensorRT reads no cache fails before calibrating
        target_cache_version(config.target, config.tensorrt)

    def tensors(self, model: Any, recipe: Any) -> list[str]:
        return [t for t in float_activations(model) if not matches(t, recipe.placement.keep_float)]

    def write(self, model: Any, ranges: dict[str, TensorRange], recipe: Any, config: Any, out_dir: Path) -> WrittenFile:
        if recipe.cache is None:
            raise ConfigError(f"recipe {recipe.source}: output 'tensorrt-cache' needs a [cache] table")
        for_target = target_cache_version(config.target, config.tensorrt)
        version = config.cache_version or for_target or recipe.cache.cache_version
        cache = cache_from_amax(
            {n: r.amax for n, r in ranges.items()}, version=version, algorithm=recipe.cache.algorithm
        )
        known = set(float_activations(model))
        unknown = [n for n in cache.scales if n not in known]
        if unknown:
            raise RunError(f"calibration produced names that are not tensors of the FP32 ONNX: {unknown[:5]}")
        return WrittenFile(
            path=write_cache(out_dir / CACHE_FILE, cache),
            artifact=calib_cache(recipe.name),
            kind="calibration-cache",
            details={
                "header": f"TRT-{version}-{recipe.cache.algorithm}",
                "num_tensors": len(cache.scales),
                "cache_version_from": "--cache-version"
                if config.cache_version
                else (f"target {config.target}" if for_target else "recipe"),
                "note": "use with the onnx-fp32 artifact; TensorRT 8.5-10.x implicit quantization reads it "
                "(trtexec --int8 --calib=FILE); its accuracy is measured on the built engine",
            },
            note="implicit quantization: accuracy is measured on the engine TensorRT builds from this cache",
        )


WRITER = CacheWriter()
