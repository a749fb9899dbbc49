"""A Triton Inference Server model repository inside a bundle (``bundle --triton``).

Layout (``triton/<model>/`` in the bundle; point ``tritonserver --model-repository`` at ``triton/``)::

    config.pbtxt        Triton's model configuration (its ``ModelConfig`` protobuf, text format)
    labels.txt          the class names, for the classification extension (``label_filename``)
    1/model.onnx        onnxruntime targets: the ONNX the bundle ships
    1/model.plan        TensorRT targets: the engine the device builds (not in the bundle; see README.txt)
    1/build_plan.json   TensorRT targets: the build plan of that engine
    README.txt          TensorRT targets: which build makes ``1/model.plan``

Every field comes from the model itself: the input and output names, element types and dims
from the ONNX graph, ``max_batch_size`` from the engine's batch range (TensorRT) or the batch
range edge-tl plans engines for (a dynamic-batch ONNX, which takes any batch). The text is
written here, not with Triton's protobuf classes, so that a bundle needs no tritonclient; the
tests parse it with Triton's own schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_tl._lazy import lazy_import
from edge_tl.errors import ConfigError, RunError

TRITON_DIR = "triton"
LABELS = "labels.txt"
VERSION = "1"
CONFIG = "config.pbtxt"
NOTES = "README.txt"
PLAN_COPY = "build_plan.json"
# Triton's platform names for its TensorRT and ONNX Runtime backends, and the file each loads
# by default from the version folder (Triton's model_repository.md, "Model Files").
PLATFORMS = {"tensorrt": ("tensorrt_plan", "model.plan"), "onnxruntime": ("onnxruntime_onnx", "model.onnx")}
# ONNX element type (onnx.TensorProto name) -> Triton data type (model_config.proto's DataType).
DATA_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FLOAT16": "TYPE_FP16",
    "FLOAT": "TYPE_FP32",
    "DOUBLE": "TYPE_FP64",
    "BFLOAT16": "TYPE_BF16",
    "STRING": "TYPE_STRING",
}


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton's TYPE_*
    shape: tuple[int | str, ...]  # as the ONNX declares it; a name for a symbolic dimension


def model_name(run_name: str) -> str:
    """A Triton model (folder) name from the run's folder name: letters, digits, ``_ - .``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_name).strip("._") or "model"


def onnx_tensors(path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """The graph's inputs (initializers left out) and outputs, as the ONNX declares them."""
    onnx = lazy_import("onnx", purpose="bundle --triton")
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}

    def tensor(value: Any) -> Tensor:
        kind = value.type.tensor_type
        elem = onnx.TensorProto.DataType.Name(kind.elem_type)
        if elem not in DATA_TYPES:
            raise RunError(f"{str(path)!r}: {value.name!r} is {elem}, which Triton has no data type for")
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in kind.shape.dim)
        if not re.fullmatch(r"[ -!#-\[\]-~]+", value.name):
            # config.pbtxt quotes the name: printable ASCII without a quote or backslash needs no escaping.
            raise RunError(
                f"{str(path)!r}: the tensor name {value.name!r} has a quote, backslash or non-ASCII character; "
                "rename it in the ONNX to write a Triton config"
            )
        return Tensor(value.name, DATA_TYPES[elem], shape)

    return [tensor(v) for v in graph.input if v.name not in weights], [tensor(v) for v in graph.output]


def batch_size(
    inputs: list[Tensor], outputs: list[Tensor], *, batch_range: dict[str, int] | None, default_max: int
) -> int:
    """``max_batch_size``: 0 (no batching: dims are the full shapes) for a fixed-shape model, else the
    largest batch the engine's profile (or, for a dynamic ONNX run by ONNX Runtime, ``default_max``) takes.

    Triton's dynamic batcher sends any batch from 1 to max_batch_size; a bundle's build plan
    always starts its profile at 1 (compile's default range, or batch 1 on DLA), so every
    batch Triton sends is one the engine takes.
    """
    first = {t.shape[0] if t.shape else None for t in inputs + outputs}
    if all(isinstance(d, int) for d in first):
        return 0
    return default_max if batch_range is None else int(batch_range["max"])


