"""An ONNX classifier as the source: the ONNX FP32 model itself becomes the reference.

Its input name, shape and batch are read from the graph; the file is checked with
``onnx.checker`` and run once with ONNX Runtime on a real image before anything is
written. It is recorded as ``onnx-fp32`` with the same details export writes, so
quantize and compile read it like an exported model, and no PyTorch is needed again.
Refused: several inputs, an input that is not a float32 image (rank 4, 3 channels),
NHWC layout, and a missing preprocessing contract (nothing in an ONNX file says how
its images were resized and normalised).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_tl._lazy import lazy_import
from edge_tl.artifacts import ONNX_FP32, ArtifactKind
from edge_tl.errors import ConfigError
from edge_tl.export.onnx_export import graph_op_types
from edge_tl.importers.base import STAGE, ImportRequest, SourceModel, require_file
from edge_tl.models.preprocessing import Preprocessing
from edge_tl.runs import Artifact, Run, atomic_write_bytes, sha256_file, tool_versions

FILE_PATH = ("export", "model.fp32.onnx")
BATCH_DIM = "batch"
#: preprocessing fields an ONNX import must be given (the rest have the usual defaults)
REQUIRED = (("input_size", "--img-size"), ("mean", "--mean"), ("std", "--std"))


def open_onnx(request: ImportRequest) -> SourceModel:
    onnx = lazy_import("onnx", purpose="importing an ONNX model")
    path = require_file(request.onnx, flag="--onnx")
    given = request.preprocessing.given()
    missing = [flag for key, flag in REQUIRED if key not in given]
    if missing:
        raise ConfigError(
            f"an ONNX source needs its preprocessing, which the file cannot tell: give {' '.join(missing)} "
            "(and --interpolation / --crop-pct if not bilinear / 0.875), as the model was trained with"
        )
    prep = Preprocessing.from_dict({"interpolation": "bilinear", "crop_pct": 0.875, **given})
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"--onnx {str(path)!r} is not a valid ONNX model ({type(exc).__name__}: {first})") from exc

    name, shape = _single_image_input(model, path, prep.input_size)
    if len(model.graph.output) < 1:
        raise ConfigError(f"--onnx {str(path)!r} has no output")
    output = model.graph.output[0]
    logits = _run_once(model, name, shape[0], prep, request)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ConfigError(
            f"--onnx {str(path)!r}: output {output.name!r} has shape {list(logits.shape)} for one image; "
            "edge-tl imports classifiers whose first output is logits (batch, classes)"
        )
    num_classes = int(logits.shape[1])
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    dynamic = not isinstance(shape[0], int)
    input_shape = [BATCH_DIM if dynamic else shape[0], 3, prep.input_size, prep.input_size]
    details = {
        "onnx": str(path.resolve()),
        "onnx_sha256": sha256_file(path),
        "input_name": name,
        "output_name": output.name,
        "opset": opset,
    }
    record_details = {
        "input_name": name,
        "output_name": output.name,
        "input_shape": input_shape,
        "input_dtype": "float32",
        "output_dtype": "float32",
        "opset": opset,
        "dynamic_batch": dynamic,
        "source": "import",
        "imported_from": details["onnx"],
        "num_classes": num_classes,
        "preprocessing": prep.to_dict(),
        "ops": graph_op_types(model),
        "tool_versions": tool_versions("onnx", "onnxruntime"),
    }
    data = model.SerializeToString()
    return SourceModel(
        kind=request.kind,
        num_classes=num_classes,
        preprocessing=prep,
        class_names=None,
        backbone={"name": path.stem, "source": "onnx", "arch": None, "weights": details["onnx"]},
        details=details,
        write=lambda run: _write(run, data, record_details),
    )


def _single_image_input(model: Any, path: Path, size: int) -> tuple[str, list[Any]]:
    onnx = lazy_import("onnx")
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    where = f"--onnx {str(path)!r}"
    if len(inputs) != 1:
        raise ConfigError(
            f"{where} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); edge-tl imports "
            "classifiers with one image input: export the model with a single NCHW input"
        )
    value = inputs[0]
    tensor = value.type.tensor_type
    dims: list[Any] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
    if tensor.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4:
        dtype = onnx.TensorProto.DataType.Name(tensor.elem_type) if tensor.elem_type else "unknown"
        raise ConfigError(
            f"{where}: input {value.name!r} is {dtype} of shape {dims}, not an image; edge-tl imports a float32 "
            "NCHW image input (batch, 3, height, width)"
        )
    if dims[1] != 3:
        if dims[3] == 3:
            raise ConfigError(
                f"{where}: input {value.name!r} of shape {dims} is NHWC (channels last); edge-tl feeds NCHW. "
                "Export it channels-first (e.g. tf2onnx --inputs-as-nchw), or add a Transpose in front"
            )
        raise ConfigError(f"{where}: input {value.name!r} of shape {dims} is not a 3-channel NCHW image")
    for axis, dim in (("height", dims[2]), ("width", dims[3])):
        if isinstance(dim, int) and dim != size:
            raise ConfigError(
                f"{where}: the graph's input {axis} is {dim} but --img-size is {size}; give --img-size {dim}"
            )
    return value.name, dims


def _run_once(model: Any, name: str, batch: Any, prep: Preprocessing, request: ImportRequest) -> Any:
    """One ONNX Runtime run on a real image (the first given one, else one shipped with scikit-learn)."""
    import numpy as np

    from edge_tl.data import preprocess

    ort = lazy_import("onnxruntime", purpose="checking an ONNX model")
    image = _a_real_image(request)
    x = preprocess(image, prep)[None]
    if isinstance(batch, int) and batch > 1:
        x = np.repeat(x, batch, axis=0)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        out = np.asarray(session.run(None, {name: x})[0])
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"ONNX Runtime cannot run the --onnx model on a {prep.input_size}px image ({first})") from exc
    if not np.isfinite(out).all():
        raise ConfigError("the --onnx model gives non-finite outputs on a real image; check the model and --mean/--std")
    return out[:1]


def _a_real_image(request: ImportRequest) -> Any:
    from edge_tl.data import is_image_file, open_image

    for folder in (request.val_data, request.calib_data):
        if folder is None or not Path(folder).is_dir():
            continue
        for file in sorted(Path(folder).rglob("*")):
            if file.is_file() and is_image_file(file.name) and not file.name.startswith("."):
                return open_image(file)
    Image = lazy_import("PIL.Image")
    datasets = lazy_import("sklearn.datasets", purpose="a photograph to check the ONNX model on (or give --val-data)")
    return Image.fromarray(datasets.load_sample_image("china.jpg"))


def _write(run: Run, data: bytes, details: dict[str, Any]) -> Artifact:
    path = atomic_write_bytes(run.path(*FILE_PATH), data)
    return run.add_artifact(
        ONNX_FP32, kind=ArtifactKind.ONNX.value, path=path, stage=STAGE, precision="fp32", details=details
    )
