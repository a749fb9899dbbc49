"""Engine metadata kept beside the engine, never inside it.

An engine file stays exactly what TensorRT serialized, so trtexec, DeepStream and
Triton load it (an exporter that prepends JSON to engines breaks all three). What
edge-tl needs to know about it lives in ``<engine>.json`` and in the manifest.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_tl.errors import RunError
from edge_tl.runs import atomic_write_json, now_iso

SIDECAR_FORMAT = "edge-tl-engine"
SIDECAR_VERSION = 1


def sidecar_path(engine: str | os.PathLike[str]) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


@dataclass(frozen=True)
class EngineMetadata:
    """What an engine was built from, with what, and for which GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    precision: str
    input_name: str
    output_name: str
    chw: tuple[int, int, int]
    batch: dict[str, int] | None  # {"min","opt","max"}; None for a fixed-batch engine
    source: dict[str, Any]  # {"artifact", "path", "sha256"} of the ONNX (or checkpoint for torch-tensorrt)
    builder: str  # "tensorrt-python" | "trtexec" | "torch-tensorrt"
    target: str
    flags: tuple[str, ...] = ()
    dla_core: int | None = None
    engine_sha256: str = ""
    created: str = field(default_factory=now_iso)
    # A DLA build's log: {"dla_subgraphs": n, "gpu_layers": m}. Each "[DlaLayer]" line is one DLA subgraph
    # ({ForeignNode[...]}, however many layers it holds), each "[GpuLayer]" line one layer.
    layers: dict[str, int] | None = None
    layer_report: dict[str, Any] | None = None  # the engine's own per-layer summary (edge_tl.trt.layers.summarize)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SIDECAR_FORMAT,
            "format_version": SIDECAR_VERSION,
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "precision": self.precision,
            "input_name": self.input_name,
            "output_name": self.output_name,
            "chw": list(self.chw),
            "batch": dict(self.batch) if self.batch is not None else None,
            "source": dict(self.source),
            "builder": self.builder,
            "target": self.target,
            "flags": list(self.flags),
            "dla_core": self.dla_core,
            "engine_sha256": self.engine_sha256,
            "created": self.created,
            "layers": dict(self.layers) if self.layers is not None else None,
            "layer_report": dict(self.layer_report) if self.layer_report is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "sidecar") -> "EngineMetadata":
        if data.get("format") != SIDECAR_FORMAT:
            raise RunError(f"{where} is not an edge-tl engine sidecar (format {data.get('format')!r})")
        try:
            return cls(
                tensorrt_version=str(data["tensorrt_version"]),
                gpu_name=str(data["gpu_name"]),
                compute_capability=str(data["compute_capability"]),
                precision=str(data["precision"]),
                input_name=str(data["input_name"]),
                output_name=str(data["output_name"]),
                chw=tuple(int(v) for v in data["chw"]),  # type: ignore[arg-type]
                batch=dict(data["batch"]) if data.get("batch") else None,
                source=dict(data.get("source") or {}),
                builder=str(data["builder"]),
                target=str(data["target"]),
                flags=tuple(data.get("flags") or ()),
                dla_core=data.get("dla_core"),
                engine_sha256=str(data.get("engine_sha256", "")),
                created=str(data.get("created", "")),
                layers={str(k): int(v) for k, v in data["layers"].items()} if data.get("layers") else None,
                layer_report=dict(data["layer_report"]) if data.get("layer_report") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RunError(f"{where} lacks or mangles field {exc}; rebuild the engine with `edge-tl compile`") from exc


def write_sidecar(engine: str | os.PathLike[str], metadata: EngineMetadata) -> Path:
    return atomic_write_json(sidecar_path(engine), metadata.to_dict())


def read_sidecar(engine: str | os.PathLike[str]) -> EngineMetadata:
    path = sidecar_path(engine)
    if not path.is_file():
        raise RunError(
            f"engine {str(engine)!r} has no sidecar {str(path)!r}: "
            "edge-tl cannot tell which TensorRT and GPU built it. "
            "Build it with `edge-tl compile` (or the run's build_engine.sh)."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunError(f"{str(path)!r} is not valid JSON ({exc}); rebuild the engine") from exc
    return EngineMetadata.from_dict(data, where=str(path))