def config_text(
    name: str, *, platform: str, max_batch: int, inputs: list[Tensor], outputs: list[Tensor], labelled: str
) -> str:
    """config.pbtxt: with batching Triton's dims leave the batch dimension out (it adds it)."""

    def dims(t: Tensor) -> str:
        shown = t.shape[1:] if max_batch > 0 else t.shape
        # -1: a dimension the ONNX leaves open (Triton's variable-size dimension)
        return ", ".join(str(d) if isinstance(d, int) else "-1" for d in shown)

    def block(kind: str, tensors: list[Tensor], label: str | None) -> str:
        items = []
        for t in tensors:
            extra = f'\n    label_filename: "{label}"' if label else ""
            items.append(
                f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n    dims: [ {dims(t)} ]{extra}\n  }}'
            )
        return f"{kind} [\n" + ",\n".join(items) + "\n]\n"

    text = f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch}\n'
    text += block("input", inputs, None)
    text += block("output", outputs, labelled)
    if max_batch > 1:
        text += "dynamic_batching { }\n"
    return text


def write_triton(
    work: Path,
    *,
    name: str,
    runtime: str,
    onnx_path: Path,
    labels: str,
    batch_range: dict[str, int] | None,
    default_max: int,
    build_plan: dict[str, Any] | None,
) -> dict[str, Any]:
    """Write ``triton/<name>/`` into the bundle folder ``work``; the bundle manifest's ``triton`` record."""
    if runtime not in PLATFORMS:
        raise ConfigError(f"--triton: Triton has no backend edge-tl writes for the {runtime!r} runtime")
    platform, filename = PLATFORMS[runtime]
    inputs, outputs = onnx_tensors(onnx_path)
    if len(outputs) != 1:
        raise RunError(f"{str(onnx_path)!r} has {len(outputs)} outputs; the classification labels go on one output")
    max_batch = batch_size(inputs, outputs, batch_range=batch_range, default_max=default_max)
    folder = work / TRITON_DIR / name
    (folder / VERSION).mkdir(parents=True)
    (folder / CONFIG).write_text(
        config_text(name, platform=platform, max_batch=max_batch, inputs=inputs, outputs=outputs, labelled=LABELS),
        encoding="utf-8",
    )
    (folder / LABELS).write_text(labels, encoding="utf-8")
    model = f"{TRITON_DIR}/{name}/{VERSION}/{filename}"
    if build_plan is None:
        (folder / VERSION / filename).write_bytes(onnx_path.read_bytes())
    else:
        # The plan the engine is built with, beside where the engine goes (Triton loads only model.plan there).
        (folder / VERSION / PLAN_COPY).write_bytes((work / build_plan["plan"]).read_bytes())
        (folder / NOTES).write_text(
            f"{VERSION}/{filename} is the TensorRT engine built on the device: it is not in the bundle, because an\n"
            "engine runs only with the GPU and TensorRT release it was built with. Build it on the device with\n"
            f"  bash {build_plan['script']}\n"
            f"(its build plan, TensorRT {build_plan['tensorrt']}: {build_plan['plan']}, copied to "
            f"{VERSION}/{PLAN_COPY})\n"
            "from the bundle's root (edge-tl deploy does this), then copy the engine here:\n"
            f"  cp {build_plan['engine']} {model}\n"
            f"and start Triton with --model-repository=$PWD/{TRITON_DIR}. max_batch_size {max_batch} is the\n"
            "largest batch of the engine's profile.\n",
            encoding="utf-8",
        )
    return {"dir": f"{TRITON_DIR}/{name}", "platform": platform, "model": model, "max_batch_size": max_batch}
